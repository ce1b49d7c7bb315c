"""Properties of the Triton kernels beyond the shared suite: NaN as in PyTorch, H = 0, bf16 error
against the reference's own, and deterministic mode reproducible across processes (under the
interpreter on CPU-only machines)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import triton
import triton.language as tl
from cases import Problem, device_for, exact_dtype, rel_error, run
from conftest import usable

import fastrel
from fastrel import activations
from fastrel.kernels import launch
from fastrel.kernels.activation import activation, pair_activation
from fastrel.kernels.rounding import round_to

NAME = "triton"


@contextlib.contextmanager
def _tf32(allowed: bool):
    """torch.backends.cuda.matmul.allow_tf32 set inside the block, restored after it."""
    previous, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.fixture
def sm90(monkeypatch):
    """Stand-ins for tensors on a pretend sm_90 GPU with TF32 off, by dtype (what launch.py reads)."""
    monkeypatch.setattr(launch, "_capability", lambda x: 9)
    with _tf32(False):
        yield lambda dtype: SimpleNamespace(device=torch.device("cuda", 0), dtype=dtype)


def test_nan_in_a_b_or_weight_gives_the_reference_nan_pattern_forward_and_backward():
    usable(NAME)
    device = device_for(NAME)
    for inner, outer in (("relu", "relu"), ("abs", "leaky_relu"), ("leaky_relu", "relu")):
        for poisoned in ("a", "b", "weight"):
            t = Problem(2, 5, 6, 4, 3, inner=inner, outer=outer, seed=7).tensors(device=device)
            index = {"a": (1, 2, 1), "b": (0, 3, 2), "weight": (1, 3)}[poisoned]
            t[poisoned][index] = float("nan")
            results = []
            for backend in (None, NAME):
                leaves = [t[k].clone().requires_grad_() for k in ("a", "b", "weight", "bias")]
                options = dict(inner=inner, outer=outer, key_mask=t["key_mask"])
                if backend is None:
                    out = fastrel.reference.global_relation(*leaves, **options)
                else:
                    out = fastrel.global_relation(*leaves, **options, backend=backend)
                out.backward(t["grad"])
                results.append([out.detach(), *(leaf.grad for leaf in leaves)])
            assert torch.isnan(results[1][0]).any(), f"NaN in {poisoned} was hidden"
            for label, ours, ref in zip(("out", "da", "db", "dweight", "dbias"), results[1], results[0]):
                assert torch.equal(torch.isnan(ours), torch.isnan(ref)), f"{inner}/{outer}, NaN in {poisoned}: {label}"


@pytest.mark.parametrize("outer", activations.OUTER)
def test_no_hidden_channels_give_the_bias_relation_on_rows_with_a_valid_key(outer):
    usable(NAME)
    device = device_for(NAME)
    problem = Problem(2, 3, 4, 0, 5, outer=outer, mask="empty_row", seed=9)
    t = problem.tensors(device=device)
    has_key = t["key_mask"].any(dim=1).double()[:, None, None]
    beta = t["bias"]
    out, (da, db, dweight, dbias) = run(problem, NAME, torch.float64, device)
    expected = activations.activate(beta, outer) * has_key.expand(2, 3, 5)
    assert rel_error(out, expected) <= 1e-12
    expected_dbias = activations.derivative(beta, outer) * (t["grad"] * has_key).sum(dim=(0, 1))
    assert rel_error(dbias, expected_dbias) <= 1e-12
    assert da.shape == (2, 3, 0) and db.shape == (2, 4, 0) and dweight.shape == (5, 0)


@pytest.mark.parametrize(
    "problem",
    [Problem(2, 8, 8, 16, 8, seed=seed) for seed in range(3)]
    + [Problem(2, 5, 7, 12, 9, inner="abs", outer="leaky_relu", mask="ragged", seed=1),
       Problem(1, 8, 40, 16, 8, inner="leaky_relu", seed=2)],
    ids=str,
)  # fmt: skip
def test_bf16_output_and_gradients_are_within_twice_the_reference_bf16_error(problem):
    """‖x − x64‖ / ‖x64‖ of g and of every gradient, against float64: at most 2× the bf16 reference's."""
    usable(NAME)
    device = device_for(NAME)
    exact = run(problem, None, torch.float64, "cpu")
    ref = run(problem, None, torch.bfloat16, "cpu")
    ours = run(problem, NAME, torch.bfloat16, device)
    for label, x, r, x64 in zip(("g", "da", "db", "dweight", "dbias"), [ours[0], *ours[1]], [ref[0], *ref[1]],
                                [exact[0], *exact[1]]):  # fmt: skip
        assert rel_error(x, x64) <= 2 * rel_error(r, x64), label


@triton.jit
def _rounded(x_ptr, like_ptr, out_ptr, n: tl.constexpr):
    i = tl.arange(0, n)
    tl.store(out_ptr + i, round_to(tl.load(x_ptr + i), tl.load(like_ptr + i).dtype).to(tl.float32))


def test_round_to_bf16_is_round_to_nearest_even_as_in_pytorch():
    """The interpreter truncates fp32 → bf16; the kernels' rounding must not (GPUs round to nearest even)."""
    usable(NAME)
    device = device_for(NAME)
    x = torch.randn(1024, generator=torch.Generator().manual_seed(3)).to(device)
    x[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 3.4e38])
    x[4] = torch.tensor(0x7FFFFFFF, dtype=torch.int32).view(torch.float32)  # a NaN whose rounding would carry
    out = torch.empty_like(x)
    _rounded[(1,)](x, x.bfloat16(), out, 1024)
    expected = x.bfloat16().float()
    assert torch.equal(out.isnan(), expected.isnan())
    assert torch.equal(out[5:], expected[5:]) and torch.equal(out[1:4], expected[1:4])


@triton.jit
def _activated(x_ptr, out_ptr, n: tl.constexpr, CODE: tl.constexpr):
    i = tl.arange(0, n)
    tl.store(out_ptr + i, activation(tl.load(x_ptr + i), CODE))


@pytest.mark.gpu
@pytest.mark.parametrize("name", activations.INNER)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_activation_of_every_half_precision_value_equals_pytorchs(dtype, name):
    """The kernels' δ on bf16/fp16 values (the pair tile's on GPUs), on all 65 536 bit patterns:
    leaky_relu's product with the fp32 slope rounded as PyTorch rounds it (a zero's sign aside)."""
    usable(NAME)
    device = device_for(NAME)
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    if device == "cpu" and dtype == torch.bfloat16:
        # The interpreter converts bf16 subnormals wrongly (GPUs exactly): inputs and results stay normal.
        x = torch.where((x != 0) & (x.abs() < 128 * torch.finfo(dtype).tiny), 1.0, x)
    x = x.to(device)
    out = torch.empty_like(x)
    _activated[(1,)](x, out, x.numel(), activations.CODES[name])
    expected = activations.activate(x, name)
    assert torch.equal(out.isnan(), expected.isnan())
    assert torch.equal(out.nan_to_num(), expected.nan_to_num())


@triton.jit
def _pair_tile(a_ptr, b_ptr, out_ptr, n: tl.constexpr, DIFF: tl.constexpr, CODE: tl.constexpr):
    """The forward's pair tile: δ(a_i − b_j) in DIFF, rounded to the inputs' dtype."""
    i = tl.arange(0, n)
    a, b = tl.load(a_ptr + i).to(DIFF), tl.load(b_ptr + i).to(DIFF)
    p = pair_activation(a[:, None], b[None, :], CODE, out_ptr.dtype.element_ty)
    tl.store(out_ptr + i[:, None] * n + i[None, :], round_to(p, out_ptr.dtype.element_ty))


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")  # inf − inf
@pytest.mark.parametrize("name", activations.INNER)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_pair_tile_is_the_rounded_difference_then_the_activation_bitwise(dtype, name):
    """On a GPU the difference is taken in bf16/fp16 (relu and leaky_relu fused with it in inline
    PTX); under the interpreter in fp32, then rounded. Either way a − b is rounded as PyTorch's
    subtraction rounds it, then δ applied as PyTorch applies it, NaN kept (every pair of 64 values,
    with NaN, ±inf, ±0 and a tiny one)."""
    usable(NAME)
    device = device_for(NAME)
    values = torch.randn(64, generator=torch.Generator().manual_seed(5)) * 3
    values[:9] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1.0, 3.0, -(2**-110), -(2**-120)])
    if device == "cpu":  # the interpreter's bf16 conversions mishandle the subnormal leaky_relu(−2⁻¹²⁰)
        values[8] = -(2**-100)
    a, b = values.to(dtype).to(device), values.flip(0).to(dtype).to(device)
    out = torch.empty(64, 64, dtype=dtype, device=device)
    _pair_tile[(1,)](a, b, out, 64, launch.diff_dtype(dtype), activations.CODES[name])
    expected = activations.activate(a[:, None] - b[None, :], name)
    assert torch.equal(out.isnan(), expected.isnan())
    assert torch.equal(out.nan_to_num(), expected.nan_to_num())


_TWICE = textwrap.dedent(
    """
    import os, sys
    os.environ.setdefault("TRITON_INTERPRET", "1")
    sys.path.insert(0, sys.argv[1])
    import torch
    from cases import Problem, run
    problem = Problem(2, 13, 11, 12, 9, mask="ragged", seed=21)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out, grads = run(problem, "triton", torch.float32, device, deterministic=True)
    sys.stdout.buffer.write(b"".join(x.cpu().numpy().tobytes() for x in (out, *grads)))
    """
)


def test_deterministic_backward_is_bitwise_equal_across_processes():
    usable(NAME)
    tests = str(Path(__file__).parent)
    outputs = [
        subprocess.run([sys.executable, "-c", _TWICE, tests], capture_output=True, check=True).stdout
        for _ in range(2)
    ]
    assert len(outputs[0]) > 0 and outputs[0] == outputs[1]


@pytest.mark.parametrize(
    "capability, dtype, tile, r_slice",
    [
        (9, torch.bfloat16, launch.BACKWARD_FIXED, 128),
        (8, torch.bfloat16, launch.BACKWARD_SM80, 32),
        (9, torch.float32, launch.IEEE_BACKWARD_TILE, 16),
        (8, torch.float32, launch.IEEE_BACKWARD_TILE, 16),
    ],
)
def test_backward_tile_and_r_slice_follow_the_device_capability(monkeypatch, capability, dtype, tile, r_slice):
    """The host picks the tile and R slice declared for each device capability and precision; only
    sm_90 fast mode autotunes."""
    monkeypatch.setattr(launch, "_capability", lambda x: capability)
    x = SimpleNamespace(device=torch.device("cuda", 0), dtype=dtype)
    with _tf32(False):
        assert launch.backward_tile(x, 128, 128, 256, r_slice, deterministic=True) == (tile, False)
        tuned = (capability, dtype) == (9, torch.bfloat16)
        assert launch.backward_tile(x, 128, 128, 256, r_slice, deterministic=False) == (tile, tuned)
        assert launch.r_slice(x, 128, 256, forward=False) == r_slice
        assert launch.r_slice(x, 128, 256, forward=True) == (64 if dtype == torch.float32 or capability == 8 else 128)


@pytest.mark.parametrize("H, block_r, tile", [
    (128, 64, launch.BACKWARD_FIXED_NARROW), (64, 128, launch.BACKWARD_FIXED_NARROW),
    (128, 128, launch.BACKWARD_FIXED), (256, 128, launch.BACKWARD_FIXED), (256, 32, launch.BACKWARD_FIXED_NARROW),
])  # fmt: skip
def test_deterministic_mode_takes_the_four_warp_tile_where_w_r_is_small(sm90, H, block_r, tile):
    """On sm_90 deterministic mode (no autotuning) runs 4×16 with 4 warps, two programs per SM, when
    W_r's slice is at most 128 × 64 elements (N = 1024's shape, where it was measured faster), else
    with 8 warps."""
    x = sm90(torch.bfloat16)
    assert launch.backward_tile(x, 1024, 1024, H, block_r, deterministic=True) == (tile, False)
    assert launch.backward_tile(x, 1024, 1024, H, block_r, deterministic=False) == (launch.BACKWARD_FIXED, True)


@pytest.mark.parametrize("forward, dtype, tf32, H, expected", [
    (False, torch.bfloat16, False, 256, 128), (False, torch.bfloat16, False, 512, 64),
    (False, torch.float16, False, 1024, 32), (False, torch.float32, True, 256, 32),
    (False, torch.float32, True, 512, 16), (True, torch.bfloat16, False, 256, 256),
    (True, torch.bfloat16, False, 512, 128), (True, torch.float32, True, 512, 64),
    (True, torch.float32, False, 512, 32),
])  # fmt: skip
def test_r_slice_keeps_the_w_slice_within_shared_memory(monkeypatch, forward, dtype, tf32, H, expected):
    """On sm_90 the R slice shrinks as H grows, faster with fp32 operands, so that W_r's slice fits
    the block's shared memory (launch.R_SLICE)."""
    monkeypatch.setattr(launch, "_capability", lambda x: 9)
    x = SimpleNamespace(device=torch.device("cuda", 0), dtype=dtype)
    with _tf32(tf32):
        assert launch.r_slice(x, 256, H, forward=forward) == expected


@pytest.mark.parametrize("forward, dtype, tf32, H, one_step, expected", [
    (False, torch.bfloat16, False, 256, False, 32), (False, torch.float16, False, 128, False, 32),
    (False, torch.bfloat16, False, 512, False, 16), (False, torch.bfloat16, False, 256, True, 16),
    (False, torch.float32, True, 256, False, 16), (False, torch.float32, False, 256, False, 16),
    (True, torch.bfloat16, False, 256, False, 64), (True, torch.bfloat16, False, 256, True, 64),
    (True, torch.float32, True, 256, False, 64), (True, torch.bfloat16, False, 512, False, 32),
])  # fmt: skip
def test_sm80_r_slices_keep_spills_out_of_the_loop(monkeypatch, forward, dtype, tf32, H, one_step, expected):
    """On sm_80 (mma.sync, every accumulator in registers) the forward takes R slices of 64 (32 at
    H = 512); the backward 32 in bf16/fp16 up to H = 256 (twice the tensor-core share of its loop
    against 16), and 16 with TF32 or FMA products, at H = 512 and for a clip's one step."""
    monkeypatch.setattr(launch, "_capability", lambda x: 8)
    x = SimpleNamespace(device=torch.device("cuda", 0), dtype=dtype)
    with _tf32(tf32):
        assert launch.r_slice(x, 256, H, forward=forward, one_step=one_step) == expected


@pytest.mark.parametrize("deterministic", [True, False])
def test_sm80_r_slices_give_the_reference_results(monkeypatch, deterministic):
    """With sm_80's R slices (forward 64, backward 16 for 4-byte operands) R = 80 runs as 2 forward
    and 5 backward slices; output and gradients are the reference's."""
    usable(NAME)
    monkeypatch.setattr(launch, "_capability", lambda x: 8)
    problem = Problem(B=2, N=19, M=13, H=24, R=80, mask="ragged", seed=5)
    dtype = exact_dtype(NAME)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    ours = run(problem, NAME, dtype, device_for(NAME), deterministic=deterministic)
    ref = run(problem, None, torch.float64, "cpu")
    for label, x, r in zip(("g", "da", "db", "dweight", "dbias"), [ours[0], *ours[1]], [ref[0], *ref[1]]):
        torch.testing.assert_close(x.cpu().double(), r, rtol=tolerance, atol=tolerance, msg=label)


@pytest.mark.parametrize("tile", [launch.BACKWARD_SM80, launch.IEEE_BACKWARD_TILE])
@pytest.mark.parametrize("deterministic", [True, False])
def test_device_backward_tiles_match_the_reference(monkeypatch, tile, deterministic):
    """The tiles of sm_80 and of fp32 without TF32 (not the interpreter's own) give the reference's
    gradients in both modes."""
    usable(NAME)
    monkeypatch.setattr(launch, "backward_tile", lambda *args: (tile, False))
    problem = Problem(B=2, N=19, M=13, H=24, R=20, mask="ragged")
    ours = run(problem, NAME, torch.float32, device_for(NAME), deterministic=deterministic)
    ref = run(problem, None, torch.float32, "cpu")
    for label, x, r in zip(("g", "da", "db", "dweight", "dbias"), [ours[0], *ours[1]], [ref[0], *ref[1]]):
        torch.testing.assert_close(x.cpu(), r, rtol=1e-4, atol=1e-4, msg=label)


def test_forward_tile_follows_the_set_size_and_precision(sm90):
    """A clip runs one step, fp32 without TF32 its fixed FMA tile, everything else autotunes; the
    FMA tiles state ptxas's register limit."""
    half, ieee = sm90(torch.bfloat16), sm90(torch.float32)
    clip = (8, 8, launch.SMALL_SET_WARPS, launch.FORWARD_FIXED[3])
    assert launch.forward_tile(half, 128, 128) == (launch.FORWARD_FIXED, True)
    assert launch.forward_tile(ieee, 128, 128) == (launch.IEEE_FORWARD_TILE, False)
    assert launch.IEEE_FORWARD_TILE[4] == launch.FMA_FORWARD_REGISTERS
    assert launch.forward_tile(half, 8, 8) == (clip, False)
    assert launch.forward_tile(ieee, 8, 8) == ((*clip, launch.FMA_FORWARD_REGISTERS), False)


def test_the_fp32_forward_tile_matches_the_reference(monkeypatch):
    """The forward's fixed tile of fp32 without TF32 (not the interpreter's own) gives the reference's g."""
    usable(NAME)
    monkeypatch.setattr(launch, "forward_tile", lambda *args: (launch.IEEE_FORWARD_TILE, False))
    problem = Problem(B=2, N=37, M=13, H=24, R=20, mask="ragged")
    ours = run(problem, NAME, torch.float32, device_for(NAME))
    ref = run(problem, None, torch.float32, "cpu")
    torch.testing.assert_close(ours[0].cpu(), ref[0], rtol=1e-4, atol=1e-4)


def test_the_forward_forms_its_pair_tile_in_parts_of_h_where_whole_it_spilled(sm90):
    """Parts of 64 channels for TF32 at H = 128 and 256, of 128 for bf16/fp16 at H = 512; every other
    case (fp32 by FMA, other widths) keeps the whole tile."""
    ieee = sm90(torch.float32)
    assert [launch.h_parts(ieee, h) for h in (128, 256)] == [1, 1]
    assert [launch.h_parts(sm90(torch.bfloat16), h) for h in (128, 256, 512, 1024)] == [1, 1, 4, 1]
    assert launch.h_parts(sm90(torch.float16), 512) == 4 and launch.h_parts(sm90(torch.float64), 256) == 1
    with _tf32(True):
        assert [launch.h_parts(ieee, h) for h in (32, 64, 128, 256, 512)] == [1, 1, 2, 4, 1]


@pytest.mark.gpu
def test_the_bf16_forward_formed_in_parts_of_h_is_within_twice_the_reference_error():
    """H = 300 (BLOCK_H = 512): four parts of 128 channels, the last partly past H."""
    usable(NAME)
    problem = Problem(B=2, N=9, M=21, H=300, R=24, mask="ragged", seed=5)
    exact = run(problem, None, torch.float64, "cpu")[0]
    ours = run(problem, NAME, torch.bfloat16, device_for(NAME))[0]
    ref = run(problem, None, torch.bfloat16, device_for(NAME))[0]
    assert rel_error(ours, exact) <= 2 * rel_error(ref, exact) + torch.finfo(torch.bfloat16).eps


@pytest.mark.gpu
@pytest.mark.parametrize("H", [100, 130])
def test_the_tf32_forward_formed_in_parts_of_h_matches_the_reference(H):
    """With TF32 allowed the forward forms its 4-byte pair tile in parts of 64 channels (2 parts for
    H = 100, 4 for H = 130, the last ones partly or wholly past H): g within twice the error of the
    reference's own fp32 (TF32 on a GPU) against float64."""
    usable(NAME)
    with _tf32(True):
        assert launch.precision(torch.float32) == "tf32"
        problem = Problem(B=2, N=9, M=21, H=H, R=24, mask="ragged", seed=4)
        exact = run(problem, None, torch.float64, "cpu")[0]
        ours = run(problem, NAME, torch.float32, device_for(NAME))[0]
        ref = run(problem, None, torch.float32, device_for(NAME))[0]
    assert rel_error(ours, exact) <= 2 * rel_error(ref, exact) + torch.finfo(torch.float32).eps


@pytest.mark.parametrize("programs, r_slice", [(1, 32), (2, 16), (3, 32), (5, 16), (11, 32)])
def test_deterministic_db_is_right_however_the_programs_split_the_batch(monkeypatch, programs, r_slice):
    """Deterministic mode adds db into one slab per program and batch element; sum_slabs_kernel sums them.
    Programs that end inside a batch element, that cover several, that have no items (11 programs
    for 9 work items), and two R slices: all give the reference's db."""
    usable(NAME)
    monkeypatch.setattr(launch, "programs", lambda x, items: programs)
    monkeypatch.setattr(launch, "r_slice", lambda *args, **kwargs: r_slice)
    monkeypatch.setattr(launch, "backward_tile", lambda *args: ((4, 16, 8, 1), False))
    problem = Problem(B=3, N=10, M=7, H=16, R=24, mask="ragged", seed=3)  # 3 row blocks per element
    ours = run(problem, NAME, torch.float64, device_for(NAME), deterministic=True)
    ref = run(problem, None, torch.float64, "cpu")
    for label, x, r in zip(("da", "db", "dweight", "dbias"), ours[1], ref[1]):
        torch.testing.assert_close(x.cpu(), r, rtol=1e-10, atol=1e-10, msg=label)


def test_a_small_sets_one_step_launch_keeps_its_smaller_r_slice(sm90):
    """The one-step launch of a clip keeps R slices of 64 in the bf16 backward; the IEEE fp32 forward
    takes the 64 of larger sets."""
    half, ieee = sm90(torch.bfloat16), sm90(torch.float32)
    assert launch.r_slice(half, 128, 256, forward=False, one_step=True) == 64
    assert launch.r_slice(half, 128, 256, forward=True, one_step=True) == 128
    assert launch.r_slice(ieee, 128, 256, forward=True, one_step=True) == 64 == launch.r_slice(ieee, 128, 256, True)


def test_every_autotuned_backward_config_zeroes_db_before_it_runs():
    """The host leaves db unzeroed for an autotuned launch: each config's pre-hook zeroes it."""
    from fastrel.kernels import global_relation

    for config in global_relation._backward_rows_tuned.configs:
        db = torch.ones(3, 4)
        config.pre_hook({"db_ptr": db})
        assert torch.equal(db, torch.zeros(3, 4))


def test_the_autotuners_key_sets_by_size_class_not_by_exact_length():
    """A new set length within a size class reuses the tuned tile (RGTR over tracklets of many lengths)."""
    from fastrel.kernels import global_relation

    for tuned in (global_relation._forward_tuned, global_relation._backward_rows_tuned):
        assert "SIZE_CLASS" in tuned.keys and "N" not in tuned.keys and "M" not in tuned.keys
    assert [launch.size_class(n, 8) for n in (1, 16, 17, 100, 128, 129)] == [16, 16, 32, 128, 128, 256]


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("N, M", [(8, 8), (5, 70)])
def test_the_mean_over_masked_keys_is_counted_in_the_kernels(deterministic, N, M):
    """The kernels count Σ_j m_j themselves (a clip's one key tile; 70 keys in blocks of 16), with a
    batch element whose keys are all masked out: output and gradients are the reference's."""
    usable(NAME)
    problem = Problem(B=3, N=N, M=M, H=16, R=24, mask="empty_row", seed=5)
    ours = run(problem, NAME, torch.float64, device_for(NAME), deterministic=deterministic)
    ref = run(problem, None, torch.float64, "cpu")
    torch.testing.assert_close(ours[0].cpu(), ref[0], rtol=1e-10, atol=1e-10)
    for label, x, r in zip(("da", "db", "dweight", "dbias"), ours[1], ref[1]):
        torch.testing.assert_close(x.cpu(), r, rtol=1e-10, atol=1e-10, msg=label)


@pytest.mark.parametrize("M, mask, selects", [(32, "none", False), (37, "none", True), (32, "ragged", True)])
def test_the_forward_selects_pairs_only_where_a_key_tile_can_exclude_some(M, mask, selects):
    """Whole key tiles without a key mask skip the per-pair selection (rows past N, here 5 of a
    block, are computed and never stored); a partial tile or a key mask selects. Either way the
    output and gradients are the reference's."""
    from fastrel.kernels import global_relation as kernels

    usable(NAME)
    rule = kernels._forward_kernel.values["SELECT_KEYS"]
    assert all(rule(dict(HAS_MASK=mask != "none", M=M, BLOCK_J=j)) == selects for j in (16, 32))
    problem = Problem(B=2, N=5, M=M, H=16, R=24, mask=mask, seed=11)
    ours = run(problem, NAME, torch.float64, device_for(NAME))
    ref = run(problem, None, torch.float64, "cpu")
    torch.testing.assert_close(ours[0].cpu(), ref[0], rtol=1e-10, atol=1e-10)
    for label, x, r in zip(("da", "db", "dweight", "dbias"), ours[1], ref[1]):
        torch.testing.assert_close(x.cpu(), r, rtol=1e-10, atol=1e-10, msg=label)


def test_the_forward_folds_two_pairs_per_slot_only_for_tensor_core_tiles_of_sixteen_keys(monkeypatch):
    """Pairs p and p + 8 share an accumulator slot where both are keys of one row (BLOCK_J a multiple
    of 16) and, on a GPU, where the product runs on tensor cores (an FMA product holds the two rows
    in different threads); the interpreter folds at any precision."""
    rule = launch.pair_fold
    assert [rule(j, "tf32") for j in (8, 16, 32, 64)] == [1, 2, 2, 2]
    assert rule(32, "ieee") == 2
    monkeypatch.setattr(launch, "interpreting", lambda: False)
    assert [rule(j, "tf32") for j in (8, 16, 32)] == [1, 2, 2]
    assert [rule(j, "ieee") for j in (8, 16, 32)] == [1, 1, 1]


FOLD_TILES = [(4, 16, 4, 2), (2, 32, 4, 2), (1, 64, 4, 2), (8, 8, 4, 2), (4, 16, 4, 2, 128)]


@pytest.mark.gpu
@pytest.mark.parametrize("tile", dict.fromkeys(FOLD_TILES + launch.FORWARD_TILES))
def test_the_folded_forward_matches_the_reference_at_every_tile(monkeypatch, tile):
    """Folded (key tiles of 16, 32, 64) or not (8), with a partial last key tile, a ragged key mask
    and rows past N, the forward gives the reference's g at each of these tiles (one capped at 128
    registers) and at the autotune configs: in float64 to rounding under the interpreter (float32 by
    FMA, unfolded, on a GPU), in bf16 within twice the bf16 reference's own error (tensor cores on a
    GPU)."""
    usable(NAME)
    monkeypatch.setattr(launch, "forward_tile", lambda *args: (tile, False))
    problem = Problem(B=2, N=5, M=37, H=16, R=24, mask="ragged", seed=3)
    exact = run(problem, None, torch.float64, "cpu")[0]
    dtype = exact_dtype(NAME)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    ours = run(problem, NAME, dtype, device_for(NAME))[0]
    torch.testing.assert_close(ours.cpu().double(), exact, rtol=tolerance, atol=tolerance)
    ours = run(problem, NAME, torch.bfloat16, device_for(NAME))[0]
    ref = run(problem, None, torch.bfloat16, device_for(NAME))[0]
    assert rel_error(ours, exact) <= 2 * rel_error(ref, exact) + torch.finfo(torch.bfloat16).eps


def _tiles(configs: list[triton.Config]) -> list[tuple[int, int, int]]:
    return [(c.kwargs["BLOCK_I"], c.kwargs["BLOCK_J"], c.num_warps) for c in configs]


def test_autotuning_skips_tiles_whose_accumulators_or_pair_tiles_would_not_fit_in_registers():
    """bf16 at the paper shape (H = 256, R = 128): the forward's 8×16 tile with 4 warps (z: 128
    registers per thread) and the backward's 4-warp tile (dW_r: 256) are not timed; with sm_80's R
    slices of 64 the forward's 8×16/4 is not either (its pair tile: 128). At N = 1024's (H = 128,
    R = 64) every tile is. TF32 operands (4 bytes) leave out the backward's 4-warp tile at N = 1024
    (pair tile: 64). The first config stays if none fits."""
    forward, backward = launch.configs(launch.FORWARD_TILES), launch.configs(launch.BACKWARD_TILES)
    half, tf32 = {"DOT": tl.bfloat16, "H_PARTS": 1}, {"DOT": tl.float32, "H_PARTS": 1}

    def tuned_forward(meta: dict, **sizes) -> list[tuple[int, int, int]]:
        return _tiles(launch.prune_forward(forward, {}, **meta, **sizes))

    def tuned_backward(meta: dict, **sizes) -> list[tuple[int, int, int]]:
        return _tiles(launch.prune_backward(backward, {}, **meta, **sizes))

    assert tuned_forward(half, BLOCK_H=256, BLOCK_R=128) == [(4, 16, 4), (8, 16, 8)]
    assert tuned_forward(half, BLOCK_H=256, BLOCK_R=64) == [(4, 16, 4), (8, 16, 8)]
    assert tuned_forward(half, BLOCK_H=128, BLOCK_R=64) == _tiles(forward)
    assert tuned_forward(half, BLOCK_H=256, BLOCK_R=1024) == [(4, 16, 4)]
    assert tuned_forward({**tf32, "H_PARTS": 4}, BLOCK_H=256, BLOCK_R=128) == [(4, 16, 4), (8, 16, 8)]
    assert tuned_backward(half, BLOCK_R=128, BLOCK_H=256) == [(4, 16, 8)]
    assert tuned_backward(half, BLOCK_R=64, BLOCK_H=128) == _tiles(backward)
    assert tuned_backward(half, BLOCK_R=256, BLOCK_H=512) == [(4, 16, 8)]
    assert tuned_backward(tf32, BLOCK_R=64, BLOCK_H=128) == [(4, 16, 8)]
    assert tuned_backward(tf32, BLOCK_R=32, BLOCK_H=256) == [(4, 16, 8)]


@pytest.mark.parametrize("deterministic", [False, True])
def test_a_call_issues_no_host_side_arithmetic(monkeypatch, deterministic):
    """Besides its kernels, a masked RGTR-clip call asks the host only for buffers and views, and
    for db's zeroing in fast mode: no reduction or cast (each would be a launch, and a batch of clips
    is bound by the host's time to issue them)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from fastrel.kernels import global_relation as kernels

    usable(NAME)
    launches = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(grid)

    monkeypatch.setattr(launch, "launch", lambda kernel, tuned, grid, *args: launches.append(grid))
    monkeypatch.setattr(kernels, "sum_slabs_kernel", Kernel())
    monkeypatch.setattr(kernels, "sum_parts_kernel", Kernel())

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    t = Problem(B=6, N=8, M=8, H=16, R=24, mask="ragged", seed=1).tensors(torch.float32, "cpu")
    inputs = (t["a"], t["b"], t["weight"], t["bias"], t["key_mask"], "relu", "relu")
    with Ops() as ops:
        kernels.forward(*inputs)
        kernels.backward(t["grad"], *inputs, deterministic)
    allowed = {"empty", "new_empty", "view", "detach", "select", "slice", "zero_", "zeros", "fill_"}
    assert set(ops.names) <= allowed, ops.names
    assert sum(name in ("zero_", "zeros", "fill_") for name in ops.names) <= 1, ops.names
    assert len(launches) == (4 if deterministic else 3), launches


@pytest.mark.parametrize("dtype, deterministic", [(torch.float64, True), (torch.bfloat16, False)])
def test_the_partial_sums_do_not_depend_on_how_programs_split_the_columns(monkeypatch, dtype, deterministic):
    """sum_parts_kernel with 32 columns per program (dW_r's end inside a block, 11 program rows, two
    R slices; in bf16 fast mode also db's cast) gives bitwise the one-block sums, and the reference's
    gradients."""
    usable(NAME)
    monkeypatch.setattr(launch, "programs", lambda x, items: 11)
    monkeypatch.setattr(launch, "r_slice", lambda *args, **kwargs: 16)
    problem = Problem(B=3, N=10, M=7, H=10, R=24, mask="ragged", seed=4)
    wide = run(problem, NAME, dtype, device_for(NAME), deterministic=deterministic)
    monkeypatch.setattr(launch, "INTERPRETER_SUM_BLOCK", 32)
    narrow = run(problem, NAME, dtype, device_for(NAME), deterministic=deterministic)
    for label, x, y in zip(("da", "db", "dweight", "dbias"), wide[1], narrow[1]):
        assert torch.equal(x, y), label
    if dtype == torch.float64:
        for label, x, r in zip(("da", "db", "dweight", "dbias"), narrow[1], run(problem, None, dtype, "cpu")[1]):
            torch.testing.assert_close(x.cpu(), r, rtol=1e-10, atol=1e-10, msg=label)
