"""Every backend of global_relation against the materialising reference, forward and backward."""

from __future__ import annotations

import pytest
import torch
from cases import INTERPRETING, Problem, device_for, exact_dtype, rel_error, run, size_limit
from conftest import usable
from hypothesis import given
from hypothesis import strategies as st

import fastrel
from fastrel import activations
from fastrel.backends import BACKENDS

#: Every backend, the reference one included: its written-out backward is checked against autograd.
ALL = list(BACKENDS)
LOW_PRECISION = (torch.bfloat16, torch.float16)
NAMES = ("out", "da", "db", "dweight", "dbias")


def tolerance(dtype: torch.dtype) -> float:
    return 1e-9 if dtype == torch.float64 else 5e-5


def reference_run(problem: Problem, dtype: torch.dtype = torch.float64, device: str = "cpu"):
    """The oracle: fastrel.reference called directly, gradients by autograd."""
    return run(problem, None, dtype, device)


@st.composite
def problems(draw, name: str) -> Problem:
    limit = size_limit(name)
    size = st.integers(1, limit)
    inner, outer = draw(st.sampled_from(BACKENDS[name].supported_pairs))
    return Problem(
        B=draw(st.integers(1, 3)),
        N=draw(size),
        M=draw(size),
        H=draw(size),
        R=draw(size),
        inner=inner,
        outer=outer,
        mask=draw(st.sampled_from(["none", "ragged", "empty_row"])),
        bias=draw(st.booleans()),
        strided=draw(st.booleans()),
        ties=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def assert_matches_reference(
    problem: Problem, name: str, dtype: torch.dtype, device: str, deterministic: bool | None = None
) -> None:
    out, grads = run(problem, name, dtype, device, deterministic=deterministic)
    ref_out, ref_grads = reference_run(problem)
    for label, x, ref in zip(NAMES, [out, *grads], [ref_out, *ref_grads]):
        error = rel_error(x, ref)
        assert error <= tolerance(dtype), f"{name}: {label} relative error {error:.2e} for {problem}"


@pytest.mark.parametrize("name", ALL)
def test_forward_and_every_gradient_match_reference_on_random_problems(name):
    usable(name)

    modes = st.booleans() if BACKENDS[name].deterministic else st.just(False)

    @given(problems(name), modes)
    def check(problem, deterministic):
        assert_matches_reference(problem, name, exact_dtype(name), device_for(name), deterministic)

    check()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    "shape", [(1, 1, 1, 1, 1), (2, 7, 5, 3, 2), (1, 1, 13, 11, 1), (3, 17, 1, 2, 19), (2, 16, 16, 16, 8)]
)
def test_edge_shapes_match_reference_for_every_activation_pair(name, shape):
    usable(name)
    for inner, outer in BACKENDS[name].supported_pairs:
        problem = Problem(*shape, inner=inner, outer=outer, mask="ragged", seed=sum(shape))
        assert_matches_reference(problem, name, exact_dtype(name), device_for(name))


@pytest.mark.parametrize("name", ALL)
def test_a_set_without_valid_keys_beside_a_live_one_matches_reference_for_every_activation_pair(name):
    """No bias and no gradient where a set has no valid key, the bias and every gradient elsewhere,
    for every σ: σ = identity included, which the pair kernels run like any other σ."""
    usable(name)
    for inner, outer in BACKENDS[name].supported_pairs:
        problem = Problem(2, 5, 6, 4, 3, inner=inner, outer=outer, mask="empty_row", seed=11)
        assert_matches_reference(problem, name, exact_dtype(name), device_for(name))


@pytest.mark.parametrize("name", ALL)
def test_rows_without_valid_keys_give_zero_output_and_no_gradient(name):
    usable(name)
    device, dtype = device_for(name), exact_dtype(name)
    problem = Problem(2, 5, 6, 4, 3, inner=BACKENDS[name].inner[0], outer=BACKENDS[name].outer[0], seed=3)
    t = problem.tensors(dtype, device)
    mask = torch.zeros(2, 6, dtype=torch.bool, device=device)
    mask[1, 2] = True
    a, b = t["a"].requires_grad_(), t["b"].requires_grad_()
    out = fastrel.global_relation(a, b, t["weight"], t["bias"], key_mask=mask, inner=problem.inner,
                                  outer=problem.outer, backend=name)
    out.backward(t["grad"])
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.equal(a.grad[0], torch.zeros_like(a.grad[0]))
    assert torch.equal(b.grad[0], torch.zeros_like(b.grad[0]))
    assert out[1].abs().sum() > 0


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_low_precision_error_is_within_twice_the_reference_own_error(name, dtype):
    usable(name)
    if dtype not in BACKENDS[name].dtypes:
        pytest.skip(f"backend {name!r} does not declare {dtype}")
    device = device_for(name)
    limit = size_limit(name)
    outer = BACKENDS[name].outer[0]
    for inner in BACKENDS[name].inner:
        problem = Problem(2, limit, limit - 3, limit, limit // 2, inner=inner, outer=outer, mask="ragged", seed=11)
        exact_out, exact_grads = reference_run(problem)
        out, grads = run(problem, name, dtype, device)
        ref_out, ref_grads = reference_run(problem, dtype, device)
        floor = torch.finfo(dtype).eps
        for label, x, ref, exact in zip(NAMES, [out, *grads], [ref_out, *ref_grads], [exact_out, *exact_grads]):
            error, ref_error = rel_error(x, exact), rel_error(ref, exact)
            assert error <= 2 * ref_error + floor, (
                f"{name} {dtype}: {label} error {error:.2e} > 2 × reference's {ref_error:.2e} (+{floor:.1e})"
            )


@pytest.mark.parametrize("name", ALL)
def test_gradcheck_in_float64(name):
    usable(name)
    if torch.float64 not in BACKENDS[name].dtypes:
        pytest.skip(f"backend {name!r} does not support float64")
    device = device_for(name)
    backend = BACKENDS[name]
    pairs = backend.supported_pairs
    if name == "triton" and INTERPRETING:  # each interpreted call is slow: every activation once
        count = max(len(backend.inner), len(backend.outer))
        pairs = [(backend.inner[k % len(backend.inner)], backend.outer[k % len(backend.outer)]) for k in range(count)]
    for inner, outer in pairs:
        t = Problem(2, 3, 4, 3, 2, inner=inner, outer=outer, mask="ragged", seed=5).tensors(device=device)
        inputs = [t[k].requires_grad_() for k in ("a", "b", "weight", "bias")]

        def f(a, b, weight, bias, inner=inner, outer=outer, mask=t["key_mask"]):
            return fastrel.global_relation(a, b, weight, bias, inner=inner, outer=outer, key_mask=mask,
                                           backend=name)

        assert torch.autograd.gradcheck(f, inputs), f"{name}: gradcheck failed for {inner}/{outer}"


@pytest.mark.parametrize("name", ALL)
def test_repeated_backward_is_bitwise_equal_in_deterministic_mode(name):
    usable(name)
    if not BACKENDS[name].deterministic:
        pytest.skip(f"backend {name!r} has no deterministic mode")
    device = device_for(name)
    repeats = 50 if device == "cuda" else 5
    limit = size_limit(name)
    problem = Problem(2, limit, limit, limit, limit, inner=BACKENDS[name].inner[0],
                      outer=BACKENDS[name].outer[0], mask="ragged", seed=8)
    first_out, first = run(problem, name, torch.float32, device, deterministic=True)
    for _ in range(repeats - 1):
        out, grads = run(problem, name, torch.float32, device, deterministic=True)
        assert torch.equal(out, first_out)
        for x, y in zip(grads, first):
            assert torch.equal(x, y)


@pytest.mark.parametrize("name", ALL)
def test_inputs_cut_from_nan_padded_buffers_never_read_the_padding(name):
    usable(name)
    device, dtype = device_for(name), exact_dtype(name)
    problem = Problem(2, 9, 7, 5, 3, inner=BACKENDS[name].inner[0], outer=BACKENDS[name].outer[0],
                      mask="ragged", seed=4)
    t = problem.tensors(dtype, device)

    def padded(x: torch.Tensor) -> torch.Tensor:
        buffer = torch.full([s + 2 for s in x.shape], float("nan"), dtype=dtype, device=device)
        view = buffer[tuple(slice(1, 1 + s) for s in x.shape)]
        view.copy_(x)
        return view

    a, b, weight, bias = (padded(t[k]).requires_grad_() for k in ("a", "b", "weight", "bias"))
    # Poison the allocator: the next allocations of these sizes reuse NaN-filled memory.
    del_me = [torch.full((4 * x.numel() + 64,), float("nan"), dtype=dtype, device=device) for x in (a, b)]
    del del_me
    out = fastrel.global_relation(a, b, weight, bias, inner=problem.inner, outer=problem.outer,
                                  key_mask=t["key_mask"], backend=name)
    out.backward(t["grad"])
    ref_out, ref_grads = reference_run(problem)
    for label, x, ref in zip(NAMES, [out, a.grad, b.grad, weight.grad, bias.grad], [ref_out, *ref_grads]):
        assert torch.isfinite(x).all(), f"{name}: {label} read NaN padding or unwritten memory"
        assert rel_error(x, ref) <= tolerance(dtype), f"{name}: {label} differs from the reference"


@pytest.mark.parametrize("name", ALL)
def test_custom_op_passes_opcheck(name):
    usable(name)
    device, dtype = device_for(name), exact_dtype(name)
    t = Problem(2, 5, 4, 3, 2, mask="ragged", seed=2).tensors(dtype, device)
    backend = BACKENDS[name]
    args = (t["a"].requires_grad_(), t["b"].requires_grad_(), t["weight"].requires_grad_(),
            t["bias"].requires_grad_(), t["key_mask"], backend.inner[0], backend.outer[0], name, True)
    torch.library.opcheck(torch.ops.fastrel.global_relation.default, args)


def test_auto_prefers_the_fused_cpu_backend_and_falls_back_to_the_reference():
    a = torch.randn(1, 4, 3)
    expected = "cpu" if BACKENDS["cpu"].unavailable is None else "reference"
    assert fastrel.backends.select("auto", "cpu", torch.float32, "relu", "relu", False) == expected
    sort_ok = BACKENDS["sort"].unavailable is None
    chosen = fastrel.backends.select("auto", "cpu", a.dtype, "relu", "identity", False)
    assert chosen == ("sort" if sort_ok else expected)


def test_forced_backend_that_cannot_run_says_why():
    a, b, w = torch.randn(1, 4, 3), torch.randn(1, 4, 3), torch.randn(2, 3)
    with pytest.raises(ValueError, match="backend 'cuda'"):
        fastrel.global_relation(a, b, w, backend="cuda")
    with pytest.raises(ValueError, match="expected 'auto' or one of"):
        fastrel.global_relation(a, b, w, backend="fastest")


def _bad_calls():
    a, b, w, bias = torch.randn(2, 4, 3), torch.randn(2, 5, 3), torch.randn(6, 3), torch.randn(6)
    mask = torch.ones(2, 5, dtype=torch.bool)
    good = dict(a=a, b=b, weight=w, bias=bias, key_mask=mask)
    return [
        ("a", dict(good, a=torch.randn(4, 3)), ValueError, "(B, N, H)"),
        ("a", dict(good, a=a.long()), TypeError, "int64"),
        ("a", dict(good, a=[[1.0]]), TypeError, "list"),
        ("b", dict(good, b=torch.randn(3, 5, 3)), ValueError, "(2, M, 3)"),
        ("b", dict(good, b=torch.randn(2, 5, 4)), ValueError, "(2, 5, 4)"),
        ("b", dict(good, b=b.double()), TypeError, "float64"),
        ("weight", dict(good, weight=torch.randn(6, 4)), ValueError, "(R, 3)"),
        ("weight", dict(good, weight=torch.randn(6)), ValueError, "(6,)"),
        ("bias", dict(good, bias=torch.randn(5)), ValueError, "(6,)"),
        ("key_mask", dict(good, key_mask=mask.float()), TypeError, "torch.bool"),
        ("key_mask", dict(good, key_mask=mask[:, :4]), ValueError, "(2, 5)"),
        ("inner", dict(good, inner="gelu"), ValueError, "'gelu'"),
        ("outer", dict(good, outer="abs"), ValueError, "'abs'"),
        ("outer", dict(good, outer=None), ValueError, "None"),
        ("backend", dict(good, backend=3), TypeError, "int"),
    ]


@pytest.mark.parametrize("argument, kwargs, error, detail", _bad_calls(), ids=lambda v: None)
def test_bad_input_raises_an_error_naming_argument_expected_and_actual(argument, kwargs, error, detail):
    with pytest.raises(error) as raised:
        fastrel.global_relation(**kwargs)
    message = str(raised.value)
    assert message.startswith(f"{argument}:"), message
    assert "expected" in message and detail in message, message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_mixed_devices_are_refused_naming_the_argument():
    a = torch.randn(1, 4, 3, device="cuda")
    with pytest.raises(ValueError, match="^b: expected device cuda"):
        fastrel.global_relation(a, torch.randn(1, 4, 3), torch.randn(2, 3, device="cuda"))


def test_activation_codes_cover_both_activation_sets():
    assert set(activations.INNER) | set(activations.OUTER) == set(activations.CODES)
