"""The sort backend equals the materialising reference, forward and backward, in both implementations.

Each test runs the C++ implementation (when fastrel._C is built) and the torch-ops one (forced with
``sort.PREFER_NATIVE = False``), on random inputs including ties (integer values, so many a_i == b_j,
where relu'(0) = abs'(0) = 0 decide the gradients), key masks with all-false rows, N ≠ M, sizes 1 and
primes.
"""

from __future__ import annotations

import pytest
import torch

import fastrel
from fastrel import backends, reference
from fastrel.backends import sort

INNER = ("relu", "abs")

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
        monkeypatch.setattr(sort, "_torch_mean_difference", must_not_run)
        monkeypatch.setattr(sort, "_torch_mean_difference_backward", must_not_run)
    else:
        monkeypatch.setattr(sort, "PREFER_NATIVE", False)
        monkeypatch.setattr(sort, "native", must_not_run)
    return request.param


def _inputs(shape, dtype, *, ties: bool, mask: str, bias: bool = True, seed: int = 0):
    B, N, M, H, R = shape
    gen = torch.Generator().manual_seed(seed)
    if ties:
        a = torch.randint(-3, 4, (B, N, H), generator=gen).to(dtype)
        b = torch.randint(-3, 4, (B, M, H), generator=gen).to(dtype)
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


def _run(fn, a, b, weight, bias, key_mask, grad, inner):
    """Output and gradients (da, db, dweight[, dbias]) of fn at the given inputs."""
    leaves = [t.detach().clone().requires_grad_() for t in (a, b, weight)]
    if bias is not None:
        leaves.append(bias.detach().clone().requires_grad_())
    out = fn(
        *leaves[:3], leaves[3] if bias is not None else None, inner=inner, outer="identity", key_mask=key_mask
    )
    return [out.detach(), *torch.autograd.grad(out, leaves, grad)]


def _sort(a, b, weight, bias, **kwargs):
    return fastrel.global_relation(a, b, weight, bias, backend="sort", **kwargs)


@pytest.mark.parametrize("inner", INNER)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("mask", ["none", "ragged", "empty_row"])
def test_float64_forward_and_gradients_equal_reference(implementation, inner, shape, ties, mask):
    inputs = _inputs(
        shape, torch.float64, ties=ties, mask=mask, bias=shape[1] != 1
    )  # some cases without bias
    got = _run(_sort, *inputs, inner)
    want = _run(reference.global_relation, *inputs, inner)
    for name, x, y in zip(("g", "da", "db", "dweight", "dbias")[: len(got)], got, want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("inner", INNER)
@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
def test_float32_within_tolerance_of_float64_reference(implementation, inner, ties):
    inputs = _inputs((2, 97, 61, 16, 8), torch.float32, ties=ties, mask="empty_row")
    got = _run(_sort, *inputs, inner)
    exact = _run(
        reference.global_relation, *[t.double() if t.is_floating_point() else t for t in inputs], inner
    )
    for name, x, y in zip(("g", "da", "db", "dweight", "dbias"), got, exact, strict=True):
        assert x.dtype == torch.float32
        error = ((x.double() - y).norm() / y.norm().clamp(min=1e-30)).item()
        assert error < 1e-5, f"{name}: relative error {error:.2e} against the float64 reference"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("inner", INNER)
def test_half_precision_within_twice_the_reference_error(implementation, dtype, inner):
    inputs = _inputs((2, 37, 29, 8, 4), dtype, ties=False, mask="ragged")
    exact = _run(
        reference.global_relation, *[t.double() if t.is_floating_point() else t for t in inputs], inner
    )
    got = _run(_sort, *inputs, inner)
    baseline = _run(reference.global_relation, *inputs, inner)
    for name, x, r, y in zip(("g", "da", "db", "dweight", "dbias"), got, baseline, exact, strict=True):
        assert x.dtype == dtype
        error = (x.double() - y).abs().max().item()
        allowed = 2 * (r.double() - y).abs().max().item() + 1e-3 * y.abs().max().item()
        assert error <= allowed, f"{name}: error {error:.3e} > twice the {dtype} reference's ({allowed:.3e})"


@pytest.mark.parametrize("inner", INNER)
def test_gradcheck_float64(implementation, inner):
    a, b, weight, bias, key_mask, _ = _inputs((2, 5, 7, 3, 2), torch.float64, ties=False, mask="empty_row")

    def fn(a, b, weight, bias):
        return _sort(a, b, weight, bias, inner=inner, outer="identity", key_mask=key_mask)

    leaves = [t.requires_grad_() for t in (a, b, weight, bias)]
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("inner", INNER)
def test_backward_is_bitwise_repeatable(implementation, inner):
    inputs = _inputs((2, 53, 47, 8, 4), torch.float32, ties=True, mask="ragged")
    first = _run(_sort, *inputs, inner)
    second = _run(_sort, *inputs, inner)
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x, y)


def test_implementations_agree_in_float32():
    if sort.native() is None:
        pytest.skip("fastrel._C is not built (python setup.py build_ext --inplace)")
    a, b, _, _, key_mask, _ = _inputs((2, 211, 197, 16, 4), torch.float32, ties=True, mask="empty_row")
    grad_mean = torch.randn(a.shape)
    for inner in INNER:
        native = sort.native().global_relation_sort_backward_cpu(
            grad_mean, a, b, key_mask, 3 if inner == "abs" else 1
        )
        torch_ops = sort._torch_mean_difference_backward(grad_mean, a, b, key_mask, inner)
        for x, y in zip(native, torch_ops, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)


def test_auto_takes_the_sort_path_only_where_it_is_exact():
    assert backends.select("auto", "cpu", torch.float32, "relu", "identity", False) == "sort"
    assert backends.select("auto", "cpu", torch.float32, "abs", "identity", True) == "sort"
    assert backends.select("auto", "cpu", torch.float32, "relu", "relu", False) != "sort"
    assert backends.select("auto", "cpu", torch.float32, "leaky_relu", "identity", False) != "sort"


@pytest.mark.parametrize(
    "inner, outer, word",
    [("relu", "relu", "outer"), ("leaky_relu", "identity", "inner"), ("identity", "identity", "inner")],
)
def test_forced_sort_refuses_what_it_cannot_compute_exactly(inner, outer, word):
    a, b, weight, bias, _, _ = _inputs((1, 3, 3, 2, 2), torch.float32, ties=False, mask="none")
    with pytest.raises(ValueError, match=word):
        fastrel.global_relation(a, b, weight, bias, inner=inner, outer=outer, backend="sort")
