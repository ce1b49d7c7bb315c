"""Random problems for global_relation and the comparison helpers the test files share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

import fastrel
from fastrel.backends import BACKENDS
from fastrel.kernels import interpreting

INTERPRETING = interpreting()


def device_for(name: str) -> str:
    """The device a backend is tested on: CUDA where it runs there and a GPU exists, else CPU."""
    devices = BACKENDS[name].devices
    if "cuda" in devices and (torch.cuda.is_available() or "cpu" not in devices):
        return "cuda"
    return "cpu"


def exact_dtype(name: str) -> torch.dtype:
    """float64 where the backend supports it (tight comparisons), else float32."""
    return torch.float64 if torch.float64 in BACKENDS[name].dtypes else torch.float32


def size_limit(name: str) -> int:
    """Largest N, M, H, R drawn for a backend; the Triton interpreter is slow, so it gets less."""
    return 12 if name == "triton" and INTERPRETING else 40


@dataclass(frozen=True)
class Problem:
    B: int
    N: int
    M: int
    H: int
    R: int
    inner: str = "relu"
    outer: str = "relu"
    mask: str = "none"  # none | ragged | empty_row
    bias: bool = True
    strided: bool = False
    ties: bool = False  # values on a coarse grid, so a_i == b_j and z == 0 occur
    seed: int = 0

    def tensors(self, dtype: torch.dtype = torch.float64, device: str = "cpu") -> dict:
        """a, b, weight, bias, key_mask and an upstream gradient, drawn from the seed."""
        g = torch.Generator().manual_seed(self.seed)

        def draw(*shape: int) -> torch.Tensor:
            if self.ties:
                return torch.randint(-2, 3, shape, generator=g).double() / 2
            return torch.randn(*shape, generator=g, dtype=torch.float64)

        a, b = draw(self.B, self.N, self.H), draw(self.B, self.M, self.H)
        weight = torch.randn(self.R, self.H, generator=g, dtype=torch.float64) / self.H**0.5
        bias = torch.randn(self.R, generator=g, dtype=torch.float64) if self.bias else None
        grad = torch.randn(self.B, self.N, self.R, generator=g, dtype=torch.float64)
        mask = None
        if self.mask != "none":
            mask = torch.rand(self.B, self.M, generator=g) < 0.6
            if self.mask == "empty_row":
                mask[0] = False
        out = dict(a=a, b=b, weight=weight, bias=bias, key_mask=mask, grad=grad)
        out = {k: (v.to(device=device, dtype=dtype) if v is not None and v.is_floating_point() else v)
               for k, v in out.items()}
        if out["key_mask"] is not None:
            out["key_mask"] = out["key_mask"].to(device)
        if self.strided:  # the same values, seen through non-contiguous views
            out["a"] = out["a"].transpose(1, 2).contiguous().transpose(1, 2)
            out["b"] = torch.stack([out["b"], out["b"]], dim=-1)[..., 0]
            out["weight"] = out["weight"].t().contiguous().t()
        return out


def run(
    problem: Problem, backend: Optional[str], dtype: torch.dtype, device: str, deterministic: Optional[bool] = None
) -> tuple[torch.Tensor, list[Optional[torch.Tensor]]]:
    """Forward and backward of one problem: the output and the gradients (a, b, weight, bias).

    ``backend=None`` calls fastrel.reference directly, with autograd's gradients: the oracle.
    """
    t = problem.tensors(dtype, device)
    leaves = [t[k].detach().requires_grad_() if t[k] is not None else None for k in ("a", "b", "weight", "bias")]
    options = dict(inner=problem.inner, outer=problem.outer, key_mask=t["key_mask"])
    if backend is None:
        out = fastrel.reference.global_relation(*leaves, **options)
    else:
        out = fastrel.global_relation(*leaves, **options, backend=backend, deterministic=deterministic)
    out.backward(t["grad"].to(out.dtype))
    return out.detach(), [leaf.grad if leaf is not None else None for leaf in leaves]


def rel_error(x: Optional[torch.Tensor], ref: Optional[torch.Tensor]) -> float:
    """‖x − ref‖ / ‖ref‖ in float64 (absolute when ref is zero); NaN anywhere is infinite error."""
    if x is None or ref is None:
        assert x is None and ref is None, "one gradient is missing"
        return 0.0
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    assert x.shape == ref.shape, f"shape {tuple(x.shape)} != {tuple(ref.shape)}"
    if not torch.isfinite(x).all():
        return float("inf")
    diff = (x - ref).norm().item()
    scale = ref.norm().item()
    return diff / scale if scale > 0 else diff
