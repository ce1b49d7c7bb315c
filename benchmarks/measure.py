"""Measuring helpers shared by the benchmark scripts: call times, peak memory of one call, the
device's matmul and copy ceilings, the machine's name, and the FLOP count of ``global_relation``.

CPU memory is the growth of the process's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs``; Linux); CUDA memory is ``torch.cuda.max_memory_allocated`` above what
was allocated before the call.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import re
import statistics
import time
from collections.abc import Callable

import torch

#: A forward plus backward costs 4 forwards: the backward recomputes z and forms dW and W_rᵀdz,
#: three GEMMs of the forward's size (benchmarks/RESULTS.md, "Floors").
FWDBWD_FLOP_FACTOR = 4.0
#: Timed calls made even when the time limit is near (a median of fewer would mean little).
MIN_TIMED = 3


def global_relation_flops(B: int, N: int, M: int, H: int, R: int, mode: str) -> float:
    """FLOPs counted for one call: 2·B·N·M·H·R per forward, 4× that for forward + backward."""
    return 2.0 * B * N * M * H * R * (FWDBWD_FLOP_FACTOR if mode == "fwdbwd" else 1.0)


# ----------------------------------------------------------------------------------------------
# Memory


def status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM)."""
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE).group(1))


def reset_peak_rss() -> bool:
    """Make the kernel's peak-RSS mark start again from the current RSS (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so the RSS baseline is what is live."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_peak_bytes(call: Callable[[], object]) -> int:
    """Peak RSS growth during ``call``: freed heap returned to the OS, VmHWM reset, then read."""
    release_freed_memory()
    baseline = status_kib("VmRSS")
    reset_peak_rss()
    call()
    return max(status_kib("VmHWM") - baseline, 0) * 1024


def cuda_peak_bytes(call: Callable[[], object]) -> int:
    """Peak CUDA memory allocated during ``call`` above what was allocated before it."""
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    call()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - baseline


def peak_bytes(call: Callable[[], object], device: str) -> int:
    return cuda_peak_bytes(call) if device == "cuda" else cpu_peak_bytes(call)


# ----------------------------------------------------------------------------------------------
# Time


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def host_seconds(call: Callable[[], object], device: str, repeats: int = 5) -> float:
    """Median seconds the host takes to issue one call, the device idle before it: near the call's
    time, the call is bound by the host (Python, dispatch, launches), not by its kernels."""
    times = []
    for _ in range(repeats):
        sync(device)
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
        sync(device)
    return statistics.median(times)


def call_seconds(call: Callable[[], object], device: str) -> float:
    """Seconds of one call: CUDA events around it on CUDA, the wall clock on CPU."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    call()
    return time.perf_counter() - begin


def stream_seconds(call: Callable[[], object], device: str, calls: int) -> float:
    """Seconds per call of ``calls`` calls issued back to back after one more, the host free to run
    ahead of the device as in a training loop: the device's time per call where the host keeps up
    (each call's host preparation hidden behind the kernels before it), else the host's. call_seconds
    instead starts each call on an idle device, so it also counts the host's preparation before the
    first launch."""
    if device != "cuda":
        begin = time.perf_counter()
        for _ in range(calls):
            call()
        return (time.perf_counter() - begin) / calls
    call()  # keeps the device busy while the host issues the first timed call
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        call()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / calls


def repeat_seconds(
    call: Callable[[], object],
    device: str,
    min_time: float,
    min_repeats: int,
    max_repeats: int,
    deadline: float,
) -> list[float]:
    """Times of repeated calls: at least ``min_repeats`` and ``min_time`` seconds in total, stopping
    early (after ``MIN_TIMED`` calls) when the next call would end past ``deadline`` (perf_counter)."""
    times: list[float] = []
    while len(times) < max_repeats:
        times.append(call_seconds(call, device))
        enough = len(times) >= min_repeats and sum(times) >= min_time
        late = time.perf_counter() + statistics.median(times) > deadline
        if enough or (len(times) >= MIN_TIMED and late):
            break
    return times


def summarise(times: list[float]) -> dict:
    """Median and quartiles in milliseconds, and the number of timed calls."""
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {
        "time_ms": statistics.median(times) * 1e3,
        "time_p25_ms": quartiles[0] * 1e3,
        "time_p75_ms": quartiles[2] * 1e3,
        "repeats": len(times),
    }


# ----------------------------------------------------------------------------------------------
# The device's ceilings


def matmul_peak_tflops(device: str, dtype: torch.dtype, size: int | None = None, seconds: float = 10.0) -> float:
    """Measured rate of a large square matmul on random operands (not zeros, which run faster)."""
    size = size or (8192 if device == "cuda" else 1024)
    x = torch.randn(size, size, device=device).to(dtype)
    y = torch.randn(size, size, device=device).to(dtype)
    for _ in range(3):
        torch.matmul(x, y)
    times = repeat_seconds(lambda: torch.matmul(x, y), device, 0.5, 5, 200, time.perf_counter() + seconds)
    return 2 * size**3 / statistics.median(times) / 1e12


def copy_bandwidth_gbs(device: str, mib: int | None = None, seconds: float = 5.0) -> float:
    """Measured copy bandwidth within the device, counting bytes read plus bytes written."""
    mib = mib or (2048 if device == "cuda" else 64)
    source = torch.empty(mib << 20, dtype=torch.uint8, device=device).fill_(1)
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    times = repeat_seconds(lambda: target.copy_(source), device, 0.5, 5, 200, time.perf_counter() + seconds)
    return 2 * source.numel() / statistics.median(times) / 1e9


def machine(device: str) -> str:
    """The GPU's name on CUDA; the CPU model and core count otherwise."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = re.search(r"^model name\s*:\s*(.+)$", info.read(), re.MULTILINE).group(1)
    except (OSError, AttributeError):
        pass
    return f"{model}, {os.cpu_count()} cores"
