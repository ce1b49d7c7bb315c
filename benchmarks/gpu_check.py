"""The measuring half of benchmarks/gpu_check.sh: device facts, a smoke check of every GPU backend
against the reference, the timing rows, and the one JSON summary of the run.

    python benchmarks/gpu_check.py preflight --dir D
    python benchmarks/gpu_check.py smoke --backends triton,sort,reference --dir D
    python benchmarks/gpu_check.py time --impls triton,reference,compiled --ceilings --dir D
    python benchmarks/gpu_check.py time --smoke cuda --impls cuda,cuda_det --dir D
    python benchmarks/gpu_check.py train --dir D
    python benchmarks/gpu_check.py report --dir D --dest OUT

Smoke checks and timing rows are appended to D/smoke.jsonl and D/rows.jsonl (flushed) as soon as
each is done, so a step stopped by its time cap keeps everything it measured. Every timing row
carries its error against a float64 reference of the same inputs and its peak memory above the
inputs; rows that cannot run are written too, with the reason. ``--dry`` runs the same code on CPU
tensors at tiny sizes (Triton interpreter), to test the script without a GPU.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import functools
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import measure
import peers
import torch
from timed_case import Case

import fastrel
from fastrel import backends, reference

MODES = ("fwd", "fwdbwd")
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
GRADIENTS = ("out", "da", "db", "dweight", "dbias")


#: The timed shapes. paper: RGSA over 576 frames of 16×8 maps (H = C/8, R = C/16 at C = 2048);
#: rgtr_clips: RGTR over 576 ragged clips of T = 8 frames (key masks); n1024/n2048: long sequences
#: (H = 128, R = 64) with B chosen so that the float32 reference's fwd+bwd fits in about 35 GB.
GPU_CASES = (
    Case("paper", 576, 128, 128, 256, 128),
    Case("rgtr_clips", 576, 8, 8, 256, 128, masked=True),
    Case("n1024", 8, 1024, 1024, 128, 64),
    Case("n2048", 4, 2048, 2048, 128, 64),
)
DRY_CASES = (
    Case("paper", 2, 8, 8, 16, 8),
    Case("rgtr_clips", 3, 4, 4, 16, 8, masked=True),
    Case("n1024", 1, 12, 12, 8, 4),
    Case("n2048", 1, 16, 16, 8, 4),
)
#: Smoke shapes (B, N, M, H, R): tails in every dimension, N > 64 (the CUDA kernels' two-pass
#: path), and short clips; H and R are kept to few tile sizes so that Triton compiles few kernels.
GPU_SMOKE_SHAPES = ((2, 37, 29, 48, 40), (2, 70, 33, 48, 40), (3, 8, 8, 64, 40))
DRY_SMOKE_SHAPES = ((2, 5, 7, 6, 3), (2, 9, 4, 5, 4))
#: Relative error allowed on top of twice the reference's own error in the same dtype.
SMOKE_FLOOR = {torch.float32: 1e-5, torch.bfloat16: torch.finfo(torch.bfloat16).eps}
#: Largest fp64 pair tensors the chunked exact reference makes at once.
EXACT_BUDGET = {"cuda": 2 << 30, "cpu": 64 << 20}
#: Rows faster than this also time the host's issue of one call (measure.host_seconds): clips.
HOST_TIMED_BELOW_MS = 20.0
#: Every row is also timed back to back (measure.stream_seconds), as a training loop issues calls:
#: about STREAM_MS of calls, within STREAM_CALLS. time_ms starts each call on an idle device and so
#: counts the host's preparation too (about 0.3 ms per fastrel call on the H200's host, run 5).
STREAM_MS = 20.0
STREAM_CALLS = (3, 20)


def device_of(dry: bool) -> str:
    return "cpu" if dry else "cuda"


def append_row(path: Path, row: dict) -> None:
    """One JSON line, flushed, so that a step killed at its cap keeps what it wrote."""
    with open(path, "a") as out:
        out.write(json.dumps(row) + "\n")
        out.flush()


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def short(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}"


# ----------------------------------------------------------------------------------------------
# Inputs and the exact reference


def make_inputs(case: Case, dtype: torch.dtype, device: str, seed: int = 0) -> dict:
    """a, b, W_r, β_r, an upstream gradient and (for clips) a ragged key mask; the same for a given
    seed in every process, so rows measured by different steps see the same numbers."""
    g = torch.Generator().manual_seed(seed)
    t = {
        "a": torch.randn(case.B, case.N, case.H, generator=g),
        "b": torch.randn(case.B, case.M, case.H, generator=g),
        "weight": torch.randn(case.R, case.H, generator=g) / math.sqrt(case.H),
        "bias": 0.1 * torch.randn(case.R, generator=g),
        "grad": torch.randn(case.B, case.N, case.R, generator=g),
    }
    t = {k: v.to(device=device, dtype=dtype) for k, v in t.items()}
    t["key_mask"] = None
    if case.masked:
        lengths = torch.randint(1, case.M + 1, (case.B, 1), generator=g)
        t["key_mask"] = (torch.arange(case.M)[None, :] < lengths).to(device)
    return t


def exact_reference(t: dict, budget_bytes: int) -> dict:
    """Output and gradients of the reference in float64 on the (rounded) inputs ``t``, in chunks of
    batch elements and query rows small enough for ``budget_bytes``: rows of g are independent and
    the mask's count is per batch element, so the chunks' outputs and da are pieces of the whole,
    and their db, dW and dβ add up to it."""
    a, b, weight, bias, grad, mask = (t[k] for k in ("a", "b", "weight", "bias", "grad", "key_mask"))
    B, N, H = a.shape
    M, R = b.shape[1], weight.shape[0]
    per_row = M * (3 * H + 2 * R) * 8
    rows = max(1, budget_bytes // per_row)
    row_step, batch_step = (N, max(1, rows // N)) if rows >= N else (rows, 1)
    f64 = functools.partial(torch.zeros, dtype=torch.float64, device=a.device)
    result = {"out": f64(B, N, R), "da": f64(B, N, H), "db": f64(B, M, H), "dweight": f64(R, H), "dbias": f64(R)}
    w64, bias64 = weight.double().requires_grad_(), bias.double().requires_grad_()
    for b0 in range(0, B, batch_step):
        b1 = min(B, b0 + batch_step)
        for i0 in range(0, N, row_step):
            i1 = min(N, i0 + row_step)
            a64 = a[b0:b1, i0:i1].double().requires_grad_()
            b64 = b[b0:b1].double().requires_grad_()
            chunk_mask = mask[b0:b1] if mask is not None else None
            out = reference.global_relation(a64, b64, w64, bias64, key_mask=chunk_mask)
            da, db, dweight, dbias = torch.autograd.grad(out, (a64, b64, w64, bias64), grad[b0:b1, i0:i1].double())
            result["out"][b0:b1, i0:i1] = out.detach()
            result["da"][b0:b1, i0:i1] = da
            result["db"][b0:b1] += db
            result["dweight"] += dweight
            result["dbias"] += dbias
    return result


def rel_error(x: torch.Tensor, exact: torch.Tensor) -> float:
    """‖x − exact‖ / ‖exact‖ in float64; infinite when x holds a NaN or an infinity."""
    x = x.detach().double()
    if not torch.isfinite(x).all():
        return math.inf
    scale = exact.norm().item()
    diff = (x - exact).norm().item()
    return diff / scale if scale > 0 else diff


# ----------------------------------------------------------------------------------------------
# Implementations


def implementation(name: str, compile_backend: str) -> Callable:
    """fn(a, b, weight, bias, key_mask) -> g for a timed implementation: a fastrel backend
    (``<backend>`` or ``<backend>_det`` for its deterministic backward), ``reference`` (the
    materialising oracle, autograd gradients) or ``compiled`` (torch.compile of it, static shapes)."""
    if name == "reference":
        return lambda a, b, weight, bias, key_mask: reference.global_relation(a, b, weight, bias, key_mask=key_mask)
    if name == "compiled":
        compiled = torch.compile(reference.global_relation, dynamic=False, backend=compile_backend)
        return lambda a, b, weight, bias, key_mask: compiled(a, b, weight, bias, key_mask=key_mask)
    backend, _, det = name.partition("_")

    def fused(a, b, weight, bias, key_mask):
        return fastrel.global_relation(a, b, weight, bias, key_mask=key_mask, backend=backend, deterministic=bool(det))

    return fused


def refusal(name: str, device: str, dtype: torch.dtype) -> str | None:
    """Why implementation ``name`` cannot run on ``device`` in ``dtype``, or None."""
    if name in ("reference", "compiled"):
        return None
    backend, _, det = name.partition("_")
    if backend not in backends.BACKENDS:
        return f"unknown backend {backend!r}"
    return backends.get(backend).refusal(device, dtype, "relu", "relu", bool(det))


def predicted_bytes(name: str, case: Case, dtype: torch.dtype, mode: str) -> int:
    """Peak memory above the inputs, estimated on the high side (peers.predicted_peak_bytes)."""
    size = torch.empty((), dtype=dtype).element_size()
    peer = "reference" if name in ("reference", "compiled") else "keops"  # keops: O((N + M) H), like fused
    return peers.predicted_peak_bytes(peer, case.B, case.N, case.M, case.H, case.R, size, mode == "fwdbwd", 0)


# ----------------------------------------------------------------------------------------------
# Smoke: every backend against the reference, small shapes, both dtypes, masks, both backward modes


def smoke(names: list[str], dry: bool, path: Path) -> bool:
    """True when every backend is usable and every check agrees with the reference."""
    prefer_native = backends.sort.PREFER_NATIVE
    backends.sort.PREFER_NATIVE = not dry  # dry: the torch-ops sort path, which is what runs on a GPU
    try:
        return _smoke(names, dry, path)
    finally:
        backends.sort.PREFER_NATIVE = prefer_native


def _smoke(names: list[str], dry: bool, path: Path) -> bool:
    device = device_of(dry)
    shapes = DRY_SMOKE_SHAPES if dry else GPU_SMOKE_SHAPES
    ok = True
    for name in names:
        backend = backends.get(name)
        pairs = backend.supported_pairs
        for k, (shape, dtype) in enumerate((s, d) for s in shapes for d in DTYPES.values()):
            inner, outer = pairs[k % len(pairs)]
            deterministic = backend.deterministic and (k // 2) % 2 == 0
            mask = ("none", "ragged", "empty_row")[k % 3]
            row = {"backend": name, "shape": shape, "dtype": str(dtype)[6:], "inner": inner, "outer": outer}
            row.update(mask=mask, deterministic=deterministic)
            reason = backend.refusal(device, dtype, inner, outer, deterministic)
            began = time.perf_counter()
            if reason is not None:
                row["status"] = f"unavailable: {reason}"
            else:
                try:
                    row.update(smoke_check(name, shape, dtype, inner, outer, mask, deterministic, device, seed=k))
                    row["status"] = "ok" if row["agrees"] else "disagrees"
                except Exception as error:  # a crash is a result of the check, not the end of the step
                    row["status"] = f"error: {short(error)}"
                    traceback.print_exc()
            row["seconds"] = time.perf_counter() - began
            ok &= row["status"] == "ok"
            append_row(path, row)
            errors = " ".join(f"{n} {e:.1e}" for n, e in row.get("errors", {}).items())
            print(f"smoke {name:9s} {shape} {row['dtype']:8s} {inner}/{outer} {mask:9s} det={int(deterministic)} "
                  f"{row['status']} {errors}", flush=True)
    return ok


def smoke_check(name, shape, dtype, inner, outer, mask, deterministic, device, seed) -> dict:
    B, N, M, H, R = shape
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(B, N, H, generator=g), torch.randn(B, M, H, generator=g)
    weight, bias = torch.randn(R, H, generator=g) / math.sqrt(H), 0.5 * torch.randn(R, generator=g)
    grad = torch.randn(B, N, R, generator=g)
    key_mask = None
    if mask != "none":
        key_mask = torch.rand(B, M, generator=g) < 0.7
        if mask == "empty_row":
            key_mask[0] = False
        key_mask = key_mask.to(device)
    rounded = [t.to(dtype).to(device) for t in (a, b, weight, bias, grad)]

    def run(fn, cast):
        leaves = [t.to(cast).requires_grad_() for t in rounded[:4]]
        out = fn(*leaves, key_mask)
        return [out, *torch.autograd.grad(out, leaves, rounded[4].to(cast))]

    def direct(a, b, weight, bias, key_mask):
        return reference.global_relation(a, b, weight, bias, inner=inner, outer=outer, key_mask=key_mask)

    def through(a, b, weight, bias, key_mask):
        return fastrel.global_relation(a, b, weight, bias, inner=inner, outer=outer, key_mask=key_mask,
                                       backend=name, deterministic=deterministic)

    exact = [x.detach() for x in run(direct, torch.float64)]
    own = run(direct, dtype)
    got = run(through, dtype)
    errors = {n: rel_error(x, e) for n, x, e in zip(GRADIENTS, got, exact)}
    allowed = {n: 2 * rel_error(x, e) + SMOKE_FLOOR[dtype] for n, x, e in zip(GRADIENTS, own, exact)}
    return {"errors": errors, "allowed": allowed, "agrees": all(errors[n] <= allowed[n] for n in GRADIENTS)}


# ----------------------------------------------------------------------------------------------
# Timing rows


def plan(cases, impls: list[str]) -> list[tuple[Case, str, str, str]]:
    """(case, dtype, impl, mode) in the order measured, what matters most first, so that the time
    cap cuts the least important: bf16 fused and reference rows, bf16 torch.compile rows, the same
    in fp32, then the deterministic backward (bf16)."""
    fused = [i for i in impls if i != "compiled" and not i.endswith("_det")]
    compiled = [i for i in impls if i == "compiled"]
    det = [i for i in impls if i.endswith("_det")]
    order = []
    for dtype in DTYPES:
        for group in (fused, compiled):
            order += [(case, dtype, impl, mode) for case in cases for impl in group for mode in MODES]
    order += [(case, "bfloat16", impl, "fwdbwd") for case in cases for impl in det]
    return order


@dataclass
class Limits:
    deadline: float  # perf_counter after which no row starts
    compile_budget_s: float  # first-call seconds torch.compile rows may spend in all
    memory_bytes: int  # rows predicted above this are skipped
    min_time: float
    min_repeats: int
    max_repeats: int


def measure_row(fn: Callable, t: dict, exact: dict | None, mode: str, device: str, limits: Limits,
                repeatable: bool = False) -> dict:
    """First-call seconds (compilation, autotuning), error against the exact reference, peak
    memory of one call above the inputs, then the median time of repeated calls; with
    ``repeatable``, whether a call after the timed ones returns bitwise the first call's result."""
    leaves = [t[k].detach().requires_grad_(mode == "fwdbwd") for k in ("a", "b", "weight", "bias")]

    def call():
        if mode == "fwd":
            with torch.no_grad():
                return [fn(*leaves, t["key_mask"])]
        out = fn(*leaves, t["key_mask"])
        return [out, *torch.autograd.grad(out, leaves, t["grad"])]

    row = {}
    began = time.perf_counter()
    result = call()
    measure.sync(device)
    row["first_call_s"] = time.perf_counter() - began
    if exact is not None:
        errors = {n: rel_error(x, exact[n]) for n, x in zip(GRADIENTS, result)}
        row["rel_err"] = max(errors.values())
        row["rel_errors"] = errors
    first = result if repeatable else None
    del result
    row["peak_mib"] = measure.peak_bytes(call, device) / 2**20
    times = measure.repeat_seconds(call, device, limits.min_time, limits.min_repeats, limits.max_repeats,
                                   limits.deadline)
    row.update(measure.summarise(times))
    if time.perf_counter() < limits.deadline:  # back to back, as a training loop issues them
        calls = max(STREAM_CALLS[0], min(STREAM_CALLS[1], round(STREAM_MS / row["time_ms"])))
        row["stream_ms"] = measure.stream_seconds(call, device, calls) * 1e3
    if first is not None:
        row["bitwise_repeat"] = all(torch.equal(x, y) for x, y in zip(first, call()))
    if device == "cuda" and row["time_ms"] < HOST_TIMED_BELOW_MS:  # is a short call bound by the host?
        row["host_ms"] = measure.host_seconds(call, device) * 1e3
    return row


def time_rows(cases, impls: list[str], dry: bool, path: Path, limits: Limits, compile_backend: str) -> None:
    device = device_of(dry)
    peak = next((r["matmul_bf16_tflops"] for r in read_rows(path) if r.get("kind") == "ceiling"), None)
    prepared: dict[tuple[str, str], tuple[dict, dict | None]] = {}
    compile_spent = 0.0
    for case, dtype_name, impl, mode in plan(cases, impls):
        dtype = DTYPES[dtype_name]
        row = {"kind": "row", **asdict(case), "dtype": dtype_name, "impl": impl, "mode": mode, "device": device}
        need = predicted_bytes(impl, case, dtype, mode)
        row["predicted_mib"] = need / 2**20
        reason = refusal(impl, device, dtype)
        if reason is None and time.perf_counter() > limits.deadline:
            reason = "the step's time budget was spent"
        if reason is None and need > limits.memory_bytes:
            reason = f"predicted {need / 2**30:.1f} GiB > {limits.memory_bytes / 2**30:.1f} GiB available"
        if reason is None and impl == "compiled" and compile_spent > limits.compile_budget_s:
            reason = f"torch.compile budget spent ({compile_spent:.0f} s > {limits.compile_budget_s:.0f} s)"
        began = time.perf_counter()
        if reason is not None:
            row["status"] = f"skipped: {reason}"
        else:
            try:
                key = (case.name, dtype_name)
                if key not in prepared:  # inputs and exact reference, kept for the group's later rows
                    t = make_inputs(case, dtype, device)
                    try:
                        prepared[key] = (t, exact_reference(t, EXACT_BUDGET[device]))
                    except torch.OutOfMemoryError:
                        prepared[key] = (t, None)
                        row["note"] = "no error: the float64 reference ran out of memory"
                    row["prepare_s"] = time.perf_counter() - began
                t, exact = prepared[key]
                fn = implementation(impl, compile_backend)
                row.update(measure_row(fn, t, exact, mode, device, limits, repeatable=impl.endswith("_det")))
                row["status"] = "ok"
            except torch.OutOfMemoryError:
                row["status"] = "error: out of memory"
            except Exception as error:  # one failing row must not stop the others
                row["status"] = f"error: {short(error)}"
                traceback.print_exc()
            if impl == "compiled":
                compile_spent += row.get("first_call_s", time.perf_counter() - began)
            if device == "cuda":
                torch.cuda.empty_cache()
        if row["status"] == "ok":
            flops = measure.global_relation_flops(case.B, case.N, case.M, case.H, case.R, mode)
            row["tflops"] = flops / (row["time_ms"] / 1e3) / 1e12
            if peak:
                row["pct_of_matmul_peak"] = 100 * row["tflops"] / peak
                if "stream_ms" in row:
                    row["stream_pct_of_matmul_peak"] = 100 * flops / (row["stream_ms"] / 1e3) / 1e12 / peak
        row["seconds"] = time.perf_counter() - began
        append_row(path, row)
        print(progress(row), flush=True)


def progress(row: dict) -> str:
    what = f"{row['name']:10s} {row['dtype']:8s} {row['impl']:12s} {row['mode']:6s}"
    if row["status"] != "ok":
        return f"{what} {row['status']}"
    err = f"{row['rel_err']:.1e}" if row.get("rel_err") is not None else "-"
    host = f"  back to back {row['stream_ms']:.3f} ms" if "stream_ms" in row else ""
    host += f"  host {row['host_ms']:.3f} ms" if "host_ms" in row else ""
    if "bitwise_repeat" in row:
        host += f"  repeats bitwise: {'yes' if row['bitwise_repeat'] else 'NO'}"
    return (f"{what} {row['time_ms']:9.3f} ms  {row['peak_mib']:9.1f} MiB  err {err}  "
            f"{row.get('pct_of_matmul_peak', float('nan')):5.1f}% peak  first call {row['first_call_s']:.1f} s{host}")


def ceilings(dry: bool, path: Path) -> None:
    """The measured bf16 matmul peak and device-to-device copy bandwidth, as the first row."""
    device = device_of(dry)
    row = {"kind": "ceiling", "device": device}
    row["matmul_bf16_tflops"] = measure.matmul_peak_tflops(device, torch.bfloat16, 256 if dry else 8192)
    row["copy_gbs"] = measure.copy_bandwidth_gbs(device, 16 if dry else 2048)
    append_row(path, row)
    print(f"bf16 matmul peak {row['matmul_bf16_tflops']:.1f} TFLOP/s, copy {row['copy_gbs']:.0f} GB/s", flush=True)


# ----------------------------------------------------------------------------------------------
# Preflight


def tool_version(command: list[str]) -> str:
    """The first informative line a tool prints about its version, or why it could not run."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unavailable: {short(error)}"
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if done.returncode != 0:
        return f"unavailable: exit {done.returncode}: {lines[-1] if lines else ''}"
    release = [line for line in lines if "release" in line.lower() or "version" in line.lower()]
    return (release or lines or [""])[-1]


def preflight(dry: bool, path: Path) -> bool:
    """Versions of the interpreter, torch, Triton, the CUDA tools, and the GPU's name, memory and
    multiprocessors (device.json); False when no GPU is visible outside dry mode."""
    facts = {
        "python": f"{sys.executable} {platform.python_version()}",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "kernel": platform.release(),
        "host": measure.machine("cpu"),
        "nvcc": tool_version(["nvcc", "--version"]),
        "nvidia_smi": tool_version(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                    "--format=csv,noheader"]),
        "compute_sanitizer": tool_version(["compute-sanitizer", "--version"]),
        "cuobjdump": tool_version(["cuobjdump", "--version"]),
    }
    try:
        import triton

        facts["triton"] = triton.__version__
    except ImportError as error:
        facts["triton"] = f"unavailable: {short(error)}"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts.update(gpu=p.name, gpu_memory_gib=p.total_memory / 2**30, sm_count=p.multi_processor_count,
                     capability=f"{p.major}.{p.minor}", l2_mib=getattr(p, "L2_cache_size", 0) / 2**20)
    else:
        facts["gpu"] = "none visible"
    path.write_text(json.dumps(facts, indent=1))
    for key, value in facts.items():
        print(f"{key:18s} {value}")
    return dry or torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------
# Report


def report(directory: Path, dest: Path) -> dict:
    """Gather device.json, steps.tsv, the smoke and timing rows and the logs' test summaries into
    dest/gpu_check.json, with the rows also as dest/gpu_check_rows.csv."""
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    device = directory / "device.json"
    result["device"] = json.loads(device.read_text()) if device.exists() else None
    result["steps"] = []
    steps = directory / "steps.tsv"
    for line in steps.read_text().splitlines() if steps.exists() else []:
        name, status, rc, seconds, cap = line.split("\t")
        entry = {"name": name, "status": status, "rc": int(rc) if rc else None, "seconds": float(seconds)}
        entry["cap_s"] = float(cap) if cap else None
        log = directory / "logs" / f"{name}.log"
        if log.exists():
            lines = log.read_text(errors="replace").splitlines()
            entry["log_tail"] = lines[-12:]
            if name.endswith("tests"):
                entry["tests"] = test_outcomes(lines)
        result["steps"].append(entry)
    rows = read_rows(directory / "rows.jsonl")
    result["ceilings"] = next((r for r in rows if r.get("kind") == "ceiling"), None)
    result["rows"] = [r for r in rows if r.get("kind") == "row"]
    result["smoke"] = read_rows(directory / "smoke.jsonl")
    result["ratios"] = ratios(result["rows"])
    result["first_call_s"] = first_call_seconds(result["rows"])
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "gpu_check.json").write_text(json.dumps(result, indent=1))
    with open(dest / "gpu_check_rows.csv", "w", newline="") as out:
        fields = ["name", "B", "N", "M", "H", "R", "masked", "dtype", "impl", "mode", "status", "time_ms",
                  "time_p25_ms", "time_p75_ms", "repeats", "first_call_s", "peak_mib", "predicted_mib", "rel_err",
                  "tflops", "pct_of_matmul_peak", "host_ms", "stream_ms", "stream_pct_of_matmul_peak", "device"]
        writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result["rows"])
    return result


def test_outcomes(lines: list[str]) -> dict:
    """Counts of the outcomes pytest -v printed, one line per test, and the tests that failed: a
    run stopped at its cap still tells what passed."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    failed = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and "::" in parts[0] and parts[1].lower() in counts:
            counts[parts[1].lower()] += 1
            if parts[1] in ("FAILED", "ERROR"):
                failed.append(parts[0])
    return {**counts, "not_passed": failed}


def ratios(rows: list[dict]) -> list[dict]:
    """Per fastrel row: speed-up over the reference and over torch.compile(reference), and its peak
    memory as a fraction of the reference's, from rows of the same case, dtype and mode."""
    ok = {(r["name"], r["dtype"], r["mode"], r["impl"]): r for r in rows if r["status"] == "ok"}
    out = []
    for (name, dtype, mode, impl), row in ok.items():
        if impl in ("reference", "compiled"):
            continue
        entry = {"name": name, "dtype": dtype, "mode": mode, "impl": impl}
        for peer in ("reference", "compiled"):
            theirs = ok.get((name, dtype, mode, peer))
            if theirs:
                entry[f"speedup_vs_{peer}"] = theirs["time_ms"] / row["time_ms"]
                if "stream_ms" in theirs and "stream_ms" in row:
                    entry[f"stream_speedup_vs_{peer}"] = theirs["stream_ms"] / row["stream_ms"]
                if theirs["peak_mib"] > 0:
                    entry[f"memory_fraction_of_{peer}"] = row["peak_mib"] / theirs["peak_mib"]
        out.append(entry)
    return out


def first_call_seconds(rows: list[dict]) -> dict:
    """Seconds each implementation spent in first calls beyond a timed call: Triton's compilation
    and autotuning, torch.compile's compilation."""
    spent: dict[str, float] = {}
    for r in rows:
        if r["status"] == "ok":
            spent[r["impl"]] = spent.get(r["impl"], 0.0) + max(0.0, r["first_call_s"] - r["time_ms"] / 1e3)
    return spent


def summary(result: dict) -> str:
    device = result.get("device") or {}
    lines = [f"device {device.get('gpu')} | torch {device.get('torch')} | triton {device.get('triton')} | "
             f"nvcc {device.get('nvcc')}"]
    lines += [f"  step {s['name']:16s} {s['seconds']:6.0f} s  {s['status']}" for s in result["steps"]]
    smoke_rows = result["smoke"]
    for name in dict.fromkeys(r["backend"] for r in smoke_rows):
        mine = [r for r in smoke_rows if r["backend"] == name]
        good = sum(r["status"] == "ok" for r in mine)
        bad = [r["status"] for r in mine if r["status"] != "ok"]
        lines.append(f"  smoke {name:10s} {good}/{len(mine)} agree" + (f"  ({bad[0]})" if bad else ""))
    if result["ceilings"]:
        c = result["ceilings"]
        lines.append(f"  bf16 matmul peak {c['matmul_bf16_tflops']:.1f} TFLOP/s, copy {c['copy_gbs']:.0f} GB/s")
    lines += ["  " + progress(r) for r in result["rows"]]
    lines.append("  speed-up (×) and memory fraction against the reference and torch.compile(reference):")
    short_names = {"speedup_vs_reference": "× ref", "speedup_vs_compiled": "× compiled",
                   "stream_speedup_vs_reference": "back to back × ref",
                   "stream_speedup_vs_compiled": "× compiled",
                   "memory_fraction_of_reference": "mem/ref", "memory_fraction_of_compiled": "mem/compiled"}
    for r in result["ratios"]:
        parts = [f"{short_names[k]} {r[k]:.3g}" for k in short_names if k in r]
        lines.append(f"  {r['name']:10s} {r['dtype']:8s} {r['impl']:12s} {r['mode']:6s} " + "  ".join(parts))
    lines.append("  first-call seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result["first_call_s"].items()))
    return "\n".join(lines)


def train_steps(dry: bool, directory: Path) -> bool:
    """Two training steps of configs/synthetic.yaml under torchrun with one process, then its
    evaluation: on a GPU the pipeline's path (nccl, bf16 autocast), with --dry gloo on the CPU. The
    model takes the paper's relu/relu form, so that RGSA and RGTR run the fused pair kernels (the
    config's identity/relu default runs the sort path). True when the run says so and reports a
    finite loss."""
    device = "cpu" if dry else "cuda"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
               "-m", "train", "--config", "configs/synthetic.yaml", "optim.epochs=1", "optim.steps_per_epoch=2",
               "optim.warmup_epochs=0", "model.inner=relu", "model.outer=relu", f"run.device={device}",
               "run.progress=false", f"run.output={directory / 'train' / 'run'}",
               f"data.root={directory / 'train' / 'data'}"]
    run = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    print(run.stdout)
    group = "gloo" if dry else "nccl"
    wanted = [rf"device {device}(:0)?; process group {group}, 1 process\(es\); autocast {'off' if dry else 'bf16'}",
              r"epoch 1/1: frame_ce"]
    missing = [line for line in wanted if not re.search(line, run.stdout)]
    losses = [float(x) for x in re.findall(r" loss ([-+0-9.eEnaif]+),", run.stdout)]
    finite = bool(losses) and all(math.isfinite(x) for x in losses)
    print(f"exit {run.returncode}; missing lines: {missing or 'none'}; losses {losses}")
    return run.returncode == 0 and not missing and finite


# ----------------------------------------------------------------------------------------------


def names(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {name: sub.add_parser(name) for name in ("preflight", "smoke", "time", "train", "report")}
    for name, command in commands.items():
        command.add_argument("--dir", type=Path, required=True, help="the run's working folder")
        if name != "report":
            command.add_argument("--dry", action="store_true", help="CPU tensors, tiny sizes")
    commands["smoke"].add_argument("--backends", type=names, required=True)
    timing = commands["time"]
    timing.add_argument("--impls", type=names, required=True, help="backends, <backend>_det, reference, compiled")
    timing.add_argument("--smoke", type=names, default=[], help="smoke-check these backends first")
    timing.add_argument("--ceilings", action="store_true", help="measure the matmul peak and copy bandwidth first")
    cap = float(os.environ.get("STEP_CAP", "1e9"))
    timing.add_argument("--budget", type=float, default=cap - 8, help="seconds after which no row starts")
    timing.add_argument("--compile-budget", type=float, default=60.0, help="first-call seconds for torch.compile")
    commands["report"].add_argument("--dest", type=Path, required=True)
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)

    if args.command == "preflight":
        return 0 if preflight(args.dry, args.dir / "device.json") else 1
    if args.command == "smoke":
        return 0 if smoke(args.backends, args.dry, args.dir / "smoke.jsonl") else 1
    if args.command == "train":
        return 0 if train_steps(args.dry, args.dir) else 1
    if args.command == "report":
        print(summary(report(args.dir, args.dest)))
        return 0
    started = time.perf_counter()
    ok = smoke(args.smoke, args.dry, args.dir / "smoke.jsonl") if args.smoke else True
    torch._dynamo.config.recompile_limit = 64  # one static graph per case, dtype and mode
    if args.dry:
        limits = Limits(started + args.budget, args.compile_budget, 1 << 30, 0.0, 1, 2)
    else:
        free, _ = torch.cuda.mem_get_info()
        limits = Limits(started + args.budget, args.compile_budget, int(free * 0.8), 0.2, 5, 200)
    if args.ceilings:
        ceilings(args.dry, args.dir / "rows.jsonl")
    cases = DRY_CASES if args.dry else GPU_CASES
    time_rows(cases, args.impls, args.dry, args.dir / "rows.jsonl", limits, "eager" if args.dry else "inductor")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
