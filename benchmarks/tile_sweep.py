"""Times the Triton kernels under other launch settings (kernels/launch.py: tiles, R slice, programs
per SM), one row per variant, so that launch.py's constants are chosen from device timings.

    python benchmarks/tile_sweep.py --out DIR [--budget SECONDS] [--dry]
    PYTHONPATH=. python3 benchmarks/tile_sweep.py --out $OUT --budget 200   # on a device image (~3 min)

Every variant is first compiled in a pool of worker processes (small batch, same specialisation);
then, one at a time, each is checked against the reference on the timed inputs and timed (CUDA
events, median of 20 calls). Rows go to
DIR/sweep.jsonl as they are measured; the table of each group is printed last. ``--dry`` runs a few
variants at tiny sizes under the Triton interpreter, to test the script without a GPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastrel import reference

Overrides = dict[str, object]


@dataclass(frozen=True)
class Group:
    """One problem shape and pass, and the launch.py overrides to time on it (the first: today's)."""

    name: str
    shape: tuple[int, int, int, int, int]  # B, N, M, H, R
    dtype: str
    kind: str  # fwd | bwd (fast mode) | bwd_det: Triton kernels; fwdbwd: through fastrel, per backend
    variants: list[Overrides] = field(default_factory=list)
    masked: bool = False
    tf32: bool = False


def _tiles(key: str, tiles: list[tuple[int, int, int, int]], **extra) -> list[Overrides]:
    return [{key: t, **extra} for t in tiles]


BWD_TILES = [(4, 16, 8, 1), (4, 16, 4, 1), (8, 8, 4, 1), (8, 8, 8, 1), (16, 4, 8, 1), (16, 4, 4, 1), (4, 32, 8, 1),
             (2, 64, 8, 1), (8, 16, 8, 1), (2, 32, 4, 1), (2, 32, 8, 1)]  # fmt: skip
FWD_TILES = [(8, 16, 8, 2), (2, 32, 4, 2), (2, 32, 4, 3), (4, 16, 4, 2), (8, 16, 4, 2), (2, 64, 4, 2), (8, 8, 4, 2),
             (4, 32, 4, 2), (1, 64, 4, 2)]  # fmt: skip
IEEE_FAST = [(8, 2, 8, 1), (4, 4, 4, 1), (8, 2, 4, 1), (4, 2, 4, 1)]
IEEE_FWD = [(8, 16, 8, 2), (2, 32, 4, 2), (2, 32, 8, 2), (4, 16, 4, 2)]

PAPER = (576, 128, 128, 256, 128)
N1024 = (8, 1024, 1024, 128, 64)
PAPER_9 = (64, 128, 128, 256, 128)
WIDE = (64, 128, 128, 512, 256)
CLIP = (576, 8, 8, 256, 128)
BACKENDS = [{"backend": "triton"}, {"backend": "reference"}]


def gpu_groups() -> list[Group]:
    """The groups in the order they run (the most telling first: the step is under a time cap); each
    group's first variant is today's launch (kernels/launch.py), the baseline of its table."""
    bwd = _tiles("BACKWARD_FIXED", BWD_TILES)
    bwd += [{"BACKWARD_FIXED": (4, 16, 8, 1), "PROGRAMS_PER_SM": p} for p in (1, 3)]
    det = _tiles("BACKWARD_FIXED", [(4, 16, 8, 1), (8, 8, 8, 1), (16, 4, 8, 1), (4, 32, 8, 1), (2, 32, 8, 1)])
    tf32 = _tiles("BACKWARD_FIXED", [(4, 16, 8, 1), (8, 8, 8, 1), (2, 32, 4, 1)])
    return [
        Group("paper", PAPER, "bfloat16", "bwd", bwd),
        Group("paper", PAPER, "bfloat16", "fwd", _tiles("FORWARD_FIXED", FWD_TILES)),
        Group("paper", PAPER, "bfloat16", "bwd_det", det),
        Group("n1024", N1024, "bfloat16", "bwd", _tiles("BACKWARD_FIXED", BWD_TILES)),
        Group("n1024", N1024, "bfloat16", "fwd", _tiles("FORWARD_FIXED", FWD_TILES[:6])),
        Group("paper/9 tf32", PAPER_9, "float32", "bwd", tf32, tf32=True),
        Group("paper/9 tf32", PAPER_9, "float32", "fwd", _tiles("FORWARD_FIXED", FWD_TILES[:4]), tf32=True),
        Group("paper/9", PAPER_9, "float32", "fwd", _tiles("FORWARD_FIXED", IEEE_FWD)),
        Group("paper/9", PAPER_9, "float32", "bwd", _tiles("IEEE_FAST_TILE", IEEE_FAST)),
        Group("H512 R256", WIDE, "bfloat16", "fwd", [{}]),
        Group("H512 R256", WIDE, "bfloat16", "bwd", [{}]),
        Group("H512 R256", WIDE, "bfloat16", "bwd_det", [{}]),
        Group("H512 tf32", WIDE, "float32", "bwd", [{}], tf32=True),
        # a clip's one-step launch with and without its R caps (64 bf16 backward, 16 IEEE forward)
        Group("clip T=8", CLIP, "bfloat16", "bwd", [{}, {"ONE_STEP_R_CAP": {}}], masked=True),
        Group("clip T=8", CLIP, "float32", "fwd", [{}, {"ONE_STEP_R_CAP": {}}], masked=True),
        *[
            Group(f"clips T={T}", (576, T, T, 256, 128), dtype, "fwdbwd", BACKENDS, masked=True)
            for T in (8, 32)
            for dtype in ("bfloat16", "float32")
        ],
    ]


def dry_groups() -> list[Group]:
    shape = (2, 8, 8, 32, 16)
    return [
        Group("dry", shape, "float32", "bwd", _tiles("BACKWARD_FIXED", [(2, 32, 8, 1), (4, 16, 8, 1)])),
        Group("dry", shape, "float32", "bwd_det", _tiles("BACKWARD_FIXED", [(2, 32, 8, 1)])),
        Group("dry", shape, "float32", "fwd", _tiles("FORWARD_FIXED", [(2, 32, 8, 2)]), masked=True),
        Group("dry clips", shape, "float32", "fwdbwd", BACKENDS, masked=True),
    ]


# ----------------------------------------------------------------------------------------------


def inputs(group: Group, device: str, batch: int | None = None, seed: int = 0) -> dict:
    B, N, M, H, R = group.shape
    B = batch or B
    gen = torch.Generator(device="cpu").manual_seed(seed)
    dtype = getattr(torch, group.dtype)

    def rand(*size, scale=1.0):
        return (torch.randn(*size, generator=gen) * scale).to(device=device, dtype=dtype)

    mask = None
    if group.masked:
        mask = torch.rand(B, M, generator=gen) < 0.8
        mask[:, 0] = True
        mask = mask.to(device)
    return {
        "a": rand(B, N, H),
        "b": rand(B, M, H),
        "weight": rand(R, H, scale=H**-0.5),
        "bias": rand(R, scale=0.1),
        "mask": mask,
        "grad": rand(B, N, R),
    }


def run(group: Group, t: dict, variant: Overrides):
    """One call of the timed pass through fastrel's Triton kernels (what the autograd op calls), or
    for kind ``fwdbwd`` a forward and backward through the variant's backend."""
    import fastrel
    from fastrel.kernels import global_relation

    args = (t["a"], t["b"], t["weight"], t["bias"], t["mask"], "relu", "relu")
    if group.kind == "fwdbwd":
        leaves = [x.detach().requires_grad_() for x in args[:4]]
        g = fastrel.global_relation(*leaves, key_mask=t["mask"], backend=variant["backend"], deterministic=False)
        return torch.autograd.grad(g, leaves, t["grad"])
    if group.kind == "fwd":
        return (global_relation.forward(*args),)
    return global_relation.backward(t["grad"], *args, deterministic=group.kind == "bwd_det")


def expected(group: Group, t: dict) -> tuple[torch.Tensor, ...]:
    """The reference in float64 on the CPU for tiny shapes, else float32 on the device."""
    dtype = torch.float64 if t["a"].device.type == "cpu" else torch.float32
    up = {k: (v.to(dtype) if v is not None and v.is_floating_point() else v) for k, v in t.items()}
    leaves = [up[k].requires_grad_() for k in ("a", "b", "weight", "bias")]
    g = reference.global_relation(*leaves, inner="relu", outer="relu", key_mask=up["mask"])
    if group.kind == "fwd":
        return (g.detach(),)
    return torch.autograd.grad(g, leaves, up["grad"])


def rel_errors(got, want) -> list[float]:
    return [((x.double() - y.double()).norm() / y.double().norm().clamp(min=1e-30)).item() for x, y in zip(got, want)]


class Patched:
    """launch.py's constants replaced for the duration of a with block (``backend`` is not one)."""

    def __init__(self, overrides: Overrides):
        from fastrel.kernels import launch

        self.launch, self.saved = launch, {}
        self.overrides = {k: v for k, v in overrides.items() if k != "backend"}

    def __enter__(self):
        for key, value in self.overrides.items():
            self.saved[key] = getattr(self.launch, key)
            setattr(self.launch, key, value)

    def __exit__(self, *exc):
        for key, value in self.saved.items():
            setattr(self.launch, key, value)


def compile_variant(group: Group, overrides: Overrides, device: str) -> str | None:
    """Worker: one call at a small batch (B = 16 keeps the specialisation), filling Triton's cache."""
    torch.backends.cuda.matmul.allow_tf32 = group.tf32
    try:
        with Patched(overrides):
            run(
                group,
                inputs(group, device, batch=16 if device == "cuda" and group.shape[0] % 16 == 0 else None),
                overrides,
            )
        return None
    except Exception as error:  # reported in the row; the sweep goes on
        return f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"


def time_ms(call, device: str, repeats: int) -> list[float]:
    if device != "cuda":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1e3)
        return times
    call()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end))
    return out


def sweep(groups: list[Group], device: str, out: Path, deadline: float, workers: int) -> list[dict]:
    rows = []
    jobs = [(g, v) for g in groups for v in g.variants]
    compiled: dict[int, concurrent.futures.Future] = {}
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        for index, (group, variant) in enumerate(jobs):
            compiled[index] = pool.submit(compile_variant, group, variant, device)
        # Every variant compiles before the first is timed: the workers' launches stay out of the timings.
        concurrent.futures.wait(compiled.values(), timeout=max(0.0, deadline - time.perf_counter()))
        current, t, want = None, None, None
        for index, (group, variant) in enumerate(jobs):
            row = {
                "group": group.name,
                "shape": group.shape,
                "dtype": group.dtype,
                "kind": group.kind,
                "variant": {k: list(v) if isinstance(v, tuple) else str(v) if isinstance(v, dict) else v
                            for k, v in variant.items()},
            }
            if time.perf_counter() > deadline:
                row["status"] = "not run: past the budget"
            else:
                if current is not group:
                    current, t = group, None
                    torch.backends.cuda.matmul.allow_tf32 = group.tf32
                    t = inputs(group, device)
                    want = expected(group, t)
                    if device == "cuda":
                        torch.cuda.empty_cache()
                try:
                    error = compiled[index].result()
                except Exception as broken:  # a worker that died takes the pool with it
                    error = f"{type(broken).__name__}: {broken}"
                row.update(measure(group, variant, t, want, device, error))
            rows.append(row)
            with open(out / "sweep.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(line(row), flush=True)
        pool.shutdown(cancel_futures=True)
    return rows


def measure(group: Group, variant: Overrides, t: dict, want, device: str, error: str | None) -> dict:
    if error is not None:
        return {"status": f"compile failed: {error}"}
    try:
        with Patched(variant):
            got = run(group, t, variant)
            errors = rel_errors(got, want)
            times = time_ms(lambda: run(group, t, variant), device, repeats=3 if device != "cuda" else 20)
            kernels = kernel_ms(lambda: run(group, t, variant)) if device == "cuda" and group.kind == "bwd" else None
    except Exception as failure:
        return {"status": f"failed: {type(failure).__name__}: {str(failure).splitlines()[0][:200]}"}
    return {
        "status": "ok",
        "errors": errors,
        "time_ms": statistics.median(times),
        "spread_ms": max(times) - min(times),
        "kernels_ms": kernels,
    }


def kernel_ms(call) -> dict[str, float]:
    """Device milliseconds per kernel name over one call (the profiler's CUDA activity)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name[:60]] = totals.get(event.name[:60], 0.0) + event.device_time_total / 1e3
    return dict(sorted(totals.items(), key=lambda kv: -kv[1])[:6])


def line(row: dict) -> str:
    variant = " ".join(f"{k}={v}" for k, v in row["variant"].items()) or "(today's)"
    head = f"{row['group']:12s} {row['dtype']:8s} {row['kind']:7s} {variant:48s}"
    if row["status"] != "ok":
        return f"{head} {row['status']}"
    err = max(row["errors"])
    return f"{head} {row['time_ms']:9.3f} ms  ±{row['spread_ms']:.3f}  max err {err:.1e}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=300.0, help="seconds after which no variant is timed")
    parser.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 2)))
    parser.add_argument("--dry", action="store_true", help="tiny sizes under the Triton interpreter (CPU)")
    args = parser.parse_args(argv)
    if args.dry and os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("--dry: expected TRITON_INTERPRET=1 in the environment (set before Python starts)")
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["FASTREL_TRITON_AUTOTUNE"] = "0"  # each variant runs its own fixed tile
    deadline = time.perf_counter() + args.budget
    device = "cpu" if args.dry else "cuda"
    rows = sweep(dry_groups() if args.dry else gpu_groups(), device, args.out, deadline, args.workers)
    print("\nbest per group (today's first):")
    for key in dict.fromkeys((r["group"], r["dtype"], r["kind"]) for r in rows):
        mine = [r for r in rows if (r["group"], r["dtype"], r["kind"]) == key and r["status"] == "ok"]
        if mine:
            best = min(mine, key=lambda r: r["time_ms"])
            print(f"  {line(mine[0])}\n  {line(best)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
