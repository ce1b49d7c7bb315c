"""Triton kernels for ``global_relation``: a fused forward and a FlashAttention-2-style backward.

Layout (docs/kernels.md). A pair tile is BLOCK_I query rows × BLOCK_J keys, flattened row-major
into BLOCK_P = BLOCK_I·BLOCK_J ≥ 64 pairs (pair p = (p // BLOCK_J, p % BLOCK_J)): the tile
δ(a_i − b_j) is a (BLOCK_P, H) matrix built in registers from one a-tile and one b-tile, and the
products with W_r are tensor-core dots with BLOCK_P as one dimension. Programs are persistent:
each loads its W_r (slice) once, before any loop, where it stays in shared memory as a dot
operand, and then walks work items (a batch element and a block of rows or keys), so the batch
never sits in a grid axis. No (i, j) tile reaches memory; the backward recomputes it.

Forward: per work item, the a-tile is loaded once; per key tile, z = p W_rᵀ + β_r for all of R
(one dot, K = H), r = σ(z) accumulated per slot (two pairs of one query row per slot where the
tile allows: _fold_pairs) and summed to rows at the end.

Backward (docs/math.md) splits R into slices (launch.r_slice) across programs: every product is
then computed exactly once over all slices (z, dp and dW_r, three dots of the forward's size), and
a slice of dW_r stays on chip for the program's whole walk. One pass, the row pass, owns BLOCK_I
rows and loops over keys: dz = m σ'(z) G/n, dp = dz W_r, du = δ'(d) ⊙ dp; da_i = Σ_j du
accumulates in registers, dW_r and dβ_r in per-program fp32 partials, and db_j = −Σ_i du is added
with relaxed atomics: into db in fast mode, into program-private slabs in deterministic mode (summed
by a second kernel). One more launch sums the partials in a fixed order (sum_parts_kernel).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastrel import activations
from fastrel.kernels import launch
from fastrel.kernels.activation import activation, pair_activation
from fastrel.kernels.global_relation_backward import (
    backward_rows_kernel,
    mean_weight,
    sum_parts_kernel,
    sum_slabs_kernel,
    valid_keys,
)
from fastrel.kernels.rounding import round_to

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------
# Steps of the forward


@triton.jit
def _load_rows(ptr, bat, rows, n_rows, cols, n_cols):
    """x[bat, rows, cols] of a contiguous (B, n_rows, n_cols) tensor, 0 outside it (int32 offsets within
    one batch element: the per-step address arithmetic stays 32-bit)."""
    return tl.load(
        ptr + bat * n_rows * n_cols + (rows[:, None] * n_cols + cols[None, :]),
        mask=(rows < n_rows)[:, None] & (cols < n_cols)[None, :],
        other=0.0,
    )


@triton.jit
def _pair_valid(keys_ok, BLOCK_I: tl.constexpr):
    """(BLOCK_P,) pairs whose key exists and is valid (a row past N is computed but never stored)."""
    return tl.reshape(tl.broadcast_to(keys_ok[None, :], (BLOCK_I, keys_ok.shape[0])), (BLOCK_I * keys_ok.shape[0],))


@triton.jit
def _pair_tile(a_tile, b_tile, INNER: tl.constexpr, DTYPE: tl.constexpr):
    """δ(a_i − b_j) for every pair of the tile, (BLOCK_P, H), the difference rounded to DTYPE."""
    rows: tl.constexpr = a_tile.shape[0]
    keys: tl.constexpr = b_tile.shape[0]
    cols: tl.constexpr = a_tile.shape[1]
    return tl.reshape(pair_activation(a_tile[:, None, :], b_tile[None, :, :], INNER, DTYPE), (rows * keys, cols))


@triton.jit
def _fold_pairs(relation, FOLD: tl.constexpr):
    """(BLOCK_P / FOLD, R): with FOLD = 2, pairs p and p + 8 of every 16 summed (two keys of one
    query row where BLOCK_J is a multiple of 16; launch.pair_fold)."""
    if FOLD == 2:
        pairs: tl.constexpr = relation.shape[0]
        cols: tl.constexpr = relation.shape[1]
        relation = tl.reshape(tl.sum(tl.reshape(relation, (pairs // 16, 2, 8, cols)), axis=1), (pairs // 2, cols))
    return relation


# --------------------------------------------------------------------------------------------
# Kernels


# A key tile adds a pair only where its key exists and the key mask keeps it; without a mask and
# with M a multiple of BLOCK_J every pair counts, and the forward skips the selection (one select
# per accumulator element and step, about a sixth of the loop).
# The accumulator holds two pairs of one query row per slot where launch.pair_fold allows it.
@triton.heuristics({
    "SELECT_KEYS": lambda args: args["HAS_MASK"] or args["M"] % args["BLOCK_J"] != 0,
    "FOLD": lambda args: launch.pair_fold(args["BLOCK_J"], args["PRECISION"]),
})  # fmt: skip
@triton.jit
def _forward_kernel(
    a_ptr, b_ptr, w_ptr, bias_ptr, mask_ptr, g_ptr,
    B, N, M, H, R, SIZE_CLASS, inv_m,
    INNER: tl.constexpr, OUTER: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    ACC: tl.constexpr, DIFF: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr,
    H_PARTS: tl.constexpr, SELECT_KEYS: tl.constexpr, FOLD: tl.constexpr,
):  # fmt: skip
    """g for the work items (batch element, block of BLOCK_I rows) of this program and R slice."""
    BLOCK_P: tl.constexpr = BLOCK_I * BLOCK_J
    # Known on the host (it launches nothing for an empty g): offsets widen by zero extension.
    tl.assume(B > 0)
    tl.assume(N > 0)
    tl.assume(M >= 0)
    tl.assume(H >= 0)
    tl.assume(R > 0)
    io_dtype = w_ptr.dtype.element_ty
    # The pair tile is formed in H_PARTS parts of H (launch.h_parts), one live at a time; a tuple
    # holds each part's operands.
    PART: tl.constexpr = BLOCK_H // H_PARTS
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    # W_rᵀ (H, R slice): loaded once, a shared-memory dot operand for the whole walk.
    wts = ()
    for q in tl.static_range(H_PARTS):
        h = q * PART + tl.arange(0, PART)
        wt = tl.load(w_ptr + r[None, :] * H + h[:, None], mask=(r < R)[None, :] & (h < H)[:, None], other=0.0)
        wts += (wt.to(DOT),)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + r, mask=r < R, other=0.0).to(ACC)

    n_blocks = tl.cdiv(N, BLOCK_I)
    # On tensor cores the walk keeps its invariants inside it: hoisted, the paper tile kept one of
    # them live across the key loop, in a spill slot. The FMA product ("ieee") spills more without.
    for item in tl.range(tl.program_id(0), B * n_blocks, tl.num_programs(0), disable_licm=PRECISION != "ieee"):
        bat = (item // n_blocks).to(tl.int64)
        rows = (item % n_blocks) * BLOCK_I + tl.arange(0, BLOCK_I)
        a_tiles = ()
        for q in tl.static_range(H_PARTS):
            a_tiles += (_load_rows(a_ptr, bat, rows, N, q * PART + tl.arange(0, PART), H).to(DIFF),)
        acc = tl.zeros((BLOCK_P // FOLD, BLOCK_R), dtype=ACC)
        for j0 in range(0, M, BLOCK_J):
            keys = j0 + tl.arange(0, BLOCK_J)
            for q in tl.static_range(H_PARTS):
                b_tile = _load_rows(b_ptr, bat, keys, M, q * PART + tl.arange(0, PART), H).to(DIFF)
                p = round_to(_pair_tile(a_tiles[q], b_tile, INNER, io_dtype), io_dtype).to(DOT)
                if q == 0:
                    z = tl.dot(p, wts[q], input_precision=PRECISION, out_dtype=ACC)
                else:
                    z = tl.dot(p, wts[q], z, input_precision=PRECISION, out_dtype=ACC)
            if HAS_BIAS:
                z += bias[None, :]
            relation = activation(z, OUTER)
            if SELECT_KEYS:
                valid = _pair_valid(valid_keys(mask_ptr, bat, keys, M, HAS_MASK), BLOCK_I)
                relation = tl.where(valid[:, None], relation, 0.0)
            acc += _fold_pairs(relation, FOLD)
        scale = mean_weight(mask_ptr, bat, M, inv_m, HAS_MASK, ACC, BLOCK_J, False)
        g = tl.sum(tl.reshape(acc, (BLOCK_I, BLOCK_J // FOLD, BLOCK_R)), axis=1) * scale
        tl.store(
            g_ptr + (bat * N + rows[:, None]) * R + r[None, :],
            round_to(g, g_ptr.dtype.element_ty),
            mask=(rows < N)[:, None] & (r < R)[None, :],
        )


def _zero_db(nargs: dict) -> None:
    """Before every autotuning trial and every run of the chosen config: the atomics add into db."""
    nargs["db_ptr"].zero_()


# Tuned once per size class (launch.size_class), not per N and M: sets of many lengths (RGTR over
# whole tracklets) would otherwise time every config again for each new length.
_forward_tuned = triton.autotune(
    configs=launch.configs(launch.FORWARD_TILES),
    key=["SIZE_CLASS", "H", "R"],
    prune_configs_by={"early_config_prune": launch.prune_forward},
)(_forward_kernel)
_backward_rows_tuned = triton.autotune(
    configs=launch.configs(launch.BACKWARD_TILES, _zero_db),
    key=["SIZE_CLASS", "H", "R", "PRIVATE_DB", "ONE_KEY_TILE"],
    prune_configs_by={"early_config_prune": launch.prune_backward},
)(backward_rows_kernel)


# --------------------------------------------------------------------------------------------
# Host functions (called by fastrel.backends.triton and the static check)


def _pair_meta(a: Tensor, bias: Tensor | None, key_mask: Tensor | None, inner: str, outer: str) -> dict:
    """Compile-time constants every pair kernel shares."""
    return dict(
        INNER=activations.CODES[inner],
        OUTER=activations.CODES[outer],
        HAS_BIAS=bias is not None,
        HAS_MASK=key_mask is not None,
        ACC=launch.acc_dtypes(a.dtype)[1],
        DIFF=launch.diff_dtype(a.dtype),
        DOT=launch.dot_dtype(a.dtype),
        PRECISION=launch.precision(a.dtype),
    )


def _key_mask(key_mask: Tensor | None, fallback: Tensor) -> Tensor:
    """The key mask as the kernels read it: bytes, a view of the bool tensor (no launch), or any
    tensor where there is none (HAS_MASK is then False and the kernels never read it)."""
    return key_mask.view(torch.uint8) if key_mask is not None else fallback


def forward(
    a: Tensor, b: Tensor, weight: Tensor, bias: Tensor | None, key_mask: Tensor | None, inner: str, outer: str
) -> Tensor:
    """g (B, N, R) in a's dtype; inputs contiguous, weight/bias in a's dtype, key_mask bool or None."""
    B, N, H = a.shape
    M, R = b.shape[1], weight.shape[0]
    g = torch.empty(B, N, R, dtype=a.dtype, device=a.device)
    if g.numel() == 0:
        return g
    tile, tune = launch.forward_tile(a, N, M)
    block_r = launch.r_slice(a, R, H, forward=True, one_step=launch.small_set_tile(N, M) is not None)
    grid = (launch.programs(a, B * N), launch.cdiv(R, block_r))
    args = (a, b, weight, bias if bias is not None else weight, _key_mask(key_mask, a), g)
    block_h = launch.pow2(H)
    meta = dict(_pair_meta(a, bias, key_mask, inner, outer), BLOCK_H=block_h, BLOCK_R=block_r)
    meta["H_PARTS"] = launch.h_parts(a, block_h)
    with launch.on_device(a):
        sizes = (B, N, M, H, R, launch.size_class(N, M), 1.0 / max(M, 1))
        launch.launch(_forward_kernel, _forward_tuned, grid, tile, tune, (*args, *sizes), meta)
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
    """(da, db, dweight, dbias) in one pass over the pairs and one launch summing its partials.
    Deterministic: a fixed tile, db added into program-private slabs, and every partial summed in
    a fixed order: bitwise reproducible across runs and processes on one device model. Otherwise
    autotuned, db added into db by relaxed atomics."""
    B, N, H = a.shape
    M, R = b.shape[1], weight.shape[0]
    if B * N * M * R == 0:
        return torch.zeros_like(a), torch.zeros_like(b), torch.zeros_like(weight), weight.new_zeros(R)
    if H == 0:
        return _no_hidden_backward(grad, a, b, weight, bias, key_mask, outer)
    acc, _ = launch.acc_dtypes(a.dtype)
    block_r = launch.r_slice(a, R, H, forward=False, one_step=launch.small_set_tile(N, M) is not None)
    slices = launch.cdiv(R, block_r)
    programs = launch.programs(a, B * N)
    tile, tune = launch.backward_tile(a, N, M, H, block_r, deterministic)
    slabs = (slices, programs + B - 1) if deterministic else (B,)
    # One R slice stores da itself (rounded in the kernel); several store fp32 parts, summed below.
    da_part = torch.empty(slices, B, N, H, dtype=acc if slices > 1 else a.dtype, device=a.device)
    # The atomics add into db: zeroed here, or by the autotuned launch's pre-hook before every run.
    db = (torch.empty if tune and launch.autotuning() else torch.zeros)(*slabs, M, H, dtype=acc, device=a.device)
    w_part = torch.empty(programs, R * H + R, dtype=acc, device=a.device)  # per program: dW_r, then dβ_r
    inputs = (a, b, weight, bias if bias is not None else weight, _key_mask(key_mask, a), grad)
    meta = dict(
        _pair_meta(a, bias, key_mask, inner, outer),
        BLOCK_H=launch.pow2(H, 2 * launch.MIN_DOT),
        BLOCK_R=block_r,
        PRIVATE_DB=deterministic,
        ONE_KEY_TILE=not tune and M <= tile[1],
        ONE_SLICE=slices == 1,
    )
    with launch.on_device(a):
        launch.launch(
            backward_rows_kernel, _backward_rows_tuned, (programs, slices), tile, tune,
            (*inputs, da_part, w_part, db, B, N, M, H, R, launch.size_class(N, M), 1.0 / max(M, 1)), meta,
        )  # fmt: skip
    if deterministic:
        db = _sum_slabs(db, B, launch.cdiv(N, tile[0]), programs, b.dtype)
    return _sum_parts(w_part, da_part, db, a.dtype)


def _sum_parts(w_part: Tensor, da_part: Tensor, db: Tensor, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """(da, db, dweight, dbias) in ``dtype`` (the inputs' one) from the row pass's partials, in one
    launch (sum_parts_kernel): dW_r and dβ_r summed over programs, da over R slices (where there are
    several), db cast (where it is still fp32); each sum in a fixed order."""
    programs = w_part.shape[0]
    slices, B, N, H = da_part.shape
    R = w_part.shape[1] // (H + 1)
    dw, dbias = w_part.new_empty(R, H, dtype=dtype), w_part.new_empty(R, dtype=dtype)
    jobs = []
    da = da_part[0]
    if slices > 1:
        da = da_part.new_empty(B, N, H, dtype=dtype)
        jobs.append((da_part, da, slices, da.numel()))
    if db.dtype != dtype:
        db, db_part = db.new_empty(db.shape, dtype=dtype), db
        jobs.append((db_part, db, 1, db.numel()))
    jobs += [(dw, dw, 0, 0)] * (2 - len(jobs))  # no blocks
    block = launch.sum_parts_block()
    grid = (launch.cdiv(R * H + R, block) + sum(launch.cdiv(numel, block) for *_, numel in jobs),)
    args = (w_part, dw, dbias, programs, R * H, R, *(x for job in jobs for x in job))
    with launch.on_device(w_part):
        sum_parts_kernel[grid](*args, BLOCK=block, ROWS=launch.SUM_ROWS)
    return da, db, dw, dbias


def _sum_slabs(slabs: Tensor, B: int, n_blocks: int, programs: int, dtype: torch.dtype) -> Tensor:
    """db (B, M, H) in ``dtype`` from the deterministic row pass's slabs (slices, programs + B − 1, M, H),
    summed in a fixed order by one launch (sum_slabs_kernel)."""
    slices, count, M, H = slabs.shape
    db = slabs.new_empty(B, M, H, dtype=dtype)
    block = min(1024, launch.pow2(M * H))
    grid = (B * launch.cdiv(M * H, block),)
    with launch.on_device(slabs):
        sum_slabs_kernel[grid](
            slabs, db, M * H, count, slices, n_blocks, launch.cdiv(B * n_blocks, programs), BLOCK=block
        )
    return db


def _no_hidden_backward(grad, a, b, weight, bias, key_mask, outer):
    """H = 0: z = β_r for every pair, so dβ_r = σ'(β_r) ⊙ Σ_{b,i} G_i [row has a valid key]."""
    acc, _ = launch.acc_dtypes(a.dtype)
    beta = bias.to(acc) if bias is not None else weight.new_zeros(weight.shape[0], dtype=acc)
    rows = grad.to(acc)
    if key_mask is not None:  # M > 0 here
        rows = rows * key_mask.any(dim=1).to(acc)[:, None, None]
    dbias = activations.derivative(beta, outer) * rows.sum(dim=(0, 1))
    return torch.zeros_like(a), torch.zeros_like(b), torch.zeros_like(weight), dbias.to(weight.dtype)
