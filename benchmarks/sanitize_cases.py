"""Small forward + backward runs of one backend (``cuda`` by default), checked against the reference.

Meant to run under NVIDIA compute-sanitizer (memcheck, racecheck, synccheck), so the cases are tiny
but cover every kernel: every inner/outer activation pair, a key mask with an all-false row, both
backward modes, a whole-clip shape (N, M ≤ 64) and a two-pass shape (N > 64), tails in H and R,
and the bf16/fp16 tensor-core and fp64 paths. ``--quick`` keeps one activation pair per path.
Exits with status 1 on any mismatch.

    compute-sanitizer --tool memcheck --kernel-name kns=global_relation --error-exitcode 1 \
        python benchmarks/sanitize_cases.py
"""

from __future__ import annotations

import argparse
import itertools
import sys

import torch

import fastrel
from fastrel import activations, reference

#: ‖out − ref‖ / ‖ref‖ always allowed per dtype; bf16/fp16 may also reach twice the error that the
#: reference itself makes when run in that dtype (the FlashAttention criterion).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 2e-3}

#: (B, N, M, H, R): one whole-clip shape, one shape that takes the row and key passes.
SHAPES = ((2, 20, 19, 40, 70), (2, 70, 33, 24, 20))


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _reference(inputs, key_mask, grad, inner: str, outer: str, dtype: torch.dtype) -> list[torch.Tensor]:
    """Output and gradients of the materialising reference, computed on the CPU in ``dtype``."""
    leaves = [t.to(dtype).requires_grad_() for t in inputs]
    out = reference.global_relation(*leaves[:3], leaves[3], inner=inner, outer=outer, key_mask=key_mask)
    return [out, *torch.autograd.grad(out, leaves, grad.to(dtype))]


def check(
    backend: str, device: str, shape, dtype, inner: str, outer: str, deterministic: bool, generator: torch.Generator
) -> bool:
    B, N, M, H, R = shape
    a = torch.randn(B, N, H, generator=generator, dtype=torch.float64)
    b = torch.randn(B, M, H, generator=generator, dtype=torch.float64)
    weight = torch.randn(R, H, generator=generator, dtype=torch.float64) / H**0.5
    bias = 0.5 * torch.randn(R, generator=generator, dtype=torch.float64)
    key_mask = torch.rand(B, M, generator=generator) > 0.3
    key_mask[-1] = False
    grad = torch.randn(B, N, R, generator=generator, dtype=torch.float64)
    inputs = [t.to(dtype) for t in (a, b, weight, bias)]  # the reference sees the rounded values

    leaves = [t.to(device).requires_grad_() for t in inputs]
    out = fastrel.global_relation(
        *leaves[:3],
        leaves[3],
        inner=inner,
        outer=outer,
        key_mask=key_mask.to(device),
        backend=backend,
        deterministic=deterministic,
    )
    grads = torch.autograd.grad(out, leaves, grad.to(dtype).to(device))

    ref = _reference(inputs, key_mask, grad.to(dtype), inner, outer, torch.float64)
    errors = [_relative_error(x, r) for x, r in zip((out, *grads), ref, strict=True)]
    allowed = [TOLERANCE[dtype]] * len(errors)
    if dtype in (torch.bfloat16, torch.float16):
        own = _reference(inputs, key_mask, grad.to(dtype), inner, outer, dtype)
        allowed = [max(t, 2 * _relative_error(x, r)) for t, x, r in zip(allowed, own, ref, strict=True)]
    ok = all(e <= t for e, t in zip(errors, allowed, strict=True))
    names = ("g", "da", "db", "dW", "dβ")
    print(
        f"{'ok  ' if ok else 'FAIL'} {shape} {str(dtype).removeprefix('torch.'):8s} {inner:10s} {outer:10s} "
        f"det={int(deterministic)} " + " ".join(f"{n} {e:.1e}" for n, e in zip(names, errors, strict=True))
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cuda", help="the backend checked (default cuda)")
    parser.add_argument("--quick", action="store_true", help="one activation pair per kernel path")
    args = parser.parse_args(argv)
    backend = fastrel.backends.get(args.backend)
    if backend.unavailable is not None:
        print(f"sanitize_cases: backend {args.backend!r} is unavailable: {backend.unavailable}")
        return 1
    device = "cuda" if "cuda" in backend.devices and torch.cuda.is_available() else "cpu"
    generator = torch.Generator().manual_seed(0)
    pairs = list(itertools.product(activations.INNER, activations.OUTER))
    cases = [(torch.float32, inner, outer, True) for inner, outer in (pairs[:1] if args.quick else pairs)]
    cases.append((torch.float32, "relu", "relu", False))
    if not args.quick:
        cases += [(torch.float64, "leaky_relu", "relu", True), (torch.float16, "abs", "leaky_relu", False)]
    cases += [(torch.bfloat16, "relu", "relu", True), (torch.bfloat16, "relu", "identity", True)]
    ok = True
    for shape in SHAPES:
        for dtype, inner, outer, deterministic in cases:
            if dtype in backend.dtypes:
                ok &= check(args.backend, device, shape, dtype, inner, outer, deterministic, generator)
    if device == "cuda":
        torch.cuda.synchronize()
    print("sanitize_cases: all cases match the reference" if ok else "sanitize_cases: MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
