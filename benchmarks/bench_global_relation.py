"""Speed and peak memory of ``global_relation``: fastrel backends against their peers.

Every implementation runs on the same inputs, forward alone (under ``torch.no_grad``) and forward
plus backward. Time is the median of many calls after warm-up. Peak memory is measured above the
inputs: on CPU each (case, implementation) runs in a fresh subprocess, which resets its peak RSS
(``/proc/self/clear_refs``) after warm-up and reads ``VmHWM`` after one call; on CUDA it is
``torch.cuda.max_memory_allocated`` minus what was allocated before the call. Cases predicted to
exceed the memory budget or the time limit are recorded as skipped, with the reason.

    python benchmarks/bench_global_relation.py --quick            # a small grid
    python benchmarks/bench_global_relation.py                    # the CPU grid and the target cases
    python benchmarks/bench_global_relation.py --device cuda      # GPU rows, with TFLOP/s

Results go to benchmarks/results/<device>_<date>.csv, a row as soon as it is measured (then the
file is rewritten in table order); a table of ratios is printed.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import measure
import peers
import torch

import fastrel
from fastrel import backends

HERE = Path(__file__).resolve().parent
MODES = ("fwd", "fwdbwd")
GRID_N = (64, 128, 512, 1024, 2048, 4096)
GRID_HR = ((64, 32), (128, 64), (256, 128))
#: The cases of issue 2 (B, N, H, R with M = N).
TARGETS = ((2, 512, 128, 64), (8, 128, 256, 128), (1, 4096, 64, 32))
#: Seconds a worker needs to start (import torch) before it measures anything.
STARTUP_ALLOWANCE_S = 30.0
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
FIELDS = (
    "date device machine threads torch B N M H R dtype inner outer impl family mode status time_ms "
    "time_p25_ms time_p75_ms repeats first_call_s peak_mib predicted_mib tflops matmul_peak_tflops "
    "max_rel_err chunk_rows note"
).split()


@dataclass(frozen=True)
class Case:
    B: int
    N: int
    M: int
    H: int
    R: int

    def forward_flops(self) -> int:
        return 2 * self.B * self.N * self.M * self.H * self.R

    def __str__(self) -> str:
        nm = f"N=M={self.N}" if self.N == self.M else f"N={self.N} M={self.M}"
        return f"B={self.B} {nm} H={self.H} R={self.R}"


# ----------------------------------------------------------------------------------------------
# Implementations


def implementations(args) -> list[tuple[str, str, str | None]]:
    """(name, family, reason it cannot run or None) for every fastrel backend and every peer."""
    found = []
    for name, backend in backends.BACKENDS.items():
        if name == "reference":
            continue  # the same code as the reference peer
        if name == "triton" and args.device == "cpu":
            reason = "Triton runs on CPU only through its interpreter, which is not a speed benchmark"
        else:
            dtype = DTYPES[args.dtype]
            reason = backend.refusal(args.device, dtype, args.inner, args.outer, args.deterministic)
        found.append((name, "fastrel", reason))
    for name in peers.PEERS:
        found.append((name, "peer", peers.unavailable(name)))
    if args.impl:
        unknown = set(args.impl) - {name for name, _, _ in found}
        if unknown:
            raise SystemExit(f"--impl: unknown {sorted(unknown)}; known {[n for n, _, _ in found]}")
        found = [entry for entry in found if entry[0] in args.impl]
    return found


def build(name: str, family: str, spec: dict) -> Callable:
    """fn(a, b, weight, bias, key_mask) -> g for implementation ``name``."""
    inner, outer = spec["inner"], spec["outer"]
    if family == "peer":
        return peers.build(name, inner, outer, chunk_budget_bytes=spec["chunk_budget"])

    def fused(a, b, weight, bias, key_mask):
        return fastrel.global_relation(
            a,
            b,
            weight,
            bias,
            inner=inner,
            outer=outer,
            key_mask=key_mask,
            backend=name,
            deterministic=spec["deterministic"],
        )

    return fused


def predicted_bytes(name: str, family: str, case: Case, element_size: int, mode: str, chunk_budget: int) -> int:
    backward = mode == "fwdbwd"
    if family == "peer":
        return peers.predicted_peak_bytes(
            name, case.B, case.N, case.M, case.H, case.R, element_size, backward, chunk_budget
        )
    # Fused backends hold O((N + M) H) per batch element: inputs' gradients, outputs, partials.
    small = case.B * (case.N + case.M) * case.H + case.B * case.N * case.R + case.R * case.H
    return small * element_size * (4 if backward else 2) + (64 << 20 if backward else 16 << 20)


def work(name: str, case: Case) -> float:
    """How the cost of ``name`` grows with the case, to predict a case's time from a smaller one."""
    if name == "sort":
        sorting = case.B * (case.N + case.M) * case.H * math.log2(max(case.M, 2))
        return sorting + case.B * case.N * case.H * case.R
    return case.B * case.N * case.M * case.H * case.R


# ----------------------------------------------------------------------------------------------
# Measuring one (case, implementation): runs in a worker subprocess on CPU, in-process on CUDA


def make_inputs(case: Case, dtype: torch.dtype, device: str):
    generator = torch.Generator().manual_seed(0)

    def normal(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator) * scale).to(device=device, dtype=dtype)

    a = normal(case.B, case.N, case.H)
    b = normal(case.B, case.M, case.H)
    weight = normal(case.R, case.H, scale=case.H**-0.5)
    bias = normal(case.R, scale=0.1)
    grad = normal(case.B, case.N, case.R)
    return a, b, weight, bias, grad


def _relative_error(value: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().item()
    return (value.double() - expected).abs().max().item() / max(scale, 1e-30)


def measure_case(spec: dict) -> list[dict]:
    """Measure one implementation on one case for each mode in ``spec``; one row per mode."""
    case, device = Case(**spec["case"]), spec["device"]
    dtype = DTYPES[spec["dtype"]]
    torch.manual_seed(0)
    a, b, weight, bias, grad = make_inputs(case, dtype, device)
    leaves = [t.detach().clone().requires_grad_() for t in (a, b, weight, bias)]
    fn = build(spec["impl"], spec["family"], spec)

    def forward():
        with torch.no_grad():
            return fn(a, b, weight, bias, None)

    def forward_backward():
        for leaf in leaves:
            leaf.grad = None
        out = fn(*leaves, None)
        out.backward(grad)
        return out

    check = _reference_result(case, spec, a, b, weight, bias, grad)
    rows = []
    for mode in spec["modes"]:
        call = forward if mode == "fwd" else forward_backward
        row = {"mode": mode, "status": "ok"}
        try:
            begin = time.perf_counter()
            out = call()  # the first call: it warms up and, for `compiled`, compiles
            if device == "cuda":
                torch.cuda.synchronize()
            row["first_call_s"] = time.perf_counter() - begin
            if check is not None:
                got = [out] + ([leaf.grad for leaf in leaves] if mode == "fwdbwd" else [])
                row["max_rel_err"] = max(_relative_error(x, y) for x, y in zip(got, check[mode], strict=True))
            del out
            row["peak_mib"] = measure.peak_bytes(call, device) / 2**20
            deadline = time.perf_counter() + spec["time_budget_s"] / len(spec["modes"])
            repeats = spec["min_repeats"], spec["max_repeats"]
            row.update(measure.summarise(measure.repeat_seconds(call, device, spec["min_time"], *repeats, deadline)))
        except torch.OutOfMemoryError:
            row["status"] = "error: out of memory"
        except Exception as error:  # one failing implementation must not stop the benchmark
            row["status"] = f"error: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
        rows.append(row)
        if spec.get("emit"):
            print("ROW " + json.dumps(row), flush=True)
    return rows


def _reference_result(case, spec, a, b, weight, bias, grad) -> dict | None:
    """Float64 reference output and gradients, when they fit in the check budget."""
    need = peers.predicted_peak_bytes("reference", case.B, case.N, case.M, case.H, case.R, 8, True, 0)
    if need > spec["check_budget"]:
        return None
    leaves = [t.detach().double().requires_grad_() for t in (a, b, weight, bias)]
    out = fastrel.reference.global_relation(*leaves, inner=spec["inner"], outer=spec["outer"])
    out.backward(grad.double())
    result = {"fwd": [out.detach()], "fwdbwd": [out.detach()] + [leaf.grad for leaf in leaves]}
    del out, leaves
    measure.release_freed_memory()
    return result


def worker_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    measure_case({**spec, "emit": True})


def run_in_subprocess(spec: dict, timeout: float) -> list[dict]:
    """CPU: measure in a fresh process so that peak RSS belongs to this case alone."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        stdout, failure = done.stdout, (None if done.returncode == 0 else f"exit {done.returncode}")
        stderr = done.stderr
    except subprocess.TimeoutExpired as expired:
        stdout = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        stderr, failure = "", f"timeout: > {timeout:.0f} s"
    rows = [json.loads(line[4:]) for line in stdout.splitlines() if line.startswith("ROW ")]
    seen = {row["mode"] for row in rows}
    for mode in spec["modes"]:
        if mode not in seen:
            detail = failure or "no result"
            if failure and failure.startswith("exit") and stderr.strip():
                detail += ": " + stderr.strip().splitlines()[-1][:200]
            status = detail if detail.startswith("timeout") else f"error: {detail}"
            rows.append({"mode": mode, "status": status})
    return rows


# ----------------------------------------------------------------------------------------------
# The run


def cases(args) -> list[Case]:
    found = []
    if "grid" in args.cases:
        for n, (h, r) in itertools.product(args.n, args.hr):
            found.append(Case(args.batch, n, n, h, r))
    if "targets" in args.cases:
        found += [Case(b, n, n, h, r) for b, n, h, r in TARGETS]
    unique = list(dict.fromkeys(found))
    return sorted(unique, key=lambda c: (c.forward_flops(), c.B, c.N))


def run(args, sink: Callable[[dict], None]) -> list[dict]:
    """Measure every runnable (implementation, case, mode); each row goes to ``sink`` once measured."""
    dtype = DTYPES[args.dtype]
    element_size = torch.empty((), dtype=dtype).element_size()
    impls = implementations(args)
    for name, _, reason in impls:
        if reason is not None:
            print(f"  {name:10s} not run: {reason}")
    # Fused backends first, torch.compile (slow to start) last: the total time limit cuts the peers.
    runnable = sorted(
        ((name, family) for name, family, reason in impls if reason is None),
        key=lambda entry: (entry[1] != "fastrel", entry[0] == "compiled"),
    )
    peak = measure.matmul_peak_tflops(args.device, dtype)
    common = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": args.device,
        "machine": measure.machine(args.device),
        "threads": args.threads,
        "torch": torch.__version__,
        "dtype": args.dtype,
        "inner": args.inner,
        "outer": args.outer,
        "matmul_peak_tflops": round(peak, 4),
        "note": args.note,
    }
    print(
        f"{common['machine']}; torch {torch.__version__}, {args.threads} threads; "
        f"{args.dtype} matmul peak {peak:.3f} TFLOP/s"
    )
    rows: list[dict] = []
    #: (impl, mode) -> (case, seconds) of the last case measured, to predict the next one's time.
    last: dict[tuple[str, str], tuple[Case, float]] = {}
    #: (impl, mode) that timed out: larger cases are skipped.
    stopped: dict[tuple[str, str], str] = {}
    started = time.perf_counter()
    ordered = cases(args)
    for name, family in runnable:
        for case in ordered:
            modes, skipped = [], {}
            for mode in args.modes:
                need = predicted_bytes(name, family, case, element_size, mode, args.chunk_budget_mb << 20)
                reason = _skip_reason(name, mode, case, need, args, last, stopped)
                if reason is None and time.perf_counter() - started > args.total_limit:
                    reason = f"the run passed its total time limit of {args.total_limit:.0f} s"
                if reason:
                    skipped[mode] = {"mode": mode, "status": f"skipped: {reason}"}
                else:
                    modes.append(mode)
            results = list(skipped.values())
            if modes:
                spec = {
                    "case": asdict(case),
                    "impl": name,
                    "family": family,
                    "modes": modes,
                    "device": args.device,
                    "dtype": args.dtype,
                    "inner": args.inner,
                    "outer": args.outer,
                    "deterministic": args.deterministic,
                    "chunk_budget": args.chunk_budget_mb << 20,
                    "check_budget": args.check_budget_mb << 20,
                    "min_time": args.min_time,
                    "min_repeats": args.min_repeats,
                    "max_repeats": args.max_repeats,
                    "time_budget_s": _time_limit(case, args),
                    "threads": args.threads,
                }
                if args.device == "cpu":
                    allowance = STARTUP_ALLOWANCE_S + (args.compile_allowance if name == "compiled" else 0)
                    results += run_in_subprocess(spec, 1.5 * _time_limit(case, args) + allowance)
                else:
                    results += measure_case(spec)
            for result in sorted(results, key=lambda r: MODES.index(r["mode"])):
                row = _complete(result, common, case, name, family, element_size, args, peak)
                rows.append(row)
                sink(row)
                _remember(row, name, case, last, stopped)
                _print_progress(row, time.perf_counter() - started)
    position = {case: index for index, case in enumerate(ordered)}
    names = [name for name, _ in runnable]
    rows.sort(key=lambda r: (position[Case(r["B"], r["N"], r["M"], r["H"], r["R"])], names.index(r["impl"])))
    return rows


def _time_limit(case: Case, args) -> float:
    """The issue's target cases get a longer time limit than the grid's."""
    is_target = (case.B, case.N, case.H, case.R) in TARGETS and case.N == case.M
    return max(args.time_limit, args.target_time_limit) if is_target else args.time_limit


def _skip_reason(name, mode, case, need, args, last, stopped) -> str | None:
    budget = args.memory_budget_mb << 20
    if need > budget:
        return f"predicted {need / 2**20:.0f} MiB > budget {args.memory_budget_mb} MiB"
    if (name, mode) in stopped:
        return f"a smaller case {stopped[(name, mode)]}"
    if (name, mode) in last:
        smaller, seconds = last[(name, mode)]
        calls = 2 + measure.MIN_TIMED  # the first call, the memory call, then the timed repeats
        predicted = seconds * work(name, case) / work(name, smaller) * calls
        limit = _time_limit(case, args)
        if predicted > limit:
            return f"predicted {predicted:.0f} s for {calls} calls > time limit {limit:.0f} s"
    return None


def _complete(result, common, case, name, family, element_size, args, peak) -> dict:
    row = {**common, **asdict(case), "impl": name, "family": family, **result}
    need = predicted_bytes(name, family, case, element_size, result["mode"], args.chunk_budget_mb << 20)
    row["predicted_mib"] = round(need / 2**20, 1)
    if name == "chunked":
        row["chunk_rows"] = peers.chunk_rows(
            case.B, case.N, case.M, case.H, case.R, element_size, args.chunk_budget_mb << 20
        )
    if row["status"] == "ok":
        flops = measure.global_relation_flops(case.B, case.N, case.M, case.H, case.R, result["mode"])
        row["tflops"] = flops / (row["time_ms"] / 1e3) / 1e12
    return row


def _remember(row, name, case, last, stopped) -> None:
    key = (name, row["mode"])
    if row["status"] == "ok":
        last[key] = (case, row["time_ms"] / 1e3)
    elif row["status"].startswith("timeout"):
        stopped[key] = f"({case}) timed out"


def _print_progress(row, elapsed) -> None:
    case = f"B={row['B']} N={row['N']} H={row['H']} R={row['R']}"
    if row["status"] == "ok":
        what = f"{row['time_ms']:10.2f} ms  {row['peak_mib']:9.1f} MiB"
    else:
        what = row["status"]
    print(f"[{elapsed:6.0f} s] {case:28s} {row['impl']:10s} {row['mode']:6s} {what}", flush=True)


# ----------------------------------------------------------------------------------------------
# Report


def ratio_table(rows: list[dict]) -> str:
    """Per case and mode: time and memory of each implementation, as ratios to the reference and
    (for fastrel backends) to the fastest peer. ``×`` > 1 means faster / smaller than that one."""
    lines = []
    key = lambda r: (r["B"], r["N"], r["M"], r["H"], r["R"], r["mode"])  # noqa: E731
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    header = (
        f"  {'impl':10s} {'time ms':>10s} {'speedup':>8s} {'vs best':>8s} {'peak MiB':>9s} "
        f"{'mem ×':>8s} {'TFLOP/s':>8s}  note"
    )
    for (B, N, M, H, R, mode), group in groups.items():
        ok = [r for r in group if r["status"] == "ok"]
        ref = next((r for r in ok if r["impl"] == "reference"), None)
        peer_rows = [r for r in ok if r["family"] == "peer"]
        best = min(peer_rows, key=lambda r: r["time_ms"]) if peer_rows else None
        lines.append(f"\n{Case(B, N, M, H, R)}  {mode}")
        lines.append(header)
        for r in group:
            if r["status"] != "ok":
                lines.append(f"  {r['impl']:10s} {r['status']}")
                continue
            speedup = f"{ref['time_ms'] / r['time_ms']:7.2f}×" if ref else "      -"
            vs_best = f"{best['time_ms'] / r['time_ms']:7.2f}×" if best and r["family"] == "fastrel" else "      -"
            memory = f"{ref['peak_mib'] / r['peak_mib']:7.1f}×" if ref and r["peak_mib"] > 0.05 else "      -"
            note = f"best peer {best['impl']}" if best and r["family"] == "fastrel" else ""
            if r.get("max_rel_err") is not None:
                note += f" err {r['max_rel_err']:.1e}"
            lines.append(
                f"  {r['impl']:10s} {r['time_ms']:10.2f} {speedup:>8s} {vs_best:>8s} "
                f"{r['peak_mib']:9.1f} {memory:>8s} {r['tflops']:8.4f}  {note.strip()}"
            )
    lines.append(
        "\nspeedup and mem ×: the reference's time or peak memory over this one's; vs best: the fastest"
        "\npeer's time over this one's. TFLOP/s counts 2·B·N·M·H·R per forward (4× that forward +"
        "\nbackward) for every implementation, also for those that do less work (sort)."
    )
    return "\n".join(lines)


class CsvRows:
    """A CSV file written one row at a time and flushed, so a run cut short keeps what it measured."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=FIELDS, extrasaction="ignore")
        self.writer.writeheader()
        self.file.flush()

    def __call__(self, row: dict) -> None:
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def write_csv(rows: list[dict], path: Path) -> None:
    """The whole file again, rows in table order."""
    out = CsvRows(path)
    for row in rows:
        out(row)
    out.close()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    pair = lambda text: tuple(int(x) for x in text.split(":"))  # noqa: E731
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    names = lambda text: [x for x in text.split(",") if x]  # noqa: E731
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--n", type=ints, default=None, help="N = M values, comma-separated")
    parser.add_argument("--hr", type=pair, nargs="+", default=None, help="H:R pairs: 64:32 128:64")
    parser.add_argument("--batch", type=int, default=1, help="B of the grid cases (targets have their own)")
    parser.add_argument("--cases", type=names, default=None, help="grid,targets (default both)")
    parser.add_argument("--impl", type=names, default=None, help="only these implementations")
    parser.add_argument("--modes", type=names, default=list(MODES), help="fwd,fwdbwd")
    parser.add_argument("--inner", default="relu")
    parser.add_argument("--outer", default="relu", help="'identity' brings in the sort backend")
    parser.add_argument("--deterministic", action="store_true")
    parser.add_argument(
        "--memory-budget-mb",
        type=int,
        default=None,
        help="skip cases predicted above this (default 3072 on CPU, 80%% of free GPU memory)",
    )
    parser.add_argument("--chunk-budget-mb", type=int, default=256, help="the chunked peer's working set")
    parser.add_argument(
        "--check-budget-mb",
        type=int,
        default=512,
        help="compare against a float64 reference when it fits in this",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="seconds of measurement per case and implementation, start-up excluded (default 40)",
    )
    parser.add_argument(
        "--target-time-limit", type=float, default=90.0, help="--time-limit for the issue's target cases"
    )
    parser.add_argument(
        "--total-limit",
        type=float,
        default=1080.0,
        help="seconds after which no further measurement starts (the rest is recorded as skipped)",
    )
    parser.add_argument("--compile-allowance", type=float, default=150.0, help="seconds more for compiling")
    parser.add_argument(
        "--min-time", type=float, default=None, help="seconds of timed calls per measurement (default 0.5)"
    )
    parser.add_argument("--min-repeats", type=int, default=None, help="timed calls at least (default 5)")
    parser.add_argument("--max-repeats", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--quick",
        action="store_true",
        help="N in {64, 128, 512}, (H, R) = (64, 32), no targets, short timing",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--note", default="", help="a remark stored with every row (the machine's state)")
    args = parser.parse_args(argv)
    defaults = {
        "n": list(GRID_N),
        "hr": list(GRID_HR),
        "cases": ["grid", "targets"],
        "min_time": 0.5,
        "min_repeats": 5,
        "time_limit": 40.0,
    }
    if args.quick:
        defaults.update(n=[64, 128, 512], hr=[(64, 32)], cases=["grid"])
        defaults.update(min_time=0.3, min_repeats=3, time_limit=15.0)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.min_repeats < measure.MIN_TIMED:
        parser.error(f"--min-repeats: expected at least {measure.MIN_TIMED}, got {args.min_repeats}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.memory_budget_mb is None:
        if args.device == "cuda":
            free, _ = torch.cuda.mem_get_info()
            args.memory_budget_mb = int(free * 0.8) >> 20
        else:
            args.memory_budget_mb = 3072
    for mode in args.modes:
        if mode not in MODES:
            parser.error(f"--modes: expected names from {list(MODES)}, got {mode!r}")
    if args.out is None:
        day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        args.out = HERE / "results" / f"{args.device}_{day}.csv"
    return args


def main(argv=None) -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2])
        return
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    sink = CsvRows(args.out)
    rows = run(args, sink)
    sink.close()
    print(ratio_table(rows))
    write_csv(rows, args.out)
    print(f"\n{len(rows)} rows in {time.perf_counter() - began:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
