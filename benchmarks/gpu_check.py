"""The measuring half of benchmarks/gpu_check.sh: the device's bf16 matmul peak, the issue's GPU
cases (Triton backend against the materialising reference and torch.compile of it), and the one
results file that gathers everything the script ran.

    python benchmarks/gpu_check.py cases --out cases.json [--dry]
    python benchmarks/gpu_check.py report --dir gpu_results
    python benchmarks/gpu_check.py registers     # no GPU needed: ptxas report of every tuned tile

``--dry`` runs the same cases at tiny sizes on the CPU (Triton interpreter), to test the script.
Ratios are reported, never asserted: the targets sit beside the measurements for the reader.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import json
import math
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

#: The issue's targets on H100/H200, reported next to the measured ratios.
TARGETS = {
    "speedup_vs_reference": 5.0,
    "speedup_vs_compiled_reference": 2.0,
    "memory_fraction_of_reference": 1 / 20,
    "fraction_of_matmul_peak": 0.5,
}


@dataclass(frozen=True)
class Case:
    name: str
    B: int
    N: int
    H: int
    R: int
    modes: tuple[str, ...]
    peers: tuple[str, ...]
    masked: bool = False

    def forward_flops(self) -> int:
        return 2 * self.B * self.N * self.N * self.H * self.R


GPU_CASES = (
    Case("rgsa_576_frames", 576, 128, 256, 128, ("fwd", "fwdbwd"), ("reference", "compiled_reference")),
    Case("rgsa_large_forward", 4, 2048, 128, 128, ("fwd",), ("reference",)),
    Case("rgtr_2000_frames", 1, 2000, 256, 128, ("fwd", "fwdbwd"), ("reference",), masked=True),
)
DRY_CASES = (
    Case("rgsa_576_frames", 4, 8, 16, 16, ("fwd", "fwdbwd"), ("reference", "compiled_reference")),
    Case("rgsa_large_forward", 1, 64, 16, 16, ("fwd",), ("reference",)),
    Case("rgtr_2000_frames", 1, 40, 16, 8, ("fwd", "fwdbwd"), ("reference",), masked=True),
)


def inputs(case: Case, dtype: torch.dtype, device: str, seed: int = 0) -> dict:
    """Random a, b, W_r, β_r (never zeros), a key mask for the tracklet case, an upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    t = {
        "a": torch.randn(case.B, case.N, case.H, generator=g),
        "b": torch.randn(case.B, case.N, case.H, generator=g),
        "weight": torch.randn(case.R, case.H, generator=g) / math.sqrt(case.H),
        "bias": torch.randn(case.R, generator=g),
        "grad": torch.randn(case.B, case.N, case.R, generator=g),
    }
    t = {k: v.to(device=device, dtype=dtype) for k, v in t.items()}
    t["key_mask"] = None
    if case.masked:
        mask = torch.ones(case.B, case.N, dtype=torch.bool)
        mask[:, -max(case.N // 20, 1) :] = False  # a padded tail, as when tracklets are batched
        t["key_mask"] = mask.to(device)
    return t


def implementations() -> dict[str, Callable]:
    import fastrel
    from fastrel import reference

    def fused(a, b, weight, bias, key_mask):
        return fastrel.global_relation(a, b, weight, bias, key_mask=key_mask, backend="triton", deterministic=False)

    def fused_deterministic(a, b, weight, bias, key_mask):
        return fastrel.global_relation(a, b, weight, bias, key_mask=key_mask, backend="triton", deterministic=True)

    def materialising(a, b, weight, bias, key_mask):
        return reference.global_relation(a, b, weight, bias, key_mask=key_mask)

    return {
        "triton": fused,
        "triton_deterministic": fused_deterministic,
        "reference": materialising,
        "compiled_reference": torch.compile(materialising),
    }


def timed(fn: Callable[[], object], device: str) -> float:
    """Median milliseconds of ``fn`` after warm-up (CUDA events through triton.testing.do_bench)."""
    if device == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(impl: Callable, t: dict, mode: str, device: str) -> dict:
    """First-call seconds (compilation, autotuning), median time and peak memory above the inputs."""
    leaves = [t[k].detach().requires_grad_(mode == "fwdbwd") for k in ("a", "b", "weight", "bias")]

    def call():
        if mode == "fwd":
            with torch.no_grad():
                return impl(*leaves, t["key_mask"])
        out = impl(*leaves, t["key_mask"])
        return torch.autograd.grad(out, leaves, t["grad"])

    start = time.perf_counter()
    call()
    if device == "cuda":
        torch.cuda.synchronize()
    first_call_s = time.perf_counter() - start
    peak_mib = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        call()
        torch.cuda.synchronize()
        peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    return {"time_ms": timed(call, device), "first_call_s": first_call_s, "peak_mib": peak_mib}


def accuracy(impls: dict, case: Case, dtype: torch.dtype, device: str) -> dict:
    """Relative errors of the Triton backend and of the reference in ``dtype`` against the reference in
    float32 (float64 on the CPU), forward and every gradient, on a cut of the case that keeps the
    float32 reference's pair tensors small: at most 4 batch elements and 512 items."""
    small = Case(case.name, min(case.B, 4), min(case.N, 512), case.H, case.R, case.modes, case.peers, case.masked)
    t = inputs(small, dtype, device, seed=1)
    exact_dtype = torch.float64 if device == "cpu" else torch.float32

    def run(impl, cast):
        leaves = [t[k].to(cast).detach().requires_grad_() for k in ("a", "b", "weight", "bias")]
        out = impl(*leaves, t["key_mask"])
        grads = torch.autograd.grad(out, leaves, t["grad"].to(cast))
        return [out, *grads]

    exact = run(impls["reference"], exact_dtype)
    names = ("out", "da", "db", "dweight", "dbias")
    result = {}
    for label, impl in (("triton", impls["triton"]), ("reference", impls["reference"])):
        got = run(impl, dtype)
        result[label] = {
            n: float((x.to(exact_dtype) - y).norm() / y.norm().clamp(min=1e-30)) for n, x, y in zip(names, got, exact)
        }
    return result


def matmul_peak_tflops(device: str) -> float:
    """Measured bf16 matmul rate of the device (random operands, not zeros)."""
    n = 8192 if device == "cuda" else 256
    x = torch.randn(n, n, device=device).to(torch.bfloat16)
    y = torch.randn(n, n, device=device).to(torch.bfloat16)
    ms = timed(lambda: x @ y, device)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def run_cases(dry: bool, out: Path) -> dict:
    """Measure every case; ``out`` is rewritten after each measurement, so a run cut short by the
    script's time cap still leaves what it measured."""
    device = "cpu" if dry else "cuda"
    dtype = torch.bfloat16
    impls = implementations()
    result = {"device": device_name(device), "dtype": "bfloat16", "targets": TARGETS, "cases": {}}
    result["matmul_peak_tflops"] = peak = matmul_peak_tflops(device)
    print(f"bf16 matmul peak: {peak:.1f} TFLOP/s", flush=True)
    for case in DRY_CASES if dry else GPU_CASES:
        t = inputs(case, dtype, device)
        entry = {"shape": dict(B=case.B, N=case.N, M=case.N, H=case.H, R=case.R, masked=case.masked)}
        for mode in case.modes:
            mine = ("triton", "triton_deterministic") if mode == "fwdbwd" else ("triton",)
            for name in (*mine, *case.peers):
                key = f"{name}/{mode}"
                try:
                    entry[key] = measure(impls[name], t, mode, device)
                except Exception as error:  # an OOM or a compile failure is a result, not a crash
                    entry[key] = {"error": f"{type(error).__name__}: {error}".splitlines()[0][:300]}
                    traceback.print_exc()
                print(case.name, key, entry[key], flush=True)
                result["cases"][case.name] = entry
                out.write_text(json.dumps(result, indent=1))
                if device == "cuda":
                    torch.cuda.empty_cache()
        try:
            entry["accuracy"] = accuracy(impls, case, dtype, device)
        except Exception as error:
            entry["accuracy"] = {"error": f"{type(error).__name__}: {error}".splitlines()[0][:300]}
        entry["ratios"] = ratios(entry, case, peak)
        out.write_text(json.dumps(result, indent=1))
    return result


def ratios(entry: dict, case: Case, peak: float) -> dict:
    """Speed-ups and memory fractions of both Triton modes against each peer, and the forward rate
    against the matmul peak."""
    out = {}
    for mode, impl in itertools.product(case.modes, ("triton", "triton_deterministic")):
        mine = entry.get(f"{impl}/{mode}", {})
        if "time_ms" not in mine:
            continue
        for peer in case.peers:
            theirs = entry.get(f"{peer}/{mode}", {})
            if "time_ms" in theirs:
                out[f"{impl}_speedup_vs_{peer}/{mode}"] = theirs["time_ms"] / mine["time_ms"]
            if mine.get("peak_mib") and theirs.get("peak_mib"):
                out[f"{impl}_memory_fraction_of_{peer}/{mode}"] = mine["peak_mib"] / theirs["peak_mib"]
        if mode == "fwd":
            tflops = case.forward_flops() / (mine["time_ms"] * 1e-3) / 1e12
            out["triton_fwd_tflops"] = tflops
            out["fraction_of_matmul_peak/fwd"] = tflops / peak
    return out


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU (Triton interpreter)"


def report(directory: Path) -> dict:
    """Gather steps.tsv, the log tails, cases.json and the benchmark CSV into gpu_check.json."""
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device_name("cuda" if torch.cuda.is_available() else "cpu"),
        "steps": [],
    }
    try:
        import triton

        result["triton"] = triton.__version__
    except ImportError as error:
        result["triton"] = f"unavailable: {error}"
    steps = directory / "logs" / "steps.tsv"
    for line in steps.read_text().splitlines() if steps.exists() else []:
        name, rc, seconds = line.split("\t")
        log = directory / "logs" / f"{name}.log"
        tail = log.read_text(errors="replace").splitlines()[-40:] if log.exists() else []
        result["steps"].append({"name": name, "rc": int(rc), "seconds": float(seconds), "log_tail": tail})
    cases = directory / "cases.json"
    result["cases"] = json.loads(cases.read_text()) if cases.exists() else None
    bench = sorted(directory.glob("bench_*.csv"))
    result["benchmark_rows"] = [row for path in bench for row in csv.DictReader(path.open())]
    (directory / "gpu_check.json").write_text(json.dumps(result, indent=1))
    return result


def summary(result: dict) -> str:
    lines = [f"device: {result['device']}  torch {result['torch']}  triton {result.get('triton')}"]
    lines += [f"  step {s['name']:<24} rc={s['rc']:<4} {s['seconds']:7.1f} s" for s in result["steps"]]
    cases = result.get("cases") or {}
    if cases:
        lines.append(f"  bf16 matmul peak {cases['matmul_peak_tflops']:.1f} TFLOP/s")
        for name, entry in cases["cases"].items():
            for key, value in entry.get("ratios", {}).items():
                lines.append(f"  {name:<20} {key:<52} {value:10.4g}")
            for key, value in entry.items():
                if "/" in key and "time_ms" in value:
                    mem = value["peak_mib"]
                    mem_text = f"{mem:9.1f} MiB" if mem is not None else "      - MiB"
                    lines.append(f"  {name:<20} {key:<52} {value['time_ms']:10.3f} ms {mem_text}")
                elif "/" in key:
                    lines.append(f"  {name:<20} {key:<52} {value.get('error')}")
            acc = entry.get("accuracy", {})
            if "triton" in acc:
                worst = max(acc["triton"].values())
                ref = max(acc["reference"].values())
                lines.append(f"  {name:<20} {'max rel err triton / bf16 reference':<52} {worst:.2e} / {ref:.2e}")
    lines.append(f"  benchmark rows: {len(result.get('benchmark_rows') or [])}")
    return "\n".join(lines)


#: Pointer arguments that carry the input dtype; the other pointers are fp32 buffers.
_IO_POINTERS = ("a_ptr", "b_ptr", "w_ptr", "bias_ptr", "grad_ptr", "g_ptr")


def registers(arch: int = 90) -> list[str]:
    """Compile the forward and backward kernels for sm_<arch> at every autotuned tile (bf16, relu,
    H 128 and 256) with Triton's bundled ptxas and report registers, spill bytes and the MMA kind:
    register spills are the first suspect when a kernel is slow, and this needs no GPU."""
    import os
    import re
    import subprocess
    import tempfile

    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fastrel.kernels import global_relation as k

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    target = GPUTarget("cuda", arch, 32)
    lines = []

    def report(fn, constants: dict, warps: int, stages: int, label: str) -> None:
        signature = {}
        for param in fn.params:
            name = param.name
            if param.is_constexpr:
                signature[name] = "constexpr"
            elif name.endswith("_ptr"):
                signature[name] = "*bf16" if name in _IO_POINTERS else "*fp32"
            else:
                signature[name] = "i32"
        source = ASTSource(fn=fn, signature=signature, constexprs=constants)
        try:
            kernel = triton.compile(source, target=target, options=dict(num_warps=warps, num_stages=stages))
        except Exception as error:
            lines.append(f"{label:<44} compile error: {str(error).splitlines()[0][:200]}")
            return
        ptx = kernel.asm["ptx"]
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "kernel.ptx")
            with open(path, "w") as f:
                f.write(ptx)
            out = subprocess.run(
                [ptxas, f"-arch=sm_{arch}a", "-v", path, "-o", os.path.join(tmp, "kernel.cubin")],
                capture_output=True,
                text=True,
            ).stderr
        regs = re.findall(r"Used (\d+) registers", out)
        spills = re.findall(r"(\d+) bytes spill stores", out)
        mma = "wgmma" if "wgmma" in ptx else ("mma" if "mma.sync" in ptx else "no mma")
        lines.append(
            f"{label:<44} regs {regs[0] if regs else '?':>4}  spill {spills[0] if spills else '?':>5} B"
            f"  smem {kernel.metadata.shared:>6} B  {mma}"
        )

    common = dict(INNER=1, OUTER=1, HAS_BIAS=True, HAS_MASK=True, ACC=tl.float32, DOT=tl.bfloat16, PRECISION="tf32")
    for o, l, warps, stages in k._FORWARD_TILES:
        constants = dict(common, DIFF=tl.bfloat16, BLOCK_O=o, BLOCK_L=l, BLOCK_H=64, BLOCK_R=64)
        report(k._forward_kernel, constants, warps, stages, f"forward O{o} L{l} w{warps} s{stages}")
    for h in (128, 256):
        for o, l, warps, stages in k._BACKWARD_TILES:
            for own_keys, atomic in ((False, False), (True, False), (False, True)):
                constants = dict(common, OWN_KEYS=own_keys, ATOMIC_DB=atomic, BLOCK_O=o, BLOCK_L=l, BLOCK_H=h)
                constants["BLOCK_R"] = 32
                name = "columns" if own_keys else ("rows+atomic" if atomic else "rows")
                report(k._backward_kernel, constants, warps, stages, f"backward {name} H{h} O{o} L{l} w{warps}")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cases = sub.add_parser("cases", help="matmul peak and the issue's GPU cases")
    cases.add_argument("--out", type=Path, required=True)
    cases.add_argument("--dry", action="store_true", help="tiny sizes on the CPU (Triton interpreter)")
    rep = sub.add_parser("report", help="write <dir>/gpu_check.json and print a summary")
    rep.add_argument("--dir", type=Path, required=True)
    reg = sub.add_parser("registers", help="ptxas register/spill report of every tuned tile (no GPU needed)")
    reg.add_argument("--arch", type=int, default=90)
    args = parser.parse_args(argv)
    if args.command == "cases":
        if not args.dry and not torch.cuda.is_available():
            parser.error("cases: no CUDA device; use --dry on a CPU machine")
        run_cases(args.dry, args.out)
    elif args.command == "registers":
        print("\n".join(registers(args.arch)))
    else:
        print(summary(report(args.dir)))


if __name__ == "__main__":
    main()
