"""Where the host's time goes in one ``fastrel.global_relation`` forward and backward: RGTR clips
run far shorter kernels than the time the host takes to issue them (benchmarks/RESULTS.md).

    PYTHONPATH=. python3 benchmarks/host_profile.py [--backend triton] [--dtype bfloat16] [--calls 50]

Prints the host's time per call in stages (the forward through fastrel, the backward through
autograd, the Triton module's forward and backward alone) with the device idle before each, then
over ``--calls`` calls the host time of each op and runtime call (torch.profiler: a launch that
waits shows here) and the Python functions that take the most (cProfile, own time and
cumulative). On a CPU (with TRITON_INTERPRET=1) the kernels themselves run on the host, so only
the ranking of fastrel's own Python means anything there.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys

import gpu_check
import measure
import torch
from timed_case import Case
from torch.profiler import ProfilerActivity
from torch.profiler import profile as torch_profile

import fastrel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="triton")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=576, help="clips")
    parser.add_argument("--frames", type=int, default=8, help="T")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    case = Case("clips", args.batch, args.frames, args.frames, 256, 128, masked=True)
    t = gpu_check.make_inputs(case, getattr(torch, args.dtype), device)
    leaves = [t[k].detach().requires_grad_() for k in ("a", "b", "weight", "bias")]

    def forward():
        return fastrel.global_relation(*leaves, key_mask=t["key_mask"], backend=args.backend)

    def step():
        torch.autograd.grad(forward(), leaves, t["grad"])

    stages = {"forward and backward": step, "forward": forward}
    if args.backend == "triton":
        from fastrel.kernels import global_relation as kernels

        plain = [x.detach() for x in leaves] + [t["key_mask"], "relu", "relu"]
        stages["kernels module forward"] = lambda: kernels.forward(*plain)
        stages["kernels module backward"] = lambda: kernels.backward(t["grad"], *plain, False)
    for call in stages.values():  # compile and autotune first
        call()
    measure.sync(device)
    print(f"{case} {args.dtype} {args.backend} on {device}")
    for name, call in stages.items():
        print(f"  host ms, {name:26s} {measure.host_seconds(call, device, repeats=21) * 1e3:8.3f}")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch_profile(activities=activities) as ops:
        for _ in range(args.calls):
            step()
        measure.sync(device)
    print(f"\n--- {args.calls} calls of forward and backward: host time per op and runtime call")
    print(ops.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(args.calls):
        step()
    measure.sync(device)
    profile.disable()
    stats = pstats.Stats(profile, stream=sys.stdout)
    for order in ("tottime", "cumulative"):
        print(f"\n--- {args.calls} calls of forward and backward, by {order}")
        stats.sort_stats(order).print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
