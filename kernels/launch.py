"""How the Triton kernels are launched: tiles, autotune configs, program counts, dtypes, device guard.

The pair kernels' launch numbers live here, named once. docs/kernels.md gives the reasoning behind
the tiles.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

from fastrel.kernels import interpreting

#: The pair tile (BLOCK_I × BLOCK_J pairs, the M dimension of every product) holds at least this
#: many pairs: a Hopper warpgroup MMA (wgmma) is 64 rows tall.
MIN_PAIRS = 64
#: The smallest dimension tl.dot takes; the backward splits H into two halves of at least this.
MIN_DOT = 16
#: R per program (grid axis 1 holds the slices): up to a cap, and within the shared memory that
#: the program's slice of W_r (R slice × BLOCK_H elements) may take, per pass and operand kind:
#: "half" (bf16/fp16), "tf32" (fp32 operands through TF32) and "ieee" (fp32 by FMA). Measured on an
#: H200 (benchmarks/RESULTS.md, "Launch sweep"): the backward with all of R = 128 in one program
#: runs the paper shape 1.7-1.9x faster than two slices of 64 (the pair tile and W_rᵀdz are formed
#: once), although ptxas reports spills for it; the IEEE forward 2.1x faster with 64 than with 16;
#: the IEEE backward 10% slower with 32 than with 16. The element budgets keep every sm_90 launch
#: within a block's 227 KB (the static check compiles H = 256 and 512): TF32 at R = 64, H = 256
#: asked for more. sm_80 has its own (R_SLICE_SM80).
R_SLICE: dict[tuple[bool, str], tuple[int, int]] = {  # (forward?, kind): (cap, W_r elements)
    (True, "half"): (256, 65536),
    (True, "tf32"): (256, 32768),
    (True, "ieee"): (64, 16384),
    (False, "half"): (128, 32768),
    (False, "tf32"): (128, 8192),
    (False, "ieee"): (16, 4096),
}
#: A small set's one-step launch (small_set_tile) keeps the bf16/fp16 backward cap it compiled to
#: without spills (without it the H200 ran RGTR clips of T = 8 in the same time). The IEEE forward
#: takes R = 64 there too: 1.8x faster kernels than with 16 (0.38 against 0.69 ms for 576 clips).
ONE_STEP_R_CAP: dict[tuple[bool, str], int] = {(False, "half"): 64}
#: sm_80's tensor-core launches (mma.sync holds every accumulator, z included, in registers; chosen
#: by the static check, no A100 timed), as R_SLICE and ONE_STEP_R_CAP. Forward: 64, where R = 128
#: spilled 212–936 B per thread with 30–200 spill instructions per step at the paper shape and 64
#: spills none, for as many instructions per FLOP (the pair tile is formed twice; the loop is
#: mostly HMMA). Backward: 32 in bf16/fp16 at H = 256, whose issue bound at the paper shape is 43%
#: against 24% with 16 (the pair tile formed for 4 R slices instead of 8), for 40–56 B of spills
#: per thread outside the key loop; 16 with TF32 operands and for a clip's one step, where 32
#: reloaded spilled values inside the loop (8–98 spill instructions per step).
R_SLICE_SM80: dict[tuple[bool, str], tuple[int, int]] = {
    (True, "half"): (64, 16384),
    (True, "tf32"): (64, 16384),
    (False, "half"): (32, 8192),
    (False, "tf32"): (16, 4096),
}
ONE_STEP_R_CAP_SM80: dict[tuple[bool, str], int] = {(False, "half"): 16}
#: Persistent programs per multiprocessor; under the interpreter a few programs, so that each
#: one still walks several work items.
PROGRAMS_PER_SM = 2
INTERPRETER_PROGRAMS = 3

#: A launch configuration: (BLOCK_I rows, BLOCK_J keys, num_warps, num_stages[, registers per thread
#: at most]). The lists are the fastest tiles of the H200 sweep (benchmarks/tile_sweep.py; RESULTS.md,
#: "Launch sweep") at the paper shape and at N = 1024, which prefer different ones; autotuning picks
#: among them on GPUs. A fixed tile may state ptxas's register limit (maxnreg): a cap that trades
#: spills for resident warps (the sweep times the forward's N = 1024 tiles capped at 128; RESULTS.md,
#: "Sixth session"), or FMA_FORWARD_REGISTERS; the autotune lists hold none.
#: The backward runs one pipeline stage: with two, the key loop would prefetch a and b into
#: unswizzled shared memory and read them back one value at a time in 16-way bank conflicts
#: (RESULTS.md, "Sixth session"; 2.6x slower on the H200 in the first sweep). 16×4 with 8 warps,
#: slower than 4×16 at both shapes in both H200 sweeps, is not timed.
Tile = tuple[int, ...]
FORWARD_TILES: list[Tile] = [(4, 16, 4, 2), (8, 16, 4, 2), (8, 16, 8, 2)]
BACKWARD_TILES: list[Tile] = [(4, 16, 8, 1), (4, 16, 4, 1)]
#: Autotuning times a config only where its largest tiles fit a thread's registers (32-bit registers
#: per thread, the tile over its program's threads): the resident accumulator, and the pair tile,
#: formed each step. Forward: z (BLOCK_P × BLOCK_R fp32, beside the pair tile and the accumulator);
#: at the paper shape 8×16 with 4 warps needs 128, spilled 0.7 KB per thread and ran 2.0x slower
#: than 4×16 on the H200 (2.84 against 1.42 ms); at N = 1024 (R = 64) it needs 64 and is the
#: fastest. Its pair tile (BLOCK_P × one H part of operands): on sm_80, with R slices of 64, the
#: same tile passes z's test at the paper shape but its pair tile takes 128 registers, and it
#: spilled 192 B per thread, reloaded every step (static check). Backward: the dW_r slice (BLOCK_R ×
#: BLOCK_H fp32, resident for the program's walk); at the paper shape 4×16 with 4 warps needs 256,
#: spilled 3.1 KB and ran 3.8x slower than with 8 warps (25.0 against 6.56 ms); at N = 1024 it needs
#: 64 and is the fastest. Its pair tile (pᵀ, BLOCK_H × BLOCK_P operands, both H halves live for zᵀ):
#: TF32's 4-byte operands take 64 registers at N = 1024 with 4 warps and 128 at the paper shape,
#: which spilled 0.4 and 1.6 KB per thread, reloaded every step; TF32 at the paper shape then keeps
#: the first config (8 warps, 40 B outside the loop).
MAX_FORWARD_Z_REGISTERS = 64
MAX_FORWARD_PAIR_REGISTERS = 64
MAX_BACKWARD_DW_REGISTERS = 128
MAX_BACKWARD_PAIR_REGISTERS = 32
#: Warps of a small set's one-step tile (small_set_tile): 8, with which the clip launches compile
#: without spills (4 spill 300-600 B per thread).
SMALL_SET_WARPS = 8
#: The tile used without autotuning: under the interpreter, with FASTREL_TRITON_AUTOTUNE=0, and
#: always in deterministic mode (the tile fixes the order of every sum).
FORWARD_FIXED: Tile = FORWARD_TILES[0]
BACKWARD_FIXED: Tile = BACKWARD_TILES[0]
#: Deterministic mode's tile where W_r's slice is small (BLOCK_H × BLOCK_R ≤ NARROW_W_ELEMENTS, bf16/fp16:
#: TF32's 4-byte operands spill in it at H = 256, R slice 32): 4 warps, two programs per SM. On the
#: H200 at N = 1024 (H = 128, R = 64) fast mode ran the backward with it in 1.68 ms against 4.75 ms
#: with BACKWARD_FIXED (and 1.87 ms with the 2×32 tile it replaced; deterministic mode's kernels
#: 2.38 against 2.62 ms); at the paper shape (H = 256, R = 128) it was 3.8x slower.
BACKWARD_FIXED_NARROW: Tile = BACKWARD_TILES[1]
NARROW_W_ELEMENTS = 128 * 64
#: sm_80 (mma.sync: every accumulator in registers, no 64-row MMA to fill) runs the backward with
#: 16 rows × 2 keys, without autotuning: each db atomic sums 16 rows, and the loop holds 8× fewer
#: atomic addresses (2×16 spilled 128–152 B under Triton 3.6).
BACKWARD_SM80: Tile = (16, 2, 8, 2)
#: fp32 without TF32 multiplies with FMA (no MMA shape to fill, operands in registers): 8 rows × 2
#: keys, for the reason of BACKWARD_SM80 (2×8 spilled 24 B on sm_80).
IEEE_BACKWARD_TILE: Tile = (8, 2, 8, 1)
#: The FMA forward's tiles state ptxas's register limit, 255, its default: without it ptxas gives
#: Triton 3.8's code for them 32–48 registers and 5–20 KB of spills per thread, with it 255 and
#: 0.8–6.4 KB (Triton 3.6's code takes 128–168 registers either way, spill-free).
FMA_FORWARD_REGISTERS = 255
#: The FMA forward, not autotuned: the tile the H200 timed with R slices of 64 (9.21 ms for 64 sets at
#: the paper shape, against 19.3 ms with slices of 16). The tensor-core tiles spill 18–20 KB per
#: thread as FMA tiles and 8×16 asks for 208 KB of shared memory, over sm_80's 163 KB.
IEEE_FORWARD_TILE: Tile = (2, 32, 8, 2, FMA_FORWARD_REGISTERS)
#: Where the forward forms its pair tile in parts of H, one part live at a time, by operand kind:
#: (channels per part, the BLOCK_H it applies to). Whole, TF32's 4-byte tile at H = 256 and the
#: bf16/fp16 tile at H = 512 spilled 0.7–0.9 KB per thread with 170–190 spill instructions per step;
#: in these parts 16–36 B, outside the loop (RESULTS.md, "Eighth session"). Smaller parts lengthened
#: the loops, larger ones left spills in them; TF32 at H = 512 (R slices of 64) spilled less whole.
H_PARTS: dict[str, tuple[int, tuple[int, ...]]] = {"tf32": (64, (128, 256)), "half": (128, (512,))}


#: sum_parts_kernel: columns per program, and partial rows read per step (loads in flight: at the
#: paper shape dW_r and dβ_r are 32 896 columns of 264 program rows on an H200, so 65 programs each
#: walk all 264 rows; 8 rows at a time make 33 steps of 8 independent loads). The interpreter runs
#: programs one after another, so there a few wide ones (an RGTR clip call 2x faster).
SUM_BLOCK = 512
INTERPRETER_SUM_BLOCK = 16384
SUM_ROWS = 8


def sum_parts_block() -> int:
    """Columns per program of sum_parts_kernel (SUM_BLOCK; INTERPRETER_SUM_BLOCK under the interpreter)."""
    return INTERPRETER_SUM_BLOCK if interpreting() else SUM_BLOCK


def autotuning() -> bool:
    """Autotune on GPUs unless FASTREL_TRITON_AUTOTUNE=0 (one fixed tile, fewer compilations)."""
    return not interpreting() and os.environ.get("FASTREL_TRITON_AUTOTUNE", "1") != "0"


def cdiv(n: int, d: int) -> int:
    """⌈n / d⌉ in plain ints (triton.cdiv is a constexpr function, microseconds per host call)."""
    return -(-n // d)


def pow2(n: int, lo: int = 16) -> int:
    """The power-of-two block covering n, at least lo (tl.dot needs dimensions of at least 16)."""
    return max(lo, 1 << (max(int(n), 1) - 1).bit_length())  # plain ints: called per launch, on the host


def size_class(n_own: int, n_loop: int) -> int:
    """The autotuner's size key: the power of two covering max(N, M) (at least 16, so that every
    class compiles to one specialisation of the kernel's SIZE_CLASS argument, which only keys it)."""
    return pow2(max(n_own, n_loop))


def small_set_tile(n_own: int, n_loop: int) -> tuple[int, int] | None:
    """(BLOCK_I, BLOCK_J) covering a small set in one step (an RGTR clip of T ≤ 8 frames: T × T ≤ 64
    pairs), else None."""
    own, loop = pow2(n_own, 1), pow2(n_loop, 1)
    if own * loop > MIN_PAIRS:
        return None
    return own, max(loop, MIN_PAIRS // own)


def pair_fold(block_j: int, precision: str) -> int:
    """Pairs per slot of the forward's accumulator: 2 (pairs p and p + 8 of every 16) where BLOCK_J is
    a multiple of 16 and the product runs on tensor cores, else 1. A tensor core's accumulator gives
    each thread rows r and r + 8 of every 16 (wgmma and mma.sync alike), so the fold is one add in
    the thread and the accumulator takes half the registers (32 per thread, not 64, at the paper's
    4×16 tile); an FMA product ("ieee" on a GPU) spreads those rows over threads. The interpreter
    folds at any precision, so that the CPU tests cover the fold in float64 too."""
    return 2 if block_j % 16 == 0 and (precision != "ieee" or interpreting()) else 1


def prune_forward(configs: list[triton.Config], named_args: dict, **meta) -> list[triton.Config]:
    """The forward's autotune configs whose z tile and pair tile fit (MAX_FORWARD_Z_REGISTERS,
    MAX_FORWARD_PAIR_REGISTERS)."""
    part = meta["BLOCK_H"] // meta["H_PARTS"] * _operand_words(meta)
    return _fitting(
        configs,
        [
            (lambda c: _pairs(c) * meta["BLOCK_R"], MAX_FORWARD_Z_REGISTERS),
            (lambda c: _pairs(c) * part, MAX_FORWARD_PAIR_REGISTERS),
        ],
    )


def prune_backward(configs: list[triton.Config], named_args: dict, **meta) -> list[triton.Config]:
    """The backward's autotune configs whose dW_r slice and pair tile fit (MAX_BACKWARD_DW_REGISTERS,
    MAX_BACKWARD_PAIR_REGISTERS)."""
    pair = meta["BLOCK_H"] * _operand_words(meta)
    return _fitting(
        configs,
        [
            (lambda c: meta["BLOCK_R"] * meta["BLOCK_H"], MAX_BACKWARD_DW_REGISTERS),
            (lambda c: _pairs(c) * pair, MAX_BACKWARD_PAIR_REGISTERS),
        ],
    )


def _pairs(config: triton.Config) -> int:
    return config.kwargs["BLOCK_I"] * config.kwargs["BLOCK_J"]


def _operand_words(meta: dict) -> float:
    """32-bit registers per element of the products' operands (DOT): 0.5 for bf16/fp16."""
    return meta["DOT"].primitive_bitwidth / 32


def _fitting(configs: list[triton.Config], tiles) -> list[triton.Config]:
    """The configs each of whose ``tiles`` (elements(config) 32-bit values, registers per thread at
    most) fits; the first config if none does."""
    fits = [c for c in configs if all(elements(c) <= registers * 32 * c.num_warps for elements, registers in tiles)]
    return fits or configs[:1]


def configs(tiles: list[Tile], pre_hook=None) -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_I": i, "BLOCK_J": j}, num_warps=w, num_stages=s, pre_hook=pre_hook)
        for i, j, w, s in tiles
    ]


def launch(kernel, tuned, grid, tile: Tile, tune: bool, args, meta) -> None:
    """Run the autotuned ``tuned`` when ``tune``, else ``kernel`` with the given tile."""
    if tune and autotuning():
        tuned[grid](*args, **meta)
        return
    i, j, warps, stages, *cap = tile
    if cap:
        meta = {**meta, "maxnreg": cap[0]}
    kernel[grid](*args, BLOCK_I=i, BLOCK_J=j, num_warps=warps, num_stages=stages, **meta)


@functools.cache
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _capability(x: torch.Tensor) -> int:
    """Compute capability major of x's GPU (9 under the interpreter)."""
    return torch.cuda.get_device_capability(x.device)[0] if x.device.type == "cuda" else 9


def forward_tile(x: torch.Tensor, n_own: int, n_loop: int) -> tuple[Tile, bool]:
    """(tile, autotune?) of the forward on x's device: a small set's one step, the fixed tile of fp32
    without TF32, else the autotune list."""
    small = small_set_tile(n_own, n_loop)
    fma = operand_kind(x) == "ieee"
    if small is not None:
        tile = (*small, SMALL_SET_WARPS, FORWARD_FIXED[3])
        return ((*tile, FMA_FORWARD_REGISTERS) if fma else tile), False
    if fma:
        return IEEE_FORWARD_TILE, False
    return FORWARD_FIXED, True


def backward_tile(
    x: torch.Tensor, n_own: int, n_loop: int, H: int, block_r: int, deterministic: bool
) -> tuple[Tile, bool]:
    """(tile, autotune?) of the backward on x's device: the fixed tile of fp32 without TF32, of a
    small set or of sm_80; else the autotune list, or in deterministic mode a fixed tile chosen by
    the size of W_r's slice (BLOCK_H × BLOCK_R)."""
    if operand_kind(x) == "ieee":
        return IEEE_BACKWARD_TILE, False
    small = small_set_tile(n_own, n_loop)
    if small is not None:  # one step per work item: a second stage would prefetch the next item and spill
        return (*small, SMALL_SET_WARPS, 1), False
    if x.device.type == "cuda" and _capability(x) < 9:
        return BACKWARD_SM80, False
    if not deterministic:
        return BACKWARD_FIXED, True
    narrow = operand_kind(x) == "half" and pow2(H, 2 * MIN_DOT) * block_r <= NARROW_W_ELEMENTS
    return (BACKWARD_FIXED_NARROW if narrow else BACKWARD_FIXED), False


def operand_kind(x: torch.Tensor) -> str:
    """How x's products multiply: "ieee" (fp32 by FMA on a GPU), "tf32" (4-byte operands: fp32 through
    TF32, and fp32/fp64 under the interpreter) or "half" (bf16/fp16)."""
    if x.device.type == "cuda" and precision(x.dtype) == "ieee":
        return "ieee"
    return "tf32" if x.dtype in (torch.float32, torch.float64) else "half"


def r_slice(x: torch.Tensor, R: int, H: int, forward: bool, one_step: bool = False) -> int:
    """BLOCK_R of a forward or backward launch on x's device (see R_SLICE, R_SLICE_SM80); ``one_step``:
    a small set's launch (ONE_STEP_R_CAP)."""
    kind = operand_kind(x)
    table, one_step_caps = R_SLICE, ONE_STEP_R_CAP
    if kind != "ieee" and _capability(x) < 9:
        table, one_step_caps = R_SLICE_SM80, ONE_STEP_R_CAP_SM80
    cap, elements = table[(forward, kind)]
    if one_step:
        cap = min(cap, one_step_caps.get((forward, kind), cap))
    return min(pow2(R), cap, max(MIN_DOT, elements // pow2(H, 2 * MIN_DOT)))


def programs(x: torch.Tensor, items: int) -> int:
    """Persistent programs for ``items`` work items: each loads W_r once and walks many items."""
    if x.device.type != "cuda":
        return max(1, min(items, INTERPRETER_PROGRAMS))
    return max(1, min(items, PROGRAMS_PER_SM * _multiprocessors(x.device.index)))


def on_device(x: torch.Tensor):
    """Launches go to x's GPU, whatever the current device is."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def acc_dtypes(dtype: torch.dtype) -> tuple[torch.dtype, tl.dtype]:
    """The accumulation dtype (torch, Triton): fp64 for fp64 inputs, else fp32."""
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """Operand dtype of tl.dot: the input dtype. The interpreter mishandles bf16 dots, so there the
    operands are rounded to bf16 and multiplied in fp32, which gives the same products."""
    if dtype == torch.bfloat16 and interpreting():
        return tl.float32
    return {torch.float64: tl.float64, torch.float32: tl.float32, torch.bfloat16: tl.bfloat16}.get(dtype, tl.float16)


def diff_dtype(dtype: torch.dtype) -> tl.dtype:
    """Dtype of a_i − b_j: bf16/fp16 on GPUs (packed half arithmetic, rounded as the reference's
    difference is), else the accumulation dtype."""
    if dtype in (torch.bfloat16, torch.float16) and not interpreting():
        return dot_dtype(dtype)
    return acc_dtypes(dtype)[1]


def h_parts(x: torch.Tensor, block_h: int) -> int:
    """Parts of H in which the forward forms its pair tile, one live at a time (H_PARTS), else 1."""
    channels, widths = H_PARTS.get(operand_kind(x), (block_h, ()))
    return block_h // channels if block_h in widths else 1


def precision(dtype: torch.dtype) -> str:
    """Full fp32 unless the user allowed TF32 for matmuls; half types ignore the setting."""
    if dtype == torch.float64 or (dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32):
        return "ieee"
    return "tf32"
