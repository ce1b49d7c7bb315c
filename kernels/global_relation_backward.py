"""Backward kernels of ``global_relation`` (docs/math.md, docs/kernels.md), FlashAttention-2 style.

The backward works on transposed pair tiles: dᵀ is (H, BLOCK_P) with column p = (i, j),
p = i·BLOCK_J + j. Every product then has W_r (or its transpose) as the shared-memory A operand
and the pair tile as B: zᵀ = W_r pᵀ, dpᵀ = W_rᵀ dzᵀ, dW_r += dzᵀ p. The pair tile pᵀ is written
to shared memory once and read by two products, and the pair reductions (da_i = Σ_j du,
db_j = −Σ_i du) run along the accumulator rows, inside a thread and its quad. H is processed in
two halves, so that one half's dpᵀ is live at a time.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastrel.kernels.activation import activation, backprop
from fastrel.kernels.rounding import round_to


@triton.jit
def _load_t(ptr, bat, rows, rows_ok, n_rows, cols, n_cols):
    """x[bat, rows, cols]ᵀ, (cols, rows), of a contiguous (B, n_rows, n_cols) tensor, 0 outside it and
    in the rows that rows_ok leaves out. (64-bit offsets: with 32-bit ones ptxas schedules the
    backward into more spills.)"""
    return tl.load(
        ptr + (bat * n_rows + rows[None, :]) * n_cols + cols[:, None],
        mask=rows_ok[None, :] & (cols < n_cols)[:, None],
        other=0.0,
    )


@triton.jit
def _store_t(ptr, bat, rows, n_rows, cols, n_cols, x_t):
    """x[bat, rows, cols] = x_tᵀ inside a contiguous (B, n_rows, n_cols) tensor."""
    tl.store(
        ptr + (bat * n_rows + rows[None, :]) * n_cols + cols[:, None],
        x_t,
        mask=(rows < n_rows)[None, :] & (cols < n_cols)[:, None],
    )


@triton.jit
def valid_keys(mask_ptr, bat, keys, M, HAS_MASK: tl.constexpr):
    """Keys that exist and that the key mask keeps."""
    ok = keys < M
    if HAS_MASK:
        ok &= tl.load(mask_ptr + bat * M + keys, mask=ok, other=0.0) > 0
    return ok


@triton.jit
def mean_weight(
    mask_ptr, bat, M, inv_m, HAS_MASK: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, ONE_BLOCK: tl.constexpr
):  # fmt: skip
    """1 / max(Σ_j m_j, 1) of batch element ``bat`` in ACC. Under a key mask it is counted here, in
    blocks of BLOCK keys (ONE_BLOCK: M ≤ BLOCK, a loop of one constant step), so that a call issues no
    host-side reduction (an RGTR clip batch's kernels take less time than the host needs to issue a
    launch); without one it is the host's ``inv_m`` = 1 / max(M, 1), an fp32 argument (fp64, which
    only the interpreter runs, divides here)."""
    count = M
    if HAS_MASK:
        count = 0
        end = M
        if ONE_BLOCK:
            end = 1
        for j0 in range(0, end, BLOCK):
            count += tl.sum(valid_keys(mask_ptr, bat, j0 + tl.arange(0, BLOCK), M, True).to(tl.int32))
    count = tl.maximum(count, 1).to(ACC)
    if ACC == tl.float64:
        weight = 1.0 / count
    elif HAS_MASK:  # fp32 "/" divides approximately on GPUs; the reciprocal is rounded
        weight = tl.math.div_rn(tl.full((), 1.0, ACC), count)
    else:
        weight = tl.cast(inv_m, ACC)
    return weight


@triton.jit
def _slice_operands(w_ptr, bias_ptr, r_slice, R, H, HAS_BIAS: tl.constexpr, ACC: tl.constexpr,
                    BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr):  # fmt: skip
    """(h0, h1, r, w0, w1, β_r) of R slice ``r_slice``: the H halves, the slice's rows, its
    W_r as two H halves and β_r (0 without a bias), loaded once per program: W_r stays in shared
    memory as the operand of every product of the walk."""
    h0 = tl.arange(0, BLOCK_H // 2)
    h1 = BLOCK_H // 2 + h0
    r = r_slice * BLOCK_R + tl.arange(0, BLOCK_R)
    w0 = tl.load(w_ptr + r[:, None] * H + h0[None, :], mask=(r < R)[:, None] & (h0 < H)[None, :], other=0.0)
    w1 = tl.load(w_ptr + r[:, None] * H + h1[None, :], mask=(r < R)[:, None] & (h1 < H)[None, :], other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + r, mask=r < R, other=0.0).to(ACC)
    else:
        bias = tl.zeros((BLOCK_R,), dtype=ACC)
    return h0, h1, r, w0, w1, bias


@triton.jit
def _pair_difference_t(a_t, b_t, DTYPE: tl.constexpr):
    """dᵀ (H, BLOCK_P): column i·BLOCK_J + j holds a_i − b_j rounded to DTYPE, the inputs' dtype, as
    the reference's is (a no-op on GPUs, where the tiles are in DTYPE); a_t (H, BLOCK_I), b_t (H, BLOCK_J)."""
    d = round_to(a_t[:, :, None] - b_t[:, None, :], DTYPE).to(a_t.dtype)
    return tl.reshape(d, (a_t.shape[0], a_t.shape[1] * b_t.shape[1]))


@triton.jit
def _relation_gradient_t(
    a0, b0, a1, b1, w0, w1, bias, dg_rows, rows_ok, keys_ok,
    INNER: tl.constexpr, OUTER: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """dzᵀ = m σ'(z) G/n of a pair tile, (BLOCK_R, BLOCK_P), as a dot operand (rounded to the input
    dtype, as the reference's dz is), with zᵀ = W_r pᵀ + β_r recomputed from the two H halves;
    dg_rows = (G/n)ᵀ of the tile's rows, (BLOCK_R, BLOCK_I)."""
    io_dtype = w0.dtype
    BLOCK_R: tl.constexpr = dg_rows.shape[0]
    BLOCK_I: tl.constexpr = dg_rows.shape[1]
    BLOCK_J: tl.constexpr = keys_ok.shape[0]
    p0 = round_to(activation(_pair_difference_t(a0, b0, io_dtype), INNER), io_dtype).to(DOT)
    p1 = round_to(activation(_pair_difference_t(a1, b1, io_dtype), INNER), io_dtype).to(DOT)
    z = tl.dot(w0.to(DOT), p0, input_precision=PRECISION, out_dtype=ACC)
    z = tl.dot(w1.to(DOT), p1, z, input_precision=PRECISION, out_dtype=ACC)
    if HAS_BIAS:
        z += bias[:, None]
    dg = tl.reshape(tl.broadcast_to(dg_rows[:, :, None], (BLOCK_R, BLOCK_I, BLOCK_J)), (BLOCK_R, BLOCK_I * BLOCK_J))
    valid = tl.reshape(rows_ok[:, None] & keys_ok[None, :], (BLOCK_I * BLOCK_J,))
    return round_to(tl.where(valid[None, :], backprop(z, dg, OUTER), 0.0), io_dtype).to(DOT)


@triton.jit
def _half_gradient_t(
    a_half, b_half, w_half, dz_op,
    INNER: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """(duᵀ as (H/2, BLOCK_I, BLOCK_J), pᵀ) on one H half: dpᵀ = W_rᵀ dzᵀ, du = δ'(d) ⊙ dp."""
    d = _pair_difference_t(a_half, b_half, w_half.dtype)
    dp = tl.dot(tl.trans(w_half.to(DOT)), dz_op, input_precision=PRECISION, out_dtype=ACC)
    du = tl.reshape(backprop(d, dp, INNER), (a_half.shape[0], a_half.shape[1], b_half.shape[1]))
    return du, round_to(activation(d, INNER), w_half.dtype).to(DOT)


@triton.jit
def _row_half_step(
    du, p, dz_op, da_acc, dw_acc, db_ptr, slab, keys, M, h, H, ACC: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Row pass, one H half: da_i += Σ_j du, dW_r += dzᵀ p, and db_j −= Σ_i du into (M, H) slab ``slab``."""
    da_acc += tl.sum(du, axis=2)
    dw_acc = tl.dot(dz_op, tl.trans(p), dw_acc, input_precision=PRECISION, out_dtype=ACC)
    tl.atomic_add(
        db_ptr + (slab * M + keys[None, :]) * H + h[:, None],
        -tl.sum(du, axis=1),
        mask=(keys < M)[None, :] & (h < H)[:, None],
        sem="relaxed",
    )
    return da_acc, dw_acc


@triton.jit
def backward_rows_kernel(
    a_ptr, b_ptr, w_ptr, bias_ptr, mask_ptr, grad_ptr,
    da_part_ptr, w_part_ptr, db_ptr,
    B, N, M, H, R, SIZE_CLASS, inv_m,
    PRIVATE_DB: tl.constexpr, ONE_KEY_TILE: tl.constexpr, ONE_SLICE: tl.constexpr,
    INNER: tl.constexpr, OUTER: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    ACC: tl.constexpr, DIFF: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """Row pass of R slice ``program_id(1)``: for each work item (batch element, BLOCK_I rows), the
    slice's share of da (da_part, (R slices, B, N, H), fp32; with one slice, da itself); this
    program's dW_r and dβ_r partials (w_part (programs, R·H + R): dW_r, then dβ_r); −Σ_i du
    added by relaxed atomics into db:
    into db itself (B, M, H), or with PRIVATE_DB into slabs that no other program touches
    ((R slices, programs + B − 1, M, H), slab program + batch element), so that each address sums its
    terms in the program's order (deterministic mode; sum_slabs_kernel adds the slabs in a fixed order)."""
    program = tl.program_id(0)
    # Known on the host; told to the compiler, they leave fewer values live across the key loop
    # (sign extensions of the sizes, the slice's offsets), which ptxas would spill at H = 256.
    tl.assume(B > 0)
    tl.assume(N > 0)
    tl.assume(M > 0)
    tl.assume(H > 0)
    tl.assume(R > 0)
    r_slice = 0
    if not ONE_SLICE:
        r_slice = tl.program_id(1)
    HALF: tl.constexpr = BLOCK_H // 2
    # Where dW_r's accumulators take half of every thread's registers (all of R = 128 at H = 256),
    # values hoisted out of the key loop (shared-memory descriptors, offsets) stay live across it
    # and are spilled and reloaded every step; recomputed in the loop, they cost fewer instructions.
    KEEP_IN_LOOP: tl.constexpr = BLOCK_R * BLOCK_H >= 128 * 256
    h0, h1, r, w0, w1, bias = _slice_operands(w_ptr, bias_ptr, r_slice, R, H, HAS_BIAS, ACC, BLOCK_H, BLOCK_R)
    dw0 = tl.zeros((BLOCK_R, HALF), dtype=ACC)
    dw1 = tl.zeros((BLOCK_R, HALF), dtype=ACC)
    dbias_acc = tl.zeros((BLOCK_R,), dtype=ACC)

    n_blocks = tl.cdiv(N, BLOCK_I)
    items = B * n_blocks
    if PRIVATE_DB:  # a contiguous range of items: it covers few batch elements, each a slab of its own
        per_program = tl.cdiv(items, tl.num_programs(0))
        first, last, stride = program * per_program, tl.minimum((program + 1) * per_program, items), 1
    else:  # items strided over the programs, atomics into db itself
        first, last, stride = program, items, tl.num_programs(0)
    for item in range(first, last, stride):
        bat = (item // n_blocks).to(tl.int64)
        slab = bat
        if PRIVATE_DB:
            slab += r_slice * (tl.num_programs(0) + B - 1) + program
        rows = (item % n_blocks) * BLOCK_I + tl.arange(0, BLOCK_I)
        scale = mean_weight(mask_ptr, bat, M, inv_m, HAS_MASK, ACC, BLOCK_J, ONE_KEY_TILE)
        dg = _load_t(grad_ptr, bat, rows, rows < N, N, r, R).to(ACC) * scale
        da0 = tl.zeros((HALF, BLOCK_I), dtype=ACC)
        da1 = tl.zeros((HALF, BLOCK_I), dtype=ACC)
        # A small set (an RGTR clip) is one key tile: a loop of one constant step, which the
        # compiler removes, so that nothing is carried or prefetched across steps.
        key_end = M
        if ONE_KEY_TILE:
            key_end = 1
        for j0 in tl.range(0, key_end, BLOCK_J, disable_licm=KEEP_IN_LOOP):
            keys = j0 + tl.arange(0, BLOCK_J)
            # The a-tile is read per step (an L1 hit): hoisted, its copies in the register layouts
            # of the pair tile would stay live across the loop.
            keys_ok = valid_keys(mask_ptr, bat, keys, M, HAS_MASK)
            a0 = _load_t(a_ptr, bat, rows, rows < N, N, h0, H).to(DIFF)
            a1 = _load_t(a_ptr, bat, rows, rows < N, N, h1, H).to(DIFF)
            # An excluded key is read as 0, as the reference replaces it: its NaN or inf stays out.
            b0 = _load_t(b_ptr, bat, keys, keys_ok, M, h0, H).to(DIFF)
            b1 = _load_t(b_ptr, bat, keys, keys_ok, M, h1, H).to(DIFF)
            dz_op = _relation_gradient_t(
                a0, b0, a1, b1, w0, w1, bias, dg, rows < N, keys_ok, INNER, OUTER, HAS_BIAS, ACC, DOT, PRECISION
            )
            dbias_acc += tl.sum(dz_op.to(ACC), axis=1)
            du, p = _half_gradient_t(a0, b0, w0, dz_op, INNER, ACC, DOT, PRECISION)
            da0, dw0 = _row_half_step(du, p, dz_op, da0, dw0, db_ptr, slab, keys, M, h0, H, ACC, PRECISION)
            du, p = _half_gradient_t(a1, b1, w1, dz_op, INNER, ACC, DOT, PRECISION)
            da1, dw1 = _row_half_step(du, p, dz_op, da1, dw1, db_ptr, slab, keys, M, h1, H, ACC, PRECISION)
        da_dtype = da_part_ptr.dtype.element_ty  # fp32, or the input dtype when R is one slice
        _store_t(da_part_ptr, r_slice * B + bat, rows, N, h0, H, round_to(da0, da_dtype))
        _store_t(da_part_ptr, r_slice * B + bat, rows, N, h1, H, round_to(da1, da_dtype))
    # Stored as dW_rᵀ tiles: Triton 3.6 then keeps no store offset across the walk (the row-major
    # store's were spilled in fast mode).
    w_part = w_part_ptr + program * (R * H + R)
    _store_t(w_part, 0, r, R, h0, H, tl.trans(dw0))
    _store_t(w_part, 0, r, R, h1, H, tl.trans(dw1))
    tl.store(w_part + R * H + r, dbias_acc, mask=r < R)


@triton.jit
def sum_slabs_kernel(slabs_ptr, db_ptr, M_H, SLABS, SLICES, N_BLOCKS, PER_PROGRAM, BLOCK: tl.constexpr):
    """db (B, M·H) from deterministic mode's slabs (SLICES, SLABS, M·H): program p walked the items
    [p·PER_PROGRAM, (p + 1)·PER_PROGRAM) (item = batch element · N_BLOCKS + row block) and added batch
    element e's terms into slab p + e. One program per (e, BLOCK columns) adds them in a fixed order:
    slices, then the programs that cover e, in program order; db in the slabs' dtype or rounded to b's."""
    col_blocks = tl.cdiv(M_H, BLOCK)
    e = tl.program_id(0) // col_blocks
    cols = (tl.program_id(0) % col_blocks) * BLOCK + tl.arange(0, BLOCK)
    first = e * N_BLOCKS // PER_PROGRAM
    last = ((e + 1) * N_BLOCKS - 1) // PER_PROGRAM
    acc = tl.zeros((BLOCK,), dtype=slabs_ptr.dtype.element_ty)
    for s in range(SLICES):
        for p in range(first, last + 1):
            slab = (s * SLABS + p + e).to(tl.int64)
            acc += tl.load(slabs_ptr + slab * M_H + cols, mask=cols < M_H, other=0.0)
    tl.store(db_ptr + e.to(tl.int64) * M_H + cols, round_to(acc, db_ptr.dtype.element_ty), mask=cols < M_H)


@triton.jit
def _sum_block(parts_ptr, out_ptr, count, numel, tail_ptr, split, block, BLOCK: tl.constexpr, ROWS: tl.constexpr):
    """Columns ``block`` of Σ_c parts[c, :] rounded to the output dtype: those before ``split`` into
    out, the rest into tail (two outputs of one partial row). The rows are read ROWS at a time (loads
    in flight: the programs' dW_r rows are few columns deep and hundreds of rows long) and summed in a
    fixed order, so that a deterministic backward stays bitwise reproducible."""
    cols = block * BLOCK + tl.arange(0, BLOCK)
    rows = tl.arange(0, ROWS)
    acc = tl.zeros((BLOCK,), dtype=parts_ptr.dtype.element_ty)
    for c0 in range(0, count, ROWS):
        c = (c0 + rows).to(tl.int64)
        ok = (c < count)[:, None] & (cols < numel)[None, :]
        acc += tl.sum(tl.load(parts_ptr + c[:, None] * numel + cols[None, :], mask=ok, other=0.0), axis=0)
    tl.store(out_ptr + cols, round_to(acc, out_ptr.dtype.element_ty), mask=cols < split)
    tl.store(tail_ptr + (cols - split), round_to(acc, tail_ptr.dtype.element_ty), mask=(cols >= split) & (cols < numel))


@triton.jit
def sum_parts_kernel(
    w_part_ptr, dw_ptr, dbias_ptr, programs, RH, R,
    parts1_ptr, out1_ptr, count1, numel1, parts2_ptr, out2_ptr, count2, numel2,
    BLOCK: tl.constexpr, ROWS: tl.constexpr,
):  # fmt: skip
    """The backward's last step in one launch, each sum in a fixed order and rounded to its output's
    dtype: dW_r (R·H) and dβ_r (R) from the programs' rows of w_part, then two sums over a leading
    dim (count, numel): da over R slices and db's cast (count 1; numel 0 where there is none).
    Programs cover the first job's blocks of BLOCK columns, then the second's, then the third's."""
    block = tl.program_id(0)
    blocks0 = tl.cdiv(RH + R, BLOCK)
    blocks1 = tl.cdiv(numel1, BLOCK)
    if block < blocks0:
        _sum_block(w_part_ptr, dw_ptr, programs, RH + R, dbias_ptr, RH, block, BLOCK, ROWS)
    elif block < blocks0 + blocks1:
        _sum_block(parts1_ptr, out1_ptr, count1, numel1, out1_ptr, numel1, block - blocks0, BLOCK, ROWS)
    else:
        _sum_block(parts2_ptr, out2_ptr, count2, numel2, out2_ptr, numel2, block - blocks0 - blocks1, BLOCK, ROWS)
