"""Triton kernels for ``global_relation``: fused forward, recompute-in-backward, identity fast path.

Layout. A program owns a small block of ``BLOCK_O`` items (query rows i in the forward and the
row pass, keys j in the column pass) and loops over tiles of ``BLOCK_L`` partners. The
``BLOCK_O x BLOCK_L`` pairs of one step are flattened into the M dimension of a GEMM
(``BLOCK_P = BLOCK_O * BLOCK_L`` rows, pair p = (p // BLOCK_L, p % BLOCK_L)): the owned and the
partner rows are loaded once per step, broadcast against each other and reshaped, so the
difference tile ``δ(a_i − b_j)`` is a plain (BLOCK_P, BLOCK_H) matrix formed in registers, and the
projection is one ``tl.dot`` with ``W_rᵀ``. Only a few rows per program keep the per-row
accumulators small (the backward keeps a full-H gradient row per owned item in registers) while
the flattened pair dimension still fills the tensor cores.
Two regimes share the kernels: a small set (an RGTR clip of up to 8 frames, at most 128 pairs;
64 in the backward) is one tile, so one program covers the clip in one step; larger sets (RGSA
maps, long tracklets with key masks) loop over autotuned tiles. No (i, j) tile reaches memory.

Forward: z = δ(a_i − b_j) W_rᵀ (K-loop over H) + β_r, r = σ(z), masked and accumulated per pair
slot in fp32; the slots are folded to rows (reshape + sum over the partner axis) once at the end.

Backward (DESIGN §1) recomputes the tiles. The row pass owns rows: dz = m σ'(z) dG/n,
dp = dz W_r, du = δ'(a − b) ⊙ dp, da = Σ_j du, and dW_r += dzᵀ p, dβ_r += Σ dz. The column pass
owns keys and produces db = −Σ_i du (five GEMMs of the forward's size in all, against one for
the forward); with no atomics the backward is bitwise reproducible. When determinism is not
asked for, the row pass adds db with atomics instead and the column pass is skipped (three GEMMs).
R is split into tiles of ``BLOCK_R`` across programs; each tile contributes a partial da/db
(the derivative factor is elementwise, so partials over R tiles add up) and the weight gradients
go through per-program fp32 partials; the host sums the partials in a fixed order.

σ = identity leaves the pair loop: g_i = W_r mean_j δ(a_i − b_j) + β_r. The pair loop is then an
elementwise masked sum over pairs (``_pair_sum_kernel``), the projection a dense GEMM in torch.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from fastrel import activations

Tensor = torch.Tensor

LEAKY_SLOPE: tl.constexpr = tl.constexpr(activations.LEAKY_SLOPE)
RELU: tl.constexpr = tl.constexpr(activations.CODES["relu"])
LEAKY_RELU: tl.constexpr = tl.constexpr(activations.CODES["leaky_relu"])
ABS: tl.constexpr = tl.constexpr(activations.CODES["abs"])


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# --------------------------------------------------------------------------------------------
# Activations (codes shared with fastrel.activations; kink conventions relu'(0) = abs'(0) = 0,
# leaky_relu'(0) = slope).


@triton.jit
def _activation(x, CODE: tl.constexpr):
    if CODE == RELU:
        y = tl.where(x > 0, x, tl.zeros(x.shape, x.dtype))
    elif CODE == LEAKY_RELU:
        y = tl.where(x > 0, x, x * tl.full(x.shape, LEAKY_SLOPE, x.dtype))
    elif CODE == ABS:
        y = tl.abs(x)
    else:
        y = x
    return y


@triton.jit
def _derivative(x, CODE: tl.constexpr):
    """Constants are built in x's dtype: a float literal would be rounded to fp32 first."""
    one = tl.full(x.shape, 1.0, x.dtype)
    zero = tl.zeros(x.shape, x.dtype)
    if CODE == RELU:
        y = tl.where(x > 0, one, zero)
    elif CODE == LEAKY_RELU:
        y = tl.where(x > 0, one, tl.full(x.shape, LEAKY_SLOPE, x.dtype))
    elif CODE == ABS:
        y = tl.where(x > 0, one, tl.where(x < 0, -one, zero))
    else:
        y = one
    return y


# --------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _forward_kernel(
    a_ptr, b_ptr, w_ptr, bias_ptr, mask_ptr, inv_count_ptr, g_ptr,
    N, M, H, R,
    INNER: tl.constexpr, OUTER: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    ACC: tl.constexpr, DIFF: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """g[bat, rows, r-tile] for one block of BLOCK_O rows and one tile of BLOCK_R outputs."""
    BLOCK_P: tl.constexpr = BLOCK_O * BLOCK_L
    row_block = tl.program_id(0)
    r_tile = tl.program_id(1)
    bat = tl.program_id(2).to(tl.int64)
    io_dtype = w_ptr.dtype.element_ty

    own = row_block * BLOCK_O + tl.arange(0, BLOCK_O)
    own_ok = own < N
    r = r_tile * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < R
    if HAS_BIAS:
        bias = tl.load(bias_ptr + r, mask=r_ok, other=0.0).to(ACC)

    acc = tl.zeros((BLOCK_P, BLOCK_R), dtype=ACC)
    for j0 in range(0, M, BLOCK_L):
        cols = j0 + tl.arange(0, BLOCK_L)
        cols_ok = cols < M
        z = tl.zeros((BLOCK_P, BLOCK_R), dtype=ACC)
        for h0 in range(0, H, BLOCK_H):
            h = h0 + tl.arange(0, BLOCK_H)
            h_ok = h < H
            av = tl.load(
                a_ptr + (bat * N + own[:, None]) * H + h[None, :], mask=own_ok[:, None] & h_ok[None, :], other=0.0
            )
            bv = tl.load(
                b_ptr + (bat * M + cols[:, None]) * H + h[None, :], mask=cols_ok[:, None] & h_ok[None, :], other=0.0
            )
            diff = av.to(DIFF)[:, None, :] - bv.to(DIFF)[None, :, :]
            p = tl.reshape(_activation(diff, INNER), (BLOCK_P, BLOCK_H)).to(io_dtype).to(DOT)
            wt = tl.load(w_ptr + r[None, :] * H + h[:, None], mask=r_ok[None, :] & h_ok[:, None], other=0.0).to(DOT)
            z = tl.dot(p, wt, z, input_precision=PRECISION, out_dtype=ACC)
        if HAS_BIAS:
            z += bias[None, :]
        if HAS_MASK:
            cols_ok &= tl.load(mask_ptr + bat * M + cols, mask=cols_ok, other=0.0) > 0
        valid = tl.reshape(tl.broadcast_to(cols_ok[None, :], (BLOCK_O, BLOCK_L)), (BLOCK_P,))
        acc += tl.where(valid[:, None], _activation(z, OUTER), 0.0)

    g = tl.sum(tl.reshape(acc, (BLOCK_O, BLOCK_L, BLOCK_R)), axis=1) * tl.load(inv_count_ptr + bat)
    tl.store(
        g_ptr + (bat * N + own[:, None]) * R + r[None, :],
        g.to(g_ptr.dtype.element_ty),
        mask=own_ok[:, None] & r_ok[None, :],
    )


@triton.jit
def _backward_kernel(
    a_ptr, b_ptr, w_ptr, bias_ptr, mask_ptr, inv_count_ptr, grad_ptr,
    dx_part_ptr, dw_part_ptr, dbias_part_ptr, db_ptr,
    B, N, M, H, R,
    OWN_KEYS: tl.constexpr, ATOMIC_DB: tl.constexpr,
    INNER: tl.constexpr, OUTER: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """One R tile of the gradient of the items this program owns.

    Row pass (OWN_KEYS=False): owned items are rows i; writes da partials (n_rt, B, N, H) and this
    program's dW_r / dβ_r partials, slots (programs, R, H) / (programs, R).
    Column pass (OWN_KEYS=True): owned items are keys j; writes db partials (n_rt, B, M, H).
    ATOMIC_DB (row pass only) also adds each tile's −Σ_i du into db (B, M, H) with atomics, which
    replaces the column pass when reproducibility is not asked for.
    Program (g, r_tile) handles the work items g, g + programs, ... where a work item is one
    block of BLOCK_O owned items of one batch element. BLOCK_H covers all of H, so the gradient
    rows of the owned items stay in registers across the partner loop.
    """
    BLOCK_P: tl.constexpr = BLOCK_O * BLOCK_L
    program = tl.program_id(0)
    programs = tl.num_programs(0)
    r_tile = tl.program_id(1)
    io_dtype = w_ptr.dtype.element_ty
    if OWN_KEYS:
        n_own = M
        n_loop = N
    else:
        n_own = N
        n_loop = M

    h = tl.arange(0, BLOCK_H)
    h_ok = h < H
    r = r_tile * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < R
    w_tile_ptrs = w_ptr + r[:, None] * H + h[None, :]
    w_tile_mask = r_ok[:, None] & h_ok[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + r, mask=r_ok, other=0.0).to(ACC)
    if not OWN_KEYS:
        dw_acc = tl.zeros((BLOCK_R, BLOCK_H), dtype=ACC)
        dbias_acc = tl.zeros((BLOCK_R,), dtype=ACC)

    n_blocks = tl.cdiv(n_own, BLOCK_O)
    for item in range(program, B * n_blocks, programs):
        bat = (item // n_blocks).to(tl.int64)
        block = item % n_blocks
        inv_count = tl.load(inv_count_ptr + bat)
        own = block * BLOCK_O + tl.arange(0, BLOCK_O)
        own_ok = own < n_own
        if OWN_KEYS:
            own_v = tl.load(
                b_ptr + (bat * M + own[:, None]) * H + h[None, :], mask=own_ok[:, None] & h_ok[None, :], other=0.0
            )
            if HAS_MASK:
                own_ok &= tl.load(mask_ptr + bat * M + own, mask=own_ok, other=0.0) > 0
        else:
            own_v = tl.load(
                a_ptr + (bat * N + own[:, None]) * H + h[None, :], mask=own_ok[:, None] & h_ok[None, :], other=0.0
            )
            dg_own = tl.load(
                grad_ptr + (bat * N + own[:, None]) * R + r[None, :], mask=own_ok[:, None] & r_ok[None, :], other=0.0
            )
        own_v = own_v.to(ACC)
        dx_acc = tl.zeros((BLOCK_O, BLOCK_H), dtype=ACC)
        for l0 in range(0, n_loop, BLOCK_L):
            other = l0 + tl.arange(0, BLOCK_L)
            other_ok = other < n_loop
            if OWN_KEYS:
                other_v = tl.load(
                    a_ptr + (bat * N + other[:, None]) * H + h[None, :],
                    mask=other_ok[:, None] & h_ok[None, :],
                    other=0.0,
                ).to(ACC)
                diff3 = other_v[None, :, :] - own_v[:, None, :]
                dg_other = tl.load(
                    grad_ptr + (bat * N + other[:, None]) * R + r[None, :],
                    mask=other_ok[:, None] & r_ok[None, :],
                    other=0.0,
                )
                dg3 = tl.broadcast_to(dg_other[None, :, :], (BLOCK_O, BLOCK_L, BLOCK_R))
            else:
                other_v = tl.load(
                    b_ptr + (bat * M + other[:, None]) * H + h[None, :],
                    mask=other_ok[:, None] & h_ok[None, :],
                    other=0.0,
                ).to(ACC)
                diff3 = own_v[:, None, :] - other_v[None, :, :]
                if HAS_MASK:
                    other_ok &= tl.load(mask_ptr + bat * M + other, mask=other_ok, other=0.0) > 0
                dg3 = tl.broadcast_to(dg_own[:, None, :], (BLOCK_O, BLOCK_L, BLOCK_R))
            diff = tl.reshape(diff3, (BLOCK_P, BLOCK_H))
            dg = tl.reshape(dg3, (BLOCK_P, BLOCK_R))
            valid = tl.reshape(own_ok[:, None] & other_ok[None, :], (BLOCK_P,))
            p = _activation(diff, INNER).to(io_dtype).to(DOT)
            w_tile = tl.load(w_tile_ptrs, mask=w_tile_mask, other=0.0).to(DOT)
            z = tl.dot(p, tl.trans(w_tile), input_precision=PRECISION, out_dtype=ACC)
            if HAS_BIAS:
                z += bias[None, :]
            dz = tl.where(valid[:, None], _derivative(z, OUTER) * dg.to(ACC) * inv_count, 0.0)
            dz_dot = dz.to(io_dtype).to(DOT)
            dp = tl.dot(dz_dot, w_tile, input_precision=PRECISION, out_dtype=ACC)
            du = tl.reshape(_derivative(diff, INNER) * dp, (BLOCK_O, BLOCK_L, BLOCK_H))
            dx_acc += tl.sum(du, axis=1)
            if not OWN_KEYS:
                dw_acc = tl.dot(tl.trans(dz_dot), p, dw_acc, input_precision=PRECISION, out_dtype=ACC)
                dbias_acc += tl.sum(dz, axis=0)
                if ATOMIC_DB:
                    tl.atomic_add(
                        db_ptr + (bat * M + other[:, None]) * H + h[None, :],
                        -tl.sum(du, axis=0),
                        mask=(other < M)[:, None] & h_ok[None, :],
                    )
        if OWN_KEYS:
            dx_acc = -dx_acc
        tl.store(
            dx_part_ptr + ((r_tile * B + bat) * n_own + own[:, None]) * H + h[None, :],
            dx_acc,
            mask=(own < n_own)[:, None] & h_ok[None, :],
        )
    if not OWN_KEYS:
        tl.store(dw_part_ptr + (program * R + r[:, None]) * H + h[None, :], dw_acc, mask=w_tile_mask)
        tl.store(dbias_part_ptr + program * R + r, dbias_acc, mask=r_ok)


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
    per partner (B, N_LOOP, H).
    """
    block = tl.program_id(0)
    h_tile = tl.program_id(1)
    bat = tl.program_id(2).to(tl.int64)
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
            f = _derivative(diff, CODE)
        else:
            f = _activation(diff, CODE)
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


# --------------------------------------------------------------------------------------------
# Launch configurations. Under the interpreter: small fixed tiles. On a GPU: the pair tile and
# pipelining are autotuned per (N, M, H, R, dtypes); the H and R tiles follow from H and R.


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(max(int(n), 1)))


def _small_tile(n_own: int, n_loop: int, max_pairs: int) -> tuple[int, int] | None:
    """(BLOCK_O, BLOCK_L) covering a whole small set (a clip of frames) in one step, else None."""
    o, l = _pow2(n_own, 1), _pow2(n_loop, 1)
    if o * l > max_pairs:
        return None
    return o, max(l, 16 // o)


#: (BLOCK_O, BLOCK_L, num_warps, num_stages). The forward's tiles (BLOCK_H 64, BLOCK_R 64) are
#: those that ptxas compiles for sm_90 without register spills.
_FORWARD_TILES = [(4, 16, 8, 3), (2, 32, 8, 3), (4, 32, 8, 3), (8, 16, 8, 3), (4, 16, 8, 2)]
#: The backward keeps whole H rows in registers; with BLOCK_R 32 these tiles spill least
#: (none at H 128, a few hundred bytes at H 256).
_BACKWARD_TILES = [(2, 8, 8, 2), (1, 16, 4, 2), (2, 16, 8, 2), (4, 8, 8, 2), (2, 16, 4, 2)]
#: Tiles used without autotuning (the interpreter, FASTREL_TRITON_AUTOTUNE=0).
_FORWARD_FIXED = (4, 8, 4, 2) if interpreting() else (4, 16, 8, 3)
_BACKWARD_FIXED = (4, 8, 4, 2) if interpreting() else (2, 8, 8, 2)


def _zero_atomic_db(nargs: dict) -> None:
    """Before every autotuning trial and the final run: atomics accumulate into db."""
    if nargs.get("ATOMIC_DB"):
        nargs["db_ptr"].zero_()


def _configs(tiles: list[tuple[int, int, int, int]], pre_hook=None) -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_O": o, "BLOCK_L": l}, num_warps=w, num_stages=s, pre_hook=pre_hook)
        for o, l, w, s in tiles
    ]


_forward_tuned = triton.autotune(configs=_configs(_FORWARD_TILES), key=["N", "M", "H", "R"])(_forward_kernel)
_backward_tuned = triton.autotune(
    configs=_configs(_BACKWARD_TILES, _zero_atomic_db), key=["N", "M", "H", "R", "OWN_KEYS", "ATOMIC_DB"]
)(_backward_kernel)


def autotuning() -> bool:
    """Autotune on GPUs unless FASTREL_TRITON_AUTOTUNE=0 (tests: one fixed tile, fewer compilations)."""
    return not interpreting() and os.environ.get("FASTREL_TRITON_AUTOTUNE", "1") != "0"


def _launch(kernel, tuned, grid, tile: tuple[int, int] | None, fixed: tuple[int, int, int, int], args, meta) -> None:
    """Run ``kernel`` with the imposed pair tile, else autotuned, else with the ``fixed`` tile
    (BLOCK_O, BLOCK_L, num_warps, num_stages)."""
    if tile is None and autotuning():
        tuned[grid](*args, **meta)
        return
    o, l, warps, stages = fixed if tile is None else (*tile, fixed[2], fixed[3])
    kernel[grid](*args, BLOCK_O=o, BLOCK_L=l, num_warps=warps, num_stages=stages, **meta)


@functools.cache
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _row_pass_programs(a: Tensor) -> int:
    """How many programs share the row pass (each keeps one dW_r partial)."""
    if interpreting() or a.device.type != "cuda":
        return 3
    return 2 * _multiprocessors(a.device.index if a.device.index is not None else torch.cuda.current_device())


# --------------------------------------------------------------------------------------------
# Host functions (called by fastrel.backends.triton)


def _acc_dtypes(dtype: torch.dtype) -> tuple[torch.dtype, tl.dtype]:
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def _dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """Operand dtype of tl.dot: the input dtype. The interpreter mishandles bf16 dots, so there the
    operands are rounded to bf16 and multiplied in fp32, which gives the same products."""
    if dtype == torch.bfloat16 and interpreting():
        return tl.float32
    return {torch.float64: tl.float64, torch.float32: tl.float32, torch.bfloat16: tl.bfloat16}.get(dtype, tl.float16)


def _diff_dtype(dtype: torch.dtype, inner: str) -> tl.dtype:
    """Dtype of a_i − b_j in the forward: bf16/fp16 on GPUs (packed half arithmetic; the GEMM
    operand is rounded to half precision either way), else fp32/fp64. leaky_relu keeps fp32 so
    that its slope is not rounded to half precision."""
    if dtype in (torch.bfloat16, torch.float16) and not interpreting() and inner != "leaky_relu":
        return _dot_dtype(dtype)
    return _acc_dtypes(dtype)[1]


def _precision(dtype: torch.dtype) -> str:
    """Full fp32 unless the user allowed TF32 for matmuls; half types ignore the setting."""
    if dtype == torch.float64 or (dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32):
        return "ieee"
    return "tf32"


def _pair_meta(a: Tensor, bias: Tensor | None, m: Tensor | None, inner: str, outer: str) -> dict:
    """Compile-time constants the forward and backward pair kernels share."""
    return dict(
        INNER=activations.CODES[inner],
        OUTER=activations.CODES[outer],
        HAS_BIAS=bias is not None,
        HAS_MASK=m is not None,
        ACC=_acc_dtypes(a.dtype)[1],
        DOT=_dot_dtype(a.dtype),
        PRECISION=_precision(a.dtype),
    )


def _key_weights(key_mask: Tensor | None, a: Tensor, M: int) -> tuple[Tensor | None, Tensor]:
    """(m as 0/1 in the accumulation dtype or None, 1 / max(Σ_j m_j, 1) per batch element)."""
    acc, _ = _acc_dtypes(a.dtype)
    if key_mask is None:
        return None, torch.full((a.shape[0],), 1.0 / max(M, 1), dtype=acc, device=a.device)
    m = key_mask.to(acc)
    return m, 1.0 / m.sum(dim=1).clamp(min=1)


def _pair_sum(own: Tensor, loop: Tensor, weight: Tensor | None, code: int, derivative: bool, own_is_a: bool) -> Tensor:
    """Σ over partners of f(a_i − b_j) per owned item and channel, weighted (see _pair_sum_kernel)."""
    B, n_own, H = own.shape
    n_loop = loop.shape[1]
    acc, acc_tl = _acc_dtypes(own.dtype)
    out = torch.empty(B, n_own, H, dtype=acc, device=own.device)
    if out.numel() == 0:
        return out.zero_()
    kind = 0 if weight is None else (1 if weight.dim() == 2 else 2)
    tile = _small_tile(n_own, n_loop, 128) or ((8, 16) if interpreting() else (16, 16))
    block_h = min(_pow2(H, 1), 32)
    grid = (triton.cdiv(n_own, tile[0]), triton.cdiv(H, block_h), B)
    _pair_sum_kernel[grid](
        own,
        loop,
        weight if weight is not None else own,
        out,
        n_own,
        n_loop,
        H,
        CODE=code,
        DERIVATIVE=derivative,
        OWN_IS_A=own_is_a,
        WEIGHT=kind,
        ACC=acc_tl,
        BLOCK_O=tile[0],
        BLOCK_L=tile[1],
        BLOCK_H=block_h,
        num_warps=4,
    )
    return out


def forward(
    a: Tensor, b: Tensor, weight: Tensor, bias: Tensor | None, key_mask: Tensor | None, inner: str, outer: str
) -> Tensor:
    """g (B, N, R) in a's dtype; inputs contiguous, weight/bias in a's dtype, key_mask bool or None."""
    B, N, H = a.shape
    M, R = b.shape[1], weight.shape[0]
    m, inv_count = _key_weights(key_mask, a, M)
    if outer == "identity":
        return _identity_forward(a, b, weight, bias, m, inv_count, inner)
    g = torch.empty(B, N, R, dtype=a.dtype, device=a.device)
    if g.numel() == 0:
        return g
    block_r = min(_pow2(R), 32 if interpreting() else 64)
    block_h = min(_pow2(H), 32 if interpreting() else 64)
    tile = _small_tile(N, M, 128)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_O"]), triton.cdiv(R, block_r), B)

    args = (
        a,
        b,
        weight,
        bias if bias is not None else weight,
        m if m is not None else inv_count,
        inv_count,
        g,
        N,
        M,
        H,
        R,
    )
    meta = dict(
        _pair_meta(a, bias, m, inner, outer), DIFF=_diff_dtype(a.dtype, inner), BLOCK_H=block_h, BLOCK_R=block_r
    )
    _launch(_forward_kernel, _forward_tuned, grid, tile, _FORWARD_FIXED, args, meta)
    return g


def backward(
    grad: Tensor,
    a: Tensor,
    b: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    key_mask: Tensor | None,
    inner: str,
    outer: str,
    deterministic: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(da, db, dweight, dbias). Deterministic: a row pass (da, dW_r, dβ_r) and a column pass (db),
    every reduction in a fixed order, so the result is bitwise reproducible. Otherwise the row pass
    also adds db with atomics and the column pass is skipped. σ = identity is always reproducible."""
    B, N, H = a.shape
    M, R = b.shape[1], weight.shape[0]
    m, inv_count = _key_weights(key_mask, a, M)
    if outer == "identity":
        return _identity_backward(grad, a, b, weight, m, inv_count, inner)
    acc, _ = _acc_dtypes(a.dtype)
    if B * N * M * H * R == 0:
        return (torch.zeros_like(a), torch.zeros_like(b), torch.zeros_like(weight), weight.new_zeros(R))
    block_r = min(_pow2(R), 32)
    block_h = _pow2(H)
    n_rt = triton.cdiv(R, block_r)
    programs = min(_row_pass_programs(a), B * N)
    da_part = torch.empty(n_rt, B, N, H, dtype=acc, device=a.device)
    db_part = torch.empty(n_rt, B, M, H, dtype=acc, device=a.device) if deterministic else None
    db_atomic = None if deterministic else torch.zeros(B, M, H, dtype=acc, device=a.device)
    dw_part = torch.empty(programs, R, H, dtype=acc, device=a.device)
    dbias_part = torch.empty(programs, R, dtype=acc, device=a.device)
    meta = dict(_pair_meta(a, bias, m, inner, outer), BLOCK_H=block_h, BLOCK_R=block_r)
    inputs = (
        a,
        b,
        weight,
        bias if bias is not None else weight,
        m if m is not None else inv_count,
        inv_count,
        grad,
    )

    rows_tile = _small_tile(N, M, 64)
    _launch(
        _backward_kernel,
        _backward_tuned,
        (programs, n_rt),
        rows_tile,
        _BACKWARD_FIXED,
        (*inputs, da_part, dw_part, dbias_part, db_atomic if db_atomic is not None else da_part, B, N, M, H, R),
        dict(meta, OWN_KEYS=False, ATOMIC_DB=not deterministic),
    )
    da = da_part.sum(dim=0).to(a.dtype)
    dweight, dbias = dw_part.sum(dim=0).to(weight.dtype), dbias_part.sum(dim=0).to(weight.dtype)
    if not deterministic:
        return da, db_atomic.to(b.dtype), dweight, dbias

    cols_tile = _small_tile(M, N, 64)

    def cols_grid(launch_meta):
        return (B * triton.cdiv(M, launch_meta["BLOCK_O"]), n_rt)

    _launch(
        _backward_kernel,
        _backward_tuned,
        cols_grid,
        cols_tile,
        _BACKWARD_FIXED,
        (*inputs, db_part, dw_part, dbias_part, db_part, B, N, M, H, R),
        dict(meta, OWN_KEYS=True, ATOMIC_DB=False),
    )
    return da, db_part.sum(dim=0).to(b.dtype), dweight, dbias


def _identity_forward(a, b, weight, bias, m, inv_count, inner) -> Tensor:
    """σ = identity: g_i = (W_r mean_j δ(a_i − b_j) + β_r) · [row has a valid key]."""
    mean = _pair_sum(a, b, m, activations.CODES[inner], False, True) * inv_count[:, None, None]
    g = mean @ weight.to(mean.dtype).t()
    if bias is not None:
        g = g + bias.to(mean.dtype) * _has_keys(m, inv_count, b.shape[1])[:, None, None]
    return g.to(a.dtype)


def _identity_backward(grad, a, b, weight, m, inv_count, inner):
    """σ = identity: with v_i = W_rᵀ dG_i / n_i, da_i = v_i ⊙ Σ_j m_j δ'(a_i − b_j),
    db_j = −m_j Σ_i v_i ⊙ δ'(a_i − b_j), dW_r = Σ_i dG_i mean_jᵀ, dβ_r = Σ_i dG_i [row has keys]."""
    code = activations.CODES[inner]
    dg = grad.to(inv_count.dtype)
    v = (dg @ weight.to(dg.dtype)) * inv_count[:, None, None]
    da = v * _pair_sum(a, b, m, code, True, True)
    db = -_pair_sum(b, a, v, code, True, False)
    if m is not None:
        db = db * m[:, :, None]
    mean = _pair_sum(a, b, m, code, False, True) * inv_count[:, None, None]
    dweight = torch.einsum("bnr,bnh->rh", dg, mean)
    dbias = (dg * _has_keys(m, inv_count, b.shape[1])[:, None, None]).sum(dim=(0, 1))
    return da.to(a.dtype), db.to(b.dtype), dweight.to(weight.dtype), dbias.to(weight.dtype)


def _has_keys(m: Tensor | None, inv_count: Tensor, M: int) -> Tensor:
    """1 per batch element with at least one valid key, else 0 (accumulation dtype)."""
    if m is None:
        return torch.full_like(inv_count, 1.0 if M > 0 else 0.0)
    return (m.sum(dim=1) > 0).to(inv_count.dtype)
