"""How time and peak memory grow with the number of items N, per backend.

Two benchmarks, each case in a fresh process (so that peak memory is the case's own):

- ``rgsa``: one training step (forward + backward, input gradient included) of ``fastrel.RGSA`` on a
  (B, C, Hf, Wf) feature map, N = Hf·Wf, C = 2048 with the module's default hidden (C/8) and relation
  (C/16) sizes; once with the default outer = relu and once with outer = identity, which the exact
  ``sort`` backend takes.
- ``op``: ``global_relation`` alone, forward + backward, N = M, outer = identity, inner = relu: the
  sort path against the fused pairwise ``cpu`` backend and the reference.
- ``paired``: the sort path and the fused pairwise backend alternating in one process on the same
  inputs (N = M = 4096, H = 128 by default): their time ratio under the same load, and how far apart
  their results are.

Memory: on the CPU the peak resident set of the step, on CUDA ``torch.cuda.max_memory_allocated``,
both also shown above what was resident before the step. A case whose predicted memory exceeds
``--budget-gb`` is not run and is recorded as "over budget"; one whose step, extrapolated as N² from
the previous size, exceeds ``--max-step-s`` is recorded as "over time limit". Time is the median wall
time and the median process CPU time of a step (the latter is steadier on a shared machine; use
``--threads 1`` there). Results: benchmarks/results/scaling_<bench>_<device>.csv.

    python benchmarks/bench_scaling.py                      # both benchmarks, default sizes
    python benchmarks/bench_scaling.py --bench op --op-sizes 1024,4096 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import measure
import torch

import fastrel
from fastrel import backends

RESULTS = Path(__file__).resolve().parent / "results"
FUSED_CPU = ("cpu", "sort")
FUSED_CUDA = ("sort", "triton", "cuda")
#: Process memory (torch, the extension, the interpreter) before any tensor; used in predictions.
RUNTIME_MB = 900.0


@dataclass
class Case:
    """One measurement: what runs, at which size, and (once run) what it cost."""

    bench: str  # "rgsa" or "op"
    outer: str
    backend: str
    device: str
    N: int
    B: int = 1
    C: int = 0  # rgsa only
    H: int = 0
    R: int = 0
    Hf: int = 0
    Wf: int = 0
    status: str = ""
    time_ms: float = math.nan  # median wall time of a step
    cpu_ms: float = math.nan  # median process CPU time of a step (all threads)
    peak_mb: float = math.nan
    step_mb: float = math.nan  # peak minus what was resident before the step
    predicted_mb: float = math.nan
    repeats: int = 0
    threads: int = 0
    load: float = math.nan  # 1-minute load average when the case started (CPU contention)
    machine: str = ""


# ----------------------------------------------------------------------------------------------
# Prediction (decides what is over budget before anything is allocated)
# ----------------------------------------------------------------------------------------------


def predicted_mb(case: Case) -> float:
    """Peak memory the case should need, in MB: the O(N²) pair tensors dominate the reference."""
    B, N, H, R = case.B, case.N, case.H, case.R
    per_item = 4.0 * (10 * case.C + 12 * H + 6 * R)  # features, a, b, their gradients, D, g
    # The reference holds about four (N, N, H) and four (N, N, R) float32 tensors at its peak
    # (measured: 1.58 GB above the runtime for one RGSA step at N = 512, H = 256, R = 128).
    pairs = 4.0 * B * N * N * (4 * H + 4 * R) if case.backend == "reference" else 0.0
    return RUNTIME_MB + (B * N * per_item + pairs) / 2**20


def feature_map(N: int) -> tuple[int, int]:
    """(Hf, Wf) with Hf·Wf = N and Hf = 2·Wf where possible (the 2:1 maps of person re-ID)."""
    Wf = max(1, round(math.sqrt(N / 2)))
    return (N // Wf, Wf) if N % Wf == 0 else (N, 1)


def cases(args) -> list[Case]:
    device = args.device
    fused = FUSED_CUDA if device == "cuda" else FUSED_CPU
    out = []
    if "rgsa" in args.bench:
        H, R = max(args.channels // 8, 1), max(args.channels // 16, 1)
        for outer in ("relu", "identity"):
            for backend in ("reference", *fused):
                if backend not in args.backends:
                    continue
                if backends.get(backend).refusal(device, torch.float32, "relu", outer, False) is not None:
                    continue
                for N in args.sizes:
                    Hf, Wf = feature_map(N)
                    out.append(Case("rgsa", outer, backend, device, N, args.batch, args.channels, H, R, Hf, Wf))
    if "op" in args.bench:
        for backend in ("reference", *fused):
            if backend not in args.backends:
                continue
            if backends.get(backend).refusal(device, torch.float32, "relu", "identity", False) is not None:
                continue
            for N in args.op_sizes:
                out.append(Case("op", "identity", backend, device, N, args.batch, 0, args.hidden, args.relation))
    return out


# ----------------------------------------------------------------------------------------------
# One case, in this process
# ----------------------------------------------------------------------------------------------


def _step(case: Case):
    """A closure running one forward + backward of the case, with its inputs made."""
    torch.manual_seed(0)
    device = torch.device(case.device)
    if case.bench == "rgsa":
        model = fastrel.RGSA(case.C, outer=case.outer, backend=case.backend).to(device).train()
        x = torch.randn(case.B, case.C, case.Hf, case.Wf, device=device, requires_grad=True)

        def step():
            model.zero_grad(set_to_none=True)
            x.grad = None
            model(x).square().mean().backward()

        return step
    a = torch.randn(case.B, case.N, case.H, device=device, requires_grad=True)
    b = torch.randn(case.B, case.N, case.H, device=device, requires_grad=True)
    w = (torch.randn(case.R, case.H, device=device) / case.H**0.5).requires_grad_()
    bias = torch.randn(case.R, device=device, requires_grad=True)
    grad = torch.randn(case.B, case.N, case.R, device=device)

    def step():
        for t in (a, b, w, bias):
            t.grad = None
        fastrel.global_relation(a, b, w, bias, inner="relu", outer=case.outer, backend=case.backend).backward(grad)

    return step


def run_case(case: Case, repeats: int, long_step_s: float) -> Case:
    """Measure the case here. Steps longer than ``long_step_s`` are timed once (the first call)."""
    case.threads = torch.get_num_threads()
    step = _step(case)
    cuda = case.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        before = measure.status_kib("VmRSS") / 1024
        measure.reset_peak_rss()
    walls, cpus = [], []
    for i in range(1 + repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        measure.sync(case.device)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        if i == 0 and walls[0] > long_step_s:
            break
    if len(walls) > 1:  # the first call warms up
        walls, cpus = walls[1:], cpus[1:]
    case.peak_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else measure.status_kib("VmHWM") / 1024
    case.step_mb = case.peak_mb - before
    case.time_ms = 1e3 * statistics.median(walls)
    case.cpu_ms = 1e3 * statistics.median(cpus)
    case.repeats = len(walls)
    case.status = "ok"
    return case


# ----------------------------------------------------------------------------------------------
# The driver: one subprocess per case
# ----------------------------------------------------------------------------------------------


def predicted_step_s(case: Case, done: list[Case]) -> float:
    """Step time extrapolated as N² from the largest N of the same series measured so far."""
    same = [r for r in done if (r.bench, r.outer, r.backend) == (case.bench, case.outer, case.backend)]
    same = [r for r in same if r.status == "ok" and r.N < case.N]
    if not same:
        return 0.0
    last = max(same, key=lambda r: r.N)
    return last.time_ms / 1e3 * (case.N / last.N) ** 2


def measure_case(case: Case, args, done: list[Case]) -> Case:
    case.predicted_mb = predicted_mb(case)
    case.machine = measure.machine(case.device)
    case.load = os.getloadavg()[0]
    if case.device == "cpu" and case.predicted_mb > 1024 * args.budget_gb:
        case.status = "over budget"
        return case
    seconds = predicted_step_s(case, done)
    if seconds > args.max_step_s:
        case.status = f"over time limit (~{seconds:.0f} s/step)"
        return case
    command = [sys.executable, __file__, "--case", json.dumps(asdict(case)), "--repeats", str(args.repeats)]
    command += ["--long-step-s", str(args.long_step_s), "--threads", str(args.threads)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        case.status = f"timeout ({args.timeout:.0f} s)"
        return case
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        case.status = f"failed: {last[:160]}"
        return case
    return Case(**json.loads(done.stdout.strip().splitlines()[-1]))


def largest_within_budget(rows: list[Case], budget_mb: float) -> dict[tuple[str, str, str], int]:
    """Per (bench, outer, backend): the largest N measured with its peak within the budget."""
    best: dict[tuple[str, str, str], int] = {}
    for row in rows:
        key = (row.bench, row.outer, row.backend)
        best.setdefault(key, 0)
        if row.status == "ok" and row.peak_mb <= budget_mb:
            best[key] = max(best[key], row.N)
    return best


def write_csv(rows: list[Case], path: Path) -> None:
    """Write the rows, keeping rows of other cases already in the file (runs can be split by backend)."""
    names = [f.name for f in fields(Case)]
    new = [{k: (f"{v:.1f}" if isinstance(v, float) else v) for k, v in asdict(row).items()} for row in rows]
    measured = {_key(row) for row in new}
    kept = []
    if path.exists():
        with open(path, newline="") as handle:
            kept = [row for row in csv.DictReader(handle) if _key(row) not in measured]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(sorted(kept + new, key=lambda r: (r["outer"], r["backend"], int(r["N"]))))


def _key(row: dict) -> tuple[str, ...]:
    return tuple(str(row[k]) for k in ("bench", "outer", "backend", "device", "N", "B", "C", "H", "R"))


def paired(args) -> None:
    """Sort path against the fused pairwise backend, alternating in one process on the same inputs.

    Both see the same machine load, so their ratio is steadier than that of separate runs; the
    results of the two are compared as well (relative max difference, float32).
    """
    rival = "cuda" if args.device == "cuda" else "cpu"
    torch.manual_seed(0)
    N, H, R = args.paired_n, args.hidden, args.relation
    leaves = [
        torch.randn(args.batch, N, H, device=args.device),
        torch.randn(args.batch, N, H, device=args.device),
        torch.randn(R, H, device=args.device) / H**0.5,
        torch.randn(R, device=args.device),
    ]
    grad = torch.randn(args.batch, N, R, device=args.device)

    def step(backend: str) -> list[torch.Tensor]:
        inputs = [t.clone().requires_grad_() for t in leaves]
        out = fastrel.global_relation(*inputs, inner="relu", outer="identity", backend=backend)
        return [out.detach(), *torch.autograd.grad(out, inputs, grad)]

    times: dict[str, list[tuple[float, float]]] = {rival: [], "sort": []}
    results = {}
    for _ in range(1 + args.repeats):
        for backend in times:
            wall, cpu = time.perf_counter(), time.process_time()
            results[backend] = step(backend)
            measure.sync(args.device)
            times[backend].append((time.perf_counter() - wall, time.process_time() - cpu))
    rows = []
    for backend, measured in times.items():
        measured = measured[1:]
        rows.append(
            {
                "backend": backend,
                "N": N,
                "H": H,
                "R": R,
                "B": args.batch,
                "time_ms": f"{1e3 * statistics.median(w for w, _ in measured):.1f}",
                "cpu_ms": f"{1e3 * statistics.median(c for _, c in measured):.1f}",
                "repeats": len(measured),
                "threads": torch.get_num_threads(),
                "machine": measure.machine(args.device),
            }
        )
    names = ("out", "da", "db", "dweight", "dbias")
    differences = {
        name: ((x - y).abs().max() / y.abs().max()).item()
        for name, x, y in zip(names, results["sort"], results[rival], strict=True)
    }
    for row in rows:
        row.update({f"maxdiff_{k}": f"{v:.1e}" for k, v in differences.items()})
    speedup = float(rows[0]["cpu_ms"]) / float(rows[1]["cpu_ms"])
    print(f"B={args.batch} N=M={N} H={H} R={R}, fwd+bwd, {torch.get_num_threads()} thread(s):")
    for row in rows:
        print(f"  {row['backend']:5s} wall {row['time_ms']:>8s} ms  cpu {row['cpu_ms']:>8s} ms")
    print(f"  sort is {speedup:.1f}x faster (CPU time); relative max differences: {differences}")
    path = args.out / f"scaling_paired_{args.device}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default="rgsa,op", help="rgsa, op, paired (comma-separated)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=_sizes, default=[128, 512, 1024, 2048, 8192], help="N for rgsa")
    parser.add_argument("--op-sizes", type=_sizes, default=[512, 1024, 2048, 4096], help="N = M for op")
    parser.add_argument("--paired-n", type=int, default=4096, help="N = M for paired")
    parser.add_argument("--backends", default="reference,cpu,sort,triton,cuda", help="comma-separated")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--channels", type=int, default=2048, help="C of the rgsa feature map")
    parser.add_argument("--hidden", type=int, default=128, help="H for op")
    parser.add_argument("--relation", type=int, default=64, help="R for op")
    parser.add_argument("--budget-gb", type=float, default=8.0, help="memory budget (GB) per case")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--long-step-s", type=float, default=20.0, help="time a step this long only once")
    parser.add_argument("--max-step-s", type=float, default=120.0, help="skip steps predicted to take longer")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per case")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per case (0: torch's default)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(asdict(run_case(Case(**json.loads(args.case)), args.repeats, args.long_step_s))))
        return

    args.bench = [b for b in args.bench.split(",") if b]
    args.backends = [b for b in args.backends.split(",") if b]
    unknown = set(args.bench) - {"rgsa", "op", "paired"}
    if unknown:
        parser.error(f"--bench: expected rgsa, op and/or paired, got {sorted(unknown)}")
    if "paired" in args.bench:
        paired(args)
    rows: dict[str, list[Case]] = {}
    done: list[Case] = []
    for case in cases(args):
        row = measure_case(case, args, done)
        done.append(row)
        rows.setdefault(row.bench, []).append(row)
        print(
            f"{row.bench:4s} outer={row.outer:8s} {row.backend:9s} N={row.N:5d}  {row.status:12s} "
            f"time {row.time_ms:9.1f} ms  cpu {row.cpu_ms:9.1f} ms  peak {row.peak_mb:8.1f} MB  "
            f"step {row.step_mb:8.1f} MB  predicted {row.predicted_mb:8.1f} MB  load {row.load:.1f}",
            flush=True,
        )
    for bench, bench_rows in rows.items():
        path = args.out / f"scaling_{bench}_{args.device}.csv"
        write_csv(bench_rows, path)
        print(f"wrote {path}")
        for (_, outer, backend), N in largest_within_budget(bench_rows, 1024 * args.budget_gb).items():
            print(f"  {bench} outer={outer} {backend}: largest N within {args.budget_gb:g} GB: {N or 'none'}")


if __name__ == "__main__":
    main()
