"""The sort backend equals the materialising reference, forward and backward, in both implementations.

Each test runs the C++ implementation (when fastrel._C is built) and the torch-ops one (forced with
``sort.PREFER_NATIVE = False``), for every (inner, outer) pair the backend computes, on random inputs
including ties (integer values and weights, so that a_i == b_j and z_ij = u_i − v_j + β == 0 occur
exactly, where relu'(0) = abs'(0) = 0 and leaky_relu'(0) = 0.01 decide the gradients), key masks with
all-false rows, N ≠ M, sizes 1 and primes; and on ±inf inputs, where the result is the reference's.
"""

from __future__ import annotations

import pytest
import torch

import fastrel
from fastrel import activations, backends, reference
from fastrel.backends import sort

PAIRS = sort.PAIRS
PAIR_IDS = [f"{inner}-{outer}" for inner, outer in PAIRS]

#: (B, N, M, H, R): sizes 1, primes, N ≠ M.
SHAPES = [(1, 1, 1, 1, 1), (2, 7, 5, 3, 4), (3, 13, 17, 11, 2), (2, 31, 1, 5, 3), (1, 1, 23, 2, 7)]


@pytest.fixture(params=["native", "torch"])
def implementation(request, monkeypatch):
    """Runs a test once per implementation, and makes sure the other one is never called."""

    def must_not_run(*args, **kwargs):
        raise AssertionError(f"the {request.param} implementation was requested, the other one ran")

    if request.param == "native":
        if sort.native() is None:
            pytest.skip("fastrel._C is not built (python setup.py build_ext --inplace)")
        monkeypatch.setattr(sort, "_torch_mean_activation", must_not_run)
        monkeypatch.setattr(sort, "_torch_mean_activation_backward", must_not_run)
    else:
        monkeypatch.setattr(sort, "PREFER_NATIVE", False)
        monkeypatch.setattr(sort, "native", must_not_run)
    return request.param


def _inputs(shape, dtype, *, ties: bool, mask: str, bias: bool = True, seed: int = 0):
    B, N, M, H, R = shape
    gen = torch.Generator().manual_seed(seed)
    if ties:  # small integers: every product and sum is exact, so ties are exact in either reading
        a = torch.randint(-3, 4, (B, N, H), generator=gen).to(dtype)
        b = torch.randint(-3, 4, (B, M, H), generator=gen).to(dtype)
        weight = torch.randint(-2, 3, (R, H), generator=gen).to(dtype)
        bias_ = torch.randint(-2, 3, (R,), generator=gen).to(dtype) if bias else None
    else:
        a = torch.randn(B, N, H, generator=gen, dtype=dtype)
        b = torch.randn(B, M, H, generator=gen, dtype=dtype)
        weight = torch.randn(R, H, generator=gen, dtype=dtype)
        bias_ = torch.randn(R, generator=gen, dtype=dtype) if bias else None
    key_mask = None
    if mask != "none":
        key_mask = torch.rand(B, M, generator=gen) < 0.6
        if mask == "empty_row":
            key_mask[0] = False
    grad = torch.randn(B, N, R, generator=gen, dtype=dtype)
    return a, b, weight, bias_, key_mask, grad


def _run(fn, a, b, weight, bias, key_mask, grad, inner, outer):
    """Output and gradients (da, db, dweight[, dbias]) of fn at the given inputs."""
    leaves = [t.detach().clone().requires_grad_() for t in (a, b, weight)]
    if bias is not None:
        leaves.append(bias.detach().clone().requires_grad_())
    out = fn(*leaves[:3], leaves[3] if bias is not None else None, inner=inner, outer=outer, key_mask=key_mask)
    return [out.detach(), *torch.autograd.grad(out, leaves, grad)]


def _sort(a, b, weight, bias, **kwargs):
    return fastrel.global_relation(a, b, weight, bias, backend="sort", **kwargs)


def _float64(inputs):
    return [t.double() if t is not None and t.is_floating_point() else t for t in inputs]


@pytest.mark.parametrize("inner, outer", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("mask", ["none", "ragged", "empty_row"])
def test_float64_forward_and_gradients_equal_reference(implementation, inner, outer, shape, ties, mask):
    inputs = _inputs(shape, torch.float64, ties=ties, mask=mask, bias=shape[1] != 1)  # some without bias
    got = _run(_sort, *inputs, inner, outer)
    want = _run(reference.global_relation, *inputs, inner, outer)
    for name, x, y in zip(("g", "da", "db", "dweight", "dbias")[: len(got)], got, want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("outer", ["relu", "leaky_relu"])
def test_kink_of_the_outer_activation_at_zero_follows_the_convention(implementation, outer):
    # a = b and β = 0: every z_ij = u_i − v_j + β is exactly 0, so g = 0 and da = σ'(0) · W_rᵀ G.
    a = torch.tensor([[[1.5, -2.0]]], dtype=torch.float64, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    weight = torch.tensor([[1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    g = _sort(a, b, weight, bias, inner="identity", outer=outer)
    g.backward(torch.ones_like(g))
    slope = 0.0 if outer == "relu" else activations.LEAKY_SLOPE
    assert g.item() == 0.0
    torch.testing.assert_close(a.grad, slope * weight.detach()[None], rtol=0, atol=1e-15)
    torch.testing.assert_close(b.grad, -slope * weight.detach()[None], rtol=0, atol=1e-15)
    assert bias.grad.item() == pytest.approx(slope, abs=1e-15)


@pytest.mark.parametrize("inner, outer", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
def test_float32_within_tolerance_of_float64_reference(implementation, inner, outer, ties):
    inputs = _inputs((2, 97, 61, 16, 8), torch.float32, ties=ties, mask="empty_row")
    got = _run(_sort, *inputs, inner, outer)
    exact = _run(reference.global_relation, *_float64(inputs), inner, outer)
    for name, x, y in zip(("g", "da", "db", "dweight", "dbias"), got, exact, strict=True):
        assert x.dtype == torch.float32
        error = ((x.double() - y).norm() / y.norm().clamp(min=1e-30)).item()
        assert error < 1e-5, f"{name}: relative error {error:.2e} against the float64 reference"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("inner, outer", PAIRS, ids=PAIR_IDS)
def test_half_precision_within_twice_the_reference_error(implementation, dtype, inner, outer):
    inputs = _inputs((2, 37, 29, 8, 4), dtype, ties=False, mask="ragged")
    exact = _run(reference.global_relation, *_float64(inputs), inner, outer)
    got = _run(_sort, *inputs, inner, outer)
    baseline = _run(reference.global_relation, *inputs, inner, outer)
    for name, x, r, y in zip(("g", "da", "db", "dweight", "dbias"), got, baseline, exact, strict=True):
        assert x.dtype == dtype
        error = (x.double() - y).abs().max().item()
        allowed = 2 * (r.double() - y).abs().max().item() + 1e-3 * y.abs().max().item()
        assert error <= allowed, f"{name}: error {error:.3e} > twice the {dtype} reference's ({allowed:.3e})"


@pytest.mark.parametrize("inner, outer", PAIRS, ids=PAIR_IDS)
def test_gradcheck_float64(implementation, inner, outer):
    a, b, weight, bias, key_mask, _ = _inputs((2, 5, 7, 3, 2), torch.float64, ties=False, mask="empty_row")

    def fn(a, b, weight, bias):
        return _sort(a, b, weight, bias, inner=inner, outer=outer, key_mask=key_mask)

    leaves = [t.requires_grad_() for t in (a, b, weight, bias)]
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("inner, outer", PAIRS, ids=PAIR_IDS)
def test_backward_is_bitwise_repeatable(implementation, inner, outer):
    inputs = _inputs((2, 53, 47, 8, 4), torch.float32, ties=True, mask="ragged")
    first = _run(_sort, *inputs, inner, outer)
    second = _run(_sort, *inputs, inner, outer)
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x, y)


def test_implementations_agree_in_float32():
    if sort.native() is None:
        pytest.skip("fastrel._C is not built (python setup.py build_ext --inplace)")
    q, s, _, _, key_mask, _ = _inputs((2, 211, 197, 16, 4), torch.float32, ties=True, mask="empty_row")
    grad_mean = torch.randn(q.shape)
    for act, code in activations.CODES.items():
        native = sort.native().global_relation_sort_backward_cpu(grad_mean, q, s, key_mask, code)
        torch_ops = sort._torch_mean_activation_backward(grad_mean, q, s, key_mask, act)
        for x, y in zip(native, torch_ops, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6, msg=lambda m, act=act: f"{act}: {m}")


def _with_infinities(shape, seed: int):
    """float64 inputs with about one entry in eight set to +inf or −inf: in a for even seeds, in b
    for seeds ≡ 1 (mod 4), in both otherwise."""
    a, b, weight, bias, _, _ = _inputs(shape, torch.float64, ties=False, mask="none", seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    for t in [(a,), (b,), (a,), (a, b)][seed % 4]:
        hit = torch.rand(t.shape, generator=gen) < 0.125
        sign = torch.where(torch.rand(t.shape, generator=gen) < 0.5, 1.0, -1.0).double()
        t[hit] = sign[hit] * float("inf")
    return a, b, weight, bias


@pytest.mark.parametrize("inner, outer", PAIRS, ids=PAIR_IDS)
def test_infinite_inputs_give_the_reference_result(inner, outer):
    # The centre of the prefix sums must not include an infinite key, and no 0 · inf may appear:
    # the result is the reference's, finite, ±inf or NaN (where the math itself gives inf − inf).
    finite = infinite = 0
    for seed in range(12):
        a, b, weight, bias = _with_infinities((2, 6, 7, 4, 3), seed)
        got = _sort(a, b, weight, bias, inner=inner, outer=outer)
        want = reference.global_relation(a, b, weight, bias, inner=inner, outer=outer)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, equal_nan=True)
        finite += int(torch.isfinite(want).sum())
        infinite += int(torch.isinf(want).sum())
    assert finite > 0 and infinite > 0  # both kinds of result were checked


@pytest.mark.parametrize("inner, outer", PAIRS, ids=PAIR_IDS)
def test_infinite_inputs_with_a_key_mask_give_the_reference_result_on_the_valid_keys(inner, outer):
    # Masked keys take no part at all, infinite or not: the oracle is the reference on the valid keys.
    for seed in range(6):
        a, b, weight, bias = _with_infinities((3, 5, 8, 4, 3), seed)
        key_mask = torch.rand(3, 8, generator=torch.Generator().manual_seed(seed)) < 0.6
        key_mask[0] = False
        got = _sort(a, b, weight, bias, inner=inner, outer=outer, key_mask=key_mask)
        for batch in range(3):
            keys = b[batch : batch + 1, key_mask[batch]]
            want = reference.global_relation(a[batch : batch + 1], keys, weight, bias, inner=inner, outer=outer)
            if not key_mask[batch].any():
                want = torch.zeros_like(want)
            torch.testing.assert_close(got[batch : batch + 1], want, rtol=1e-10, atol=1e-12, equal_nan=True)


def test_finite_gradients_with_an_infinite_key_that_no_query_reaches():
    # relu/identity: a key at +inf is never below a finite query, so it adds 0 to g and its gradient;
    # the gradients of the other inputs are those of the problem without it.
    a, b, weight, bias, _, grad = _inputs((1, 4, 3, 2, 2), torch.float64, ties=False, mask="none")
    with_inf = torch.cat([b, torch.full((1, 1, 2), float("inf"), dtype=torch.float64)], dim=1)
    mask = torch.tensor([[True, True, True, True]])
    got = _run(_sort, a, with_inf, weight, bias, mask, grad, "relu", "identity")
    want = _run(reference.global_relation, a, with_inf[:, :3], weight, bias, None, grad, "relu", "identity")
    # the mean is over 4 keys instead of 3
    torch.testing.assert_close(got[0], (want[0] - bias) * 3 / 4 + bias, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], want[1] * 3 / 4, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[2][:, :3], want[2] * 3 / 4, rtol=1e-12, atol=1e-12)
    assert torch.equal(got[2][:, 3], torch.zeros(1, 2, dtype=torch.float64))


def test_auto_takes_the_sort_path_where_it_is_exact():
    for inner, outer in PAIRS:
        assert backends.select("auto", "cpu", torch.float32, inner, outer, False) == "sort"
    assert backends.select("auto", "cpu", torch.float32, "relu", "relu", False) != "sort"
    assert backends.select("auto", "cpu", torch.float32, "abs", "leaky_relu", True) != "sort"


@pytest.mark.parametrize(
    "inner, outer", [("relu", "relu"), ("abs", "relu"), ("leaky_relu", "leaky_relu"), ("relu", "leaky_relu")]
)
def test_forced_sort_refuses_what_it_cannot_compute_exactly(inner, outer):
    a, b, weight, bias, _, _ = _inputs((1, 3, 3, 2, 2), torch.float32, ties=False, mask="none")
    with pytest.raises(ValueError, match=f"pairs .* got {inner}/{outer}"):
        fastrel.global_relation(a, b, weight, bias, inner=inner, outer=outer, backend="sort")
