"""The CUDA C++ kernels' arithmetic, checked on the CPU on every run.

csrc/global_relation_cuda.cu (host code and launch plans) and the kernels of its .cuh are compiled
by g++ against tests/emulation/cuda_emulation.h: a block's threads run as fibers that meet at
``__syncthreads``, WMMA runs in fp32, the device's limits are checked at each launch. Forward and
every gradient are compared with fastrel.reference on tails, masks, clips and large sets, in
every dtype, both backward modes and every activation pair.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch
from cases import Problem, rel_error, run

from fastrel import activations, reference
from fastrel.activations import CODES

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("out", "da", "db", "dweight", "dbias")
LOW_PRECISION = (torch.bfloat16, torch.float16)
H100_SHARED_OPTIN = 232448


@pytest.fixture(scope="session")
def module():
    """The emulation module, compiled once per run (build/cuda_emulation keeps it between runs)."""
    from torch.utils import cpp_extension

    build = ROOT / "build" / "cuda_emulation"
    build.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        "fastrel_cuda_emulation",
        [str(ROOT / "tests" / "emulation" / "module.cpp")],
        extra_cflags=["-O2", "-DFASTREL_HOST_EMULATION", "-Wno-unknown-pragmas"],
        extra_include_paths=[str(ROOT / "csrc"), str(ROOT / "tests" / "emulation")],
        build_directory=str(build),
    )


@pytest.fixture
def emulated(module):
    """The module with the emulated device reset to an H100's limits."""
    module.configure(multiprocessors=132, shared_optin=H100_SHARED_OPTIN, max_grid_yz=65535)
    return module


def emulate(module, problem: Problem, dtype: torch.dtype, deterministic: bool = True, tensors=None):
    """Forward and (da, db, dweight, dbias) of the emulated CUDA backend."""
    t = tensors if tensors is not None else problem.tensors(dtype)
    inputs = [t[k].contiguous() if t[k] is not None else None for k in ("a", "b", "weight", "bias", "key_mask")]
    codes = (CODES[problem.inner], CODES[problem.outer])
    out = module.forward(*inputs, *codes)
    grads = module.backward(t["grad"].to(dtype).contiguous(), *inputs, *codes, deterministic)
    return out, list(grads)


def assert_matches_reference(module, problem: Problem, dtype: torch.dtype, deterministic: bool = True) -> None:
    """Exact dtypes: relative error as the backend tests allow. bf16/fp16: within twice the error
    of the reference computed in that dtype, as the backend tests allow."""
    out, grads = emulate(module, problem, dtype, deterministic)
    exact_out, exact_grads = run(problem, None, torch.float64, "cpu")
    if dtype in LOW_PRECISION:
        ref_out, ref_grads = run(problem, None, dtype, "cpu")
    for k, (label, x, exact) in enumerate(zip(NAMES, [out, *grads], [exact_out, *exact_grads])):
        if exact is None:  # no bias: no dβ to compare
            continue
        error = rel_error(x, exact)
        if dtype in LOW_PRECISION:
            allowed = 2 * rel_error([ref_out, *ref_grads][k], exact) + torch.finfo(dtype).eps
        else:
            allowed = 1e-9 if dtype == torch.float64 else 5e-5
        assert error <= allowed, f"{label}: error {error:.2e} > {allowed:.2e} for {problem}, {dtype}"


PAIRS = list(itertools.product(activations.INNER, activations.OUTER))


def _clip_problems() -> list[Problem]:
    """One small set per activation pair (the backward's one-block-per-clip mode), random tails."""
    rng = random.Random(2024)
    problems = []
    for k, (inner, outer) in enumerate(PAIRS):
        sizes = [rng.randint(1, 40) for _ in range(4)]
        mask = ("ragged", "empty_row", "none")[k % 3]
        batch = max(rng.randint(1, 3), 2 if mask == "empty_row" else 1)  # an all-false row and a live one
        problems.append(Problem(batch, *sizes, inner=inner, outer=outer, mask=mask, bias=k % 4 != 3,
                                ties=k % 5 == 0, seed=k))
    return problems


@pytest.mark.parametrize("problem", _clip_problems(), ids=lambda p: f"{p.inner}-{p.outer}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_emulated_kernels_match_reference_on_small_sets_for_every_activation_pair(emulated, problem, dtype):
    assert_matches_reference(emulated, problem, dtype, deterministic=problem.seed % 2 == 0)


LARGE = [
    Problem(2, 70, 67, 19, 9, inner="relu", outer="relu", mask="ragged", seed=1),  # rows, keys past a clip
    Problem(2, 21, 75, 70, 66, inner="leaky_relu", outer="leaky_relu", mask="empty_row", seed=2),  # H, R tails
    Problem(2, 66, 13, 5, 130, inner="abs", outer="identity", mask="ragged", seed=3),  # σ = identity, R tails
]


@pytest.mark.parametrize("problem", LARGE, ids=lambda p: f"{p.N}x{p.M}x{p.H}x{p.R}")
@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "atomic"])
def test_emulated_kernels_match_reference_on_large_sets_in_both_backward_modes(emulated, problem, deterministic):
    assert_matches_reference(emulated, problem, torch.float32, deterministic)


@pytest.mark.parametrize("outer", activations.OUTER)
@pytest.mark.parametrize("sizes", [(9, 7, 6, 5), (70, 67, 6, 5)], ids=["clip", "large"])
@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "atomic"])
def test_a_set_without_valid_keys_beside_a_live_one_matches_reference_for_every_outer(
    emulated, outer, sizes, deterministic
):
    """No bias and no gradient where a set has no valid key, the bias and every gradient elsewhere,
    for every σ: σ = identity included, which the pair kernels run like any other σ."""
    problem = Problem(2, *sizes, inner="abs", outer=outer, mask="empty_row", seed=12)
    assert_matches_reference(emulated, problem, torch.float32, deterministic)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize(
    "problem",
    [
        Problem(2, 23, 17, 37, 70, inner="relu", outer="relu", mask="ragged", seed=4),
        Problem(1, 66, 9, 16, 20, inner="abs", outer="leaky_relu", mask="none", seed=5),
    ],
    ids=["clip", "large"],
)
def test_emulated_tensor_core_path_error_is_within_twice_the_reference_own_error(emulated, problem, dtype):
    assert_matches_reference(emulated, problem, dtype, deterministic=problem.N <= 64)


def test_deterministic_backward_uses_no_atomics_and_repeats_bitwise(emulated):
    large = Problem(1, 70, 66, 8, 5, mask="ragged", seed=6)
    emulated.configure()
    first = emulate(emulated, large, torch.float32, deterministic=True)
    assert emulated.atomics() == 0
    again = emulate(emulated, large, torch.float32, deterministic=True)
    assert all(torch.equal(x, y) for x, y in zip([first[0], *first[1]], [again[0], *again[1]]))
    emulate(emulated, large, torch.float32, deterministic=False)
    assert emulated.atomics() > 0, "a large set's fast backward adds db with atomics"
    emulated.configure()
    clip = Problem(3, 9, 8, 8, 5, mask="ragged", seed=6)
    emulate(emulated, clip, torch.float32, deterministic=False)
    assert emulated.atomics() == 0, "a clip's backward reduces db in the block, in a fixed order"


@pytest.mark.parametrize("problem", [LARGE[0], _clip_problems()[0]], ids=["large", "clip"])
def test_dz_tile_in_device_memory_and_one_block_per_device_give_the_same_gradients(emulated, problem):
    dz_bytes = 64 * (64 + 1) * 8  # kPairs x dz_stride(R <= 64) in fp64
    expected = emulate(emulated, problem, torch.float64)
    assert emulated.most_dynamic_shared() >= dz_bytes
    # Shared memory for the clip sums (32 KiB in fp64) but not for the dz tile: dz goes to device
    # memory; one multiprocessor: one block strides over every tile and writes one slab.
    emulated.configure(multiprocessors=1, shared_optin=48 * 1024 + 32 * 1024)
    got = emulate(emulated, problem, torch.float64)
    assert emulated.most_dynamic_shared() < dz_bytes
    for label, x, y in zip(NAMES, [got[0], *got[1]], [expected[0], *expected[1]]):
        assert rel_error(x, y) <= 1e-12, label


@pytest.mark.parametrize("outer", activations.OUTER)
def test_batch_sizes_past_the_grid_y_and_z_limit(emulated, outer):
    emulated.configure(max_grid_yz=1)  # any batch > 1 in grid axis y or z would fail to launch
    assert_matches_reference(emulated, Problem(5, 18, 7, 6, 3, outer=outer, mask="ragged", seed=7), torch.float64)


@pytest.mark.parametrize("outer", activations.OUTER)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_zero_hidden_channels_give_sigma_of_beta_on_rows_with_a_key(emulated, outer, dtype):
    problem = Problem(3, 5, 4, 0, 6, outer=outer, mask="empty_row", seed=8)
    t = problem.tensors(dtype)
    out, (da, db, dweight, dbias) = emulate(emulated, problem, dtype, tensors=t)
    has_key = t["key_mask"].any(dim=1)
    tolerance = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=1e-12, atol=1e-12)
    expected = activations.activate(t["bias"].double(), outer).expand(3, 5, 6) * has_key[:, None, None]
    torch.testing.assert_close(out.double(), expected, **tolerance)
    assert da.shape == (3, 5, 0) and db.shape == (3, 4, 0) and dweight.shape == (6, 0)
    slope = activations.derivative(t["bias"].double(), outer)
    expected_dbias = (t["grad"].to(dtype).double() * has_key[:, None, None]).sum(dim=(0, 1)) * slope
    torch.testing.assert_close(dbias.double(), expected_dbias, **tolerance)


@pytest.mark.parametrize("inner, outer", PAIRS)
def test_nan_in_a_row_reaches_the_outputs_it_reaches_in_pytorch(emulated, inner, outer):
    problem = Problem(2, 6, 5, 7, 3, inner=inner, outer=outer, mask="ragged", seed=9)
    t = problem.tensors(torch.float64)
    t["a"][1, 2, 3] = float("nan")
    out, _ = emulate(emulated, problem, torch.float64, tensors=t)
    leaves = {k: t[k] for k in ("a", "b", "weight", "bias")}
    expected = reference.global_relation(**leaves, inner=inner, outer=outer, key_mask=t["key_mask"])
    assert torch.equal(out.isnan(), expected.isnan())
    assert out.isnan().any()


@pytest.mark.parametrize("inner, outer", [("relu", "relu"), ("abs", "leaky_relu"), ("relu", "identity")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_nan_or_inf_in_an_excluded_key_changes_nothing(emulated, inner, outer, dtype):
    problem = Problem(2, 9, 7, 6, 5, inner=inner, outer=outer, mask="ragged", seed=10)
    clean = problem.tensors(dtype)
    excluded = (~clean["key_mask"]).nonzero()
    assert len(excluded) >= 2
    poisoned = dict(clean, b=clean["b"].clone())
    for (batch, j), value in zip(excluded.tolist(), (float("nan"), float("inf"), float("-inf")) * len(excluded)):
        poisoned["b"][batch, j] = value
        clean["b"][batch, j] = 0
    expected = emulate(emulated, problem, dtype, tensors=clean)
    got = emulate(emulated, problem, dtype, tensors=poisoned)
    for label, x, y in zip(NAMES, [got[0], *got[1]], [expected[0], *expected[1]]):
        assert torch.equal(x, y), f"{label} depends on an excluded key"
