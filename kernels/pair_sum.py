"""σ = identity (docs/math.md, "Exact fast paths"): the pair loop is an elementwise masked sum over
pairs, Σ_y w_y f(a_i − b_j), and the projection a dense product in torch."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastrel import activations
from fastrel.kernels import launch
from fastrel.kernels.activation import activation, derivative

Tensor = torch.Tensor


@triton.jit
def _pair_sum_kernel(
    own_ptr, loop_ptr, weight_ptr, out_ptr,
    N_OWN, N_LOOP, H,
    CODE: tl.constexpr, DERIVATIVE: tl.constexpr, OWN_IS_A: tl.constexpr, WEIGHT: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """out[x, h] = Σ_y w_y f(a_i − b_j)[h] with (i, j) = (x, y) or (y, x); f = δ or δ'.

    WEIGHT: 0 = none, 1 = partners filtered by the key mask m_y (B, N_LOOP), 2 = a vector weight
    per partner (B, N_LOOP, H). Grid axis 0 walks (batch element, block of owned items).
    """
    n_blocks = tl.cdiv(N_OWN, BLOCK_O)
    block = tl.program_id(0) % n_blocks
    bat = (tl.program_id(0) // n_blocks).to(tl.int64)
    h_tile = tl.program_id(1)
    x = block * BLOCK_O + tl.arange(0, BLOCK_O)
    h = h_tile * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = h < H
    own = tl.load(
        own_ptr + bat * N_OWN * H + x[:, None] * H + h[None, :],
        mask=(x < N_OWN)[:, None] & h_ok[None, :],
        other=0.0,
    ).to(ACC)
    acc = tl.zeros((BLOCK_O, BLOCK_H), dtype=ACC)
    for y0 in range(0, N_LOOP, BLOCK_L):
        y = y0 + tl.arange(0, BLOCK_L)
        y_ok = y < N_LOOP
        partner = tl.load(
            loop_ptr + bat * N_LOOP * H + y[:, None] * H + h[None, :],
            mask=y_ok[:, None] & h_ok[None, :],
            other=0.0,
        ).to(ACC)
        if OWN_IS_A:
            diff = own[:, None, :] - partner[None, :, :]
        else:
            diff = partner[None, :, :] - own[:, None, :]
        if DERIVATIVE:
            f = derivative(diff, CODE)
        else:
            f = activation(diff, CODE)
        if WEIGHT == 1:
            w = tl.load(weight_ptr + bat * N_LOOP + y, mask=y_ok, other=0.0).to(ACC)
            f = tl.where((w > 0)[None, :, None], f, 0.0)
        elif WEIGHT == 2:
            w = tl.load(
                weight_ptr + bat * N_LOOP * H + y[:, None] * H + h[None, :],
                mask=y_ok[:, None] & h_ok[None, :],
                other=0.0,
            ).to(ACC)
            f = f * w[None, :, :]
        acc += tl.sum(tl.where(y_ok[None, :, None], f, 0.0), axis=1)
    tl.store(
        out_ptr + bat * N_OWN * H + x[:, None] * H + h[None, :],
        acc,
        mask=(x < N_OWN)[:, None] & h_ok[None, :],
    )


#: (BLOCK_O, BLOCK_L) of the pair sum: a small set in one step, else a fixed tile.
_PAIR_SUM_TILE = (16, 16)
_PAIR_SUM_MAX_PAIRS = 128
_PAIR_SUM_MAX_H = 32


def pair_sum(own: Tensor, loop: Tensor, weight: Tensor | None, code: int, derivative: bool, own_is_a: bool) -> Tensor:
    """Σ over partners of f(a_i − b_j) per owned item and channel, weighted (see _pair_sum_kernel)."""
    B, n_own, H = own.shape
    n_loop = loop.shape[1]
    acc, acc_tl = launch.acc_dtypes(own.dtype)
    out = torch.empty(B, n_own, H, dtype=acc, device=own.device)
    if out.numel() == 0:
        return out.zero_()
    kind = 0 if weight is None else (1 if weight.dim() == 2 else 2)
    o, l = launch.pow2(n_own, 1), launch.pow2(n_loop, 1)
    if o * l > _PAIR_SUM_MAX_PAIRS:
        o, l = _PAIR_SUM_TILE
    block_h = min(launch.pow2(H, 1), _PAIR_SUM_MAX_H)
    grid = (B * triton.cdiv(n_own, o), triton.cdiv(H, block_h))
    with launch.on_device(own):
        _pair_sum_kernel[grid](
            own, loop, weight if weight is not None else own, out, n_own, n_loop, H,
            CODE=code, DERIVATIVE=derivative, OWN_IS_A=own_is_a, WEIGHT=kind, ACC=acc_tl,
            BLOCK_O=o, BLOCK_L=l, BLOCK_H=block_h, num_warps=launch.PAIR_SUM_WARPS,
        )  # fmt: skip
    return out


def identity_forward(a, b, weight, bias, m, inv_count, inner) -> Tensor:
    """σ = identity: g_i = (W_r mean_j δ(a_i − b_j) + β_r) · [row has a valid key]."""
    mean = pair_sum(a, b, m, activations.CODES[inner], False, True) * inv_count[:, None, None]
    g = mean @ weight.to(mean.dtype).t()
    if bias is not None:
        g = g + bias.to(mean.dtype) * has_keys(m, inv_count, b.shape[1])[:, None, None]
    return g.to(a.dtype)


def identity_backward(grad, a, b, weight, m, inv_count, inner):
    """σ = identity: with v_i = W_rᵀ G_i / n, da_i = v_i ⊙ Σ_j m_j δ'(a_i − b_j),
    db_j = −m_j Σ_i v_i ⊙ δ'(a_i − b_j), dW_r = Σ_i G_i D_iᵀ, dβ_r = Σ_i G_i [row has keys]."""
    code = activations.CODES[inner]
    dg = grad.to(inv_count.dtype)
    v = (dg @ weight.to(dg.dtype)) * inv_count[:, None, None]
    da = v * pair_sum(a, b, m, code, True, True)
    db = -pair_sum(b, a, v, code, True, False)
    if m is not None:
        db = db * m[:, :, None]
    mean = pair_sum(a, b, m, code, False, True) * inv_count[:, None, None]
    dweight = torch.einsum("bnr,bnh->rh", dg, mean)
    dbias = (dg * has_keys(m, inv_count, b.shape[1])[:, None, None]).sum(dim=(0, 1))
    return da.to(a.dtype), db.to(b.dtype), dweight.to(weight.dtype), dbias.to(weight.dtype)


def has_keys(m: Tensor | None, inv_count: Tensor, M: int) -> Tensor:
    """1 per batch element with at least one valid key, else 0 (accumulation dtype)."""
    if m is None:
        return torch.full_like(inv_count, 1.0 if M > 0 else 0.0)
    return (m.sum(dim=1) > 0).to(inv_count.dtype)
