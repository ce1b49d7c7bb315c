"""Times the Triton kernels under other launch settings (kernels/launch.py: tiles, R slice, programs
per SM), one row per variant, so that launch.py's constants are chosen from device timings.

    python benchmarks/tile_sweep.py --out DIR [--budget SECONDS] [--dry]
    PYTHONPATH=. python3 benchmarks/tile_sweep.py --out $OUT --budget 200   # on a device image (~3 min)

Every variant is first compiled in a pool of worker processes (small batch, same specialisation);
then, one at a time, each is checked against the float64 reference on the timed inputs and timed
(CUDA events, median of 20 calls); on a GPU each row also holds its kernels' device time (per
kernel and in all, with the launch count) and the host's time to issue one call, which tell a
kernel-bound call from a host-bound one. Inputs, reference and errors are gpu_check's. Rows go to
DIR/sweep.jsonl as they are measured; the table of each group is printed last. ``--dry`` runs a few
variants at tiny sizes under the Triton interpreter, to test the script without a GPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import gpu_check
import measure
import torch
from timed_case import Case

Overrides = dict[str, object]


@dataclass(frozen=True)
class Group:
    """One problem shape and pass, and the launch.py overrides to time on it (the first: today's)."""

    case: Case  # its name labels the group
    dtype: str
    kind: str  # fwd | bwd (fast mode) | bwd_det: Triton kernels; fwdbwd: through fastrel, per backend
    variants: list[Overrides] = field(default_factory=list)
    tf32: bool = False


def _tiles(key: str, tiles: list[tuple[int, int, int, int]], **extra) -> list[Overrides]:
    return [{key: t, **extra} for t in tiles]


BWD_TILES = [(4, 16, 8, 1), (4, 16, 4, 1), (8, 8, 4, 1), (8, 8, 8, 1), (16, 4, 8, 1), (16, 4, 4, 1), (4, 32, 8, 1),
             (2, 64, 8, 1), (8, 16, 8, 1), (2, 32, 4, 1), (2, 32, 8, 1)]  # fmt: skip
FWD_TILES = [(4, 16, 4, 2), (8, 16, 4, 2), (8, 16, 8, 2), (4, 16, 4, 3), (8, 16, 4, 3), (4, 16, 8, 2), (8, 8, 4, 2),
             (16, 4, 4, 2), (2, 32, 4, 2)]  # fmt: skip
#: 8×16/8 and 4×16/4 warps capped at 128 registers: twice or 4/3 the warps per SM at N = 1024
CAPPED_FWD_TILES = [(8, 16, 8, 2, 128), (4, 16, 4, 2, 128)]
IEEE_BWD = [(8, 2, 8, 1), (4, 4, 4, 1), (8, 2, 4, 1)]
IEEE_FWD = [(2, 32, 8, 2), (4, 16, 4, 2), (2, 32, 4, 2), (8, 16, 8, 2)]

PAPER = Case("paper", 576, 128, 128, 256, 128)
N1024 = Case("n1024", 8, 1024, 1024, 128, 64)
PAPER_9 = Case("paper/9", 64, 128, 128, 256, 128)
WIDE = Case("H512 R256", 64, 128, 128, 512, 256)
CLIP = Case("clip T=8", 576, 8, 8, 256, 128, masked=True)
BACKENDS = [{"backend": "triton"}, {"backend": "reference"}]


def gpu_groups() -> list[Group]:
    """The groups in the order they run (the most telling first: the step is under a time cap); each
    group's first variant is today's launch (kernels/launch.py), the baseline of its table."""
    bwd = _tiles("BACKWARD_FIXED", BWD_TILES)
    bwd += [{"BACKWARD_FIXED": (4, 16, 8, 1), "PROGRAMS_PER_SM": p} for p in (1, 3)]
    # two stages: 7 barriers per step instead of 23, but a and b read back from unswizzled shared
    # memory in 16-way bank conflicts (RESULTS.md, "Sixth session": predicted 1.5-2.0x slower)
    bwd += [{"BACKWARD_FIXED": (4, 16, 8, 2)}]
    det = _tiles("BACKWARD_FIXED", [(4, 16, 8, 1), (16, 4, 8, 1)])
    det += [{"BACKWARD_FIXED": t, "PROGRAMS_PER_SM": 1} for t in [(4, 16, 8, 1), (16, 4, 8, 1)]]
    tf32 = _tiles("BACKWARD_FIXED", [(4, 16, 8, 1), (8, 8, 8, 1), (4, 16, 4, 1)])
    narrow_det = _tiles("BACKWARD_FIXED_NARROW", [(4, 16, 4, 1), (16, 4, 4, 1), (8, 8, 4, 1), (2, 32, 4, 1)])
    return [
        Group(PAPER, "bfloat16", "bwd", bwd),
        Group(PAPER, "bfloat16", "fwd", _tiles("FORWARD_FIXED", FWD_TILES)),
        Group(PAPER, "bfloat16", "bwd_det", det),
        Group(N1024, "bfloat16", "bwd", _tiles("BACKWARD_FIXED", BWD_TILES)),
        Group(N1024, "bfloat16", "fwd", _tiles("FORWARD_FIXED", FWD_TILES[:6] + CAPPED_FWD_TILES)),
        Group(N1024, "bfloat16", "bwd_det", narrow_det),
        Group(PAPER_9, "float32", "bwd", tf32, tf32=True),
        Group(PAPER_9, "float32", "fwd", _tiles("FORWARD_FIXED", FWD_TILES[:4]), tf32=True),
        Group(PAPER_9, "float32", "fwd", _tiles("IEEE_FORWARD_TILE", IEEE_FWD)),
        Group(PAPER_9, "float32", "bwd", _tiles("IEEE_BACKWARD_TILE", IEEE_BWD)),
        Group(WIDE, "bfloat16", "fwd", [{}]),
        Group(WIDE, "bfloat16", "bwd", [{}]),
        Group(WIDE, "bfloat16", "bwd_det", [{}]),
        Group(WIDE, "float32", "bwd", [{}], tf32=True),
        # a clip's one-step launch with and without its R cap (64, bf16 backward); the IEEE forward
        # without its former cap of 16 (its byte-mask build spills more than the one timed)
        Group(CLIP, "bfloat16", "bwd", [{}, {"ONE_STEP_R_CAP": {}}]),
        Group(CLIP, "float32", "fwd", [{}, {"ONE_STEP_R_CAP": {(True, "ieee"): 16}}]),
        *[
            Group(Case(f"clips T={T}", 576, T, T, 256, 128, masked=True), dtype, "fwdbwd", BACKENDS)
            for T in (8, 32)
            for dtype in ("bfloat16", "float32")
        ],
    ]


def dry_groups() -> list[Group]:
    tiny, masked = Case("dry", 2, 8, 8, 32, 16), Case("dry", 2, 8, 8, 32, 16, masked=True)
    return [
        Group(tiny, "float32", "bwd", _tiles("BACKWARD_FIXED", [(2, 32, 8, 1), (4, 16, 8, 1)])),
        Group(tiny, "float32", "bwd_det", _tiles("BACKWARD_FIXED", [(2, 32, 8, 1)])),
        Group(masked, "float32", "fwd", _tiles("FORWARD_FIXED", [(2, 32, 8, 2), CAPPED_FWD_TILES[1]])),
        Group(dataclasses.replace(masked, name="dry clips"), "float32", "fwdbwd", BACKENDS),
    ]


# ----------------------------------------------------------------------------------------------


def inputs(group: Group, device: str, batch: int | None = None) -> dict:
    case = dataclasses.replace(group.case, B=batch) if batch else group.case
    return gpu_check.make_inputs(case, getattr(torch, group.dtype), device)


def run(group: Group, t: dict, variant: Overrides):
    """One call of the timed pass through fastrel's Triton kernels (what the autograd op calls), or
    for kind ``fwdbwd`` a forward and backward through the variant's backend."""
    import fastrel
    from fastrel.kernels import global_relation

    args = (t["a"], t["b"], t["weight"], t["bias"], t["key_mask"], "relu", "relu")
    if group.kind == "fwdbwd":
        leaves = [x.detach().requires_grad_() for x in args[:4]]
        g = fastrel.global_relation(*leaves, key_mask=t["key_mask"], backend=variant["backend"], deterministic=False)
        return torch.autograd.grad(g, leaves, t["grad"])
    if group.kind == "fwd":
        return (global_relation.forward(*args),)
    return global_relation.backward(t["grad"], *args, deterministic=group.kind == "bwd_det")


def expected(group: Group, t: dict) -> tuple[torch.Tensor, ...]:
    """The float64 reference of the pass's outputs (gpu_check.exact_reference, in chunks)."""
    budget = 1 << 30 if t["a"].device.type == "cpu" else int(torch.cuda.mem_get_info()[0] * 0.5)
    exact = gpu_check.exact_reference(t, budget)
    names = ("out",) if group.kind == "fwd" else ("da", "db", "dweight", "dbias")
    return tuple(exact[n] for n in names)


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
                inputs(group, device, batch=16 if device == "cuda" and group.case.B % 16 == 0 else None),
                overrides,
            )
        return None
    except Exception as error:  # reported in the row; the sweep goes on
        return f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"


def time_ms(call, device: str, repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` calls after one warm-up (measure.call_seconds: CUDA events)."""
    call()
    measure.sync(device)
    return [measure.call_seconds(call, device) * 1e3 for _ in range(repeats)]


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
                "group": group.case.name,
                "shape": [group.case.B, group.case.N, group.case.M, group.case.H, group.case.R],
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
                row.update(check_and_time(group, variant, t, want, device, error))
            rows.append(row)
            with open(out / "sweep.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(line(row), flush=True)
        pool.shutdown(cancel_futures=True)
    return rows


def check_and_time(group: Group, variant: Overrides, t: dict, want, device: str, error: str | None) -> dict:
    if error is not None:
        return {"status": f"compile failed: {error}"}
    try:
        with Patched(variant):
            got = run(group, t, variant)
            errors = [gpu_check.rel_error(x, y) for x, y in zip(got, want)]
            times = time_ms(lambda: run(group, t, variant), device, repeats=3 if device != "cuda" else 20)
            kernels = kernel_ms(lambda: run(group, t, variant)) if device == "cuda" else None
            host = measure.host_seconds(lambda: run(group, t, variant), device) * 1e3 if device == "cuda" else None
            bitwise = all(torch.equal(x, y) for x, y in zip(got, run(group, t, variant)))
    except Exception as failure:
        return {"status": f"failed: {type(failure).__name__}: {str(failure).splitlines()[0][:200]}"}
    return {
        "status": "ok",
        "errors": errors,
        "time_ms": statistics.median(times),
        "spread_ms": max(times) - min(times),
        "kernels_ms": kernels,
        "host_ms": host,
        "bitwise_repeat": bitwise,  # expected of deterministic mode (bwd_det); fast mode's atomics may differ
    }


def kernel_ms(call) -> dict[str, float]:
    """Device milliseconds per kernel name over one call (the profiler's CUDA activity): the six
    longest, and under "all kernels" the sum over every launch with their count, which against the
    row's time tells a device-bound call from one bound by launches and host work (clips)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    launches = 0
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name[:60]] = totals.get(event.name[:60], 0.0) + event.device_time_total / 1e3
            launches += 1
    longest = dict(sorted(totals.items(), key=lambda kv: -kv[1])[:6])
    return {**longest, "all kernels": sum(totals.values()), "launches": launches}


def line(row: dict) -> str:
    variant = " ".join(f"{k}={v}" for k, v in row["variant"].items()) or "(today's)"
    head = f"{row['group']:12s} {row['dtype']:8s} {row['kind']:7s} {variant:48s}"
    if row["status"] != "ok":
        return f"{head} {row['status']}"
    err = max(row["errors"])
    host = f"  host {row['host_ms']:.3f} ms" if row.get("host_ms") is not None else ""
    repeat = "" if row["bitwise_repeat"] else "  (a repeat differs)"
    return f"{head} {row['time_ms']:9.3f} ms  ±{row['spread_ms']:.3f}  max err {err:.1e}{host}{repeat}"


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
