"""Fault injection on the operator and the modules: empty dims, NaN/inf inputs, excluded poisoned
keys, forward-mode and functorch transforms, bad options. Each backend that runs here is tried.

The oracle is ``fastrel.reference.global_relation`` with PyTorch's autograd: "as in PyTorch" means
the same NaN positions in the output and the same finite values wherever the oracle's are finite.
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from cases import Problem, device_for, exact_dtype, rel_error
from conftest import usable

import fastrel
from fastrel import activations
from fastrel.backends import BACKENDS, native

ALL = list(BACKENDS)
#: "oracle" = fastrel.reference.global_relation differentiated by autograd; the rest go through the op.
ORACLE_AND_ALL = ["oracle", *ALL]
GRADS = ("da", "db", "dweight", "dbias")


def _usable(name: str) -> None:
    if name != "oracle":
        usable(name)


def _device_dtype(name: str) -> tuple[str, torch.dtype]:
    return ("cpu", torch.float64) if name == "oracle" else (device_for(name), exact_dtype(name))


def _activations(name: str, inner: str = "relu", outer: str = "relu") -> tuple[str, str]:
    """``(inner, outer)`` where the backend supports the pair, else its first supported pair."""
    if name == "oracle":
        return inner, outer
    pairs = BACKENDS[name].supported_pairs
    return (inner, outer) if (inner, outer) in pairs else pairs[0]


def _call(name, a, b, weight, bias, grad, **options):
    """Output and (da, db, dweight, dbias) of one call, gradients by the op's backward (or autograd)."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (a, b, weight, bias)]
    if name == "oracle":
        out = fastrel.reference.global_relation(*leaves, **options)
    else:
        out = fastrel.global_relation(*leaves, **options, backend=name)
    out.backward(grad.to(out.dtype))
    return out.detach(), [leaf.grad if leaf is not None else None for leaf in leaves]


# ------------------------------------------------------------------------------------------------
# Empty dimensions.


@pytest.mark.parametrize("name", ORACLE_AND_ALL)
def test_zero_hidden_size_gives_sigma_of_bias_on_rows_with_a_valid_key(name):
    """H = 0: p is empty, z = β, so g_i = σ(β) where a valid key exists and 0 elsewhere."""
    _usable(name)
    device, dtype = _device_dtype(name)
    B, N, M, R = 2, 3, 4, 3
    bias = torch.tensor([0.5, -0.7, 1.5], dtype=dtype, device=device)
    mask = torch.ones(B, M, dtype=torch.bool, device=device)
    mask[0] = False  # batch element 0 has no valid key
    grad = torch.randn(B, N, R, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grad = grad.to(device=device, dtype=dtype)
    pairs = [("relu", o) for o in activations.OUTER] if name == "oracle" else BACKENDS[name].supported_pairs
    for inner, outer in dict((o, (i, o)) for i, o in pairs).values():  # one pair per outer activation
        a = torch.empty(B, N, 0, dtype=dtype, device=device)
        b = torch.empty(B, M, 0, dtype=dtype, device=device)
        weight = torch.empty(R, 0, dtype=dtype, device=device)
        out, (da, db, dweight, dbias) = _call(name, a, b, weight, bias, grad, inner=inner, outer=outer,
                                              key_mask=mask)
        sigma = activations.activate(bias, outer)
        slope = activations.derivative(bias, outer)
        expected = torch.stack([torch.zeros(N, R, dtype=dtype, device=device), sigma.expand(N, R)])
        torch.testing.assert_close(out, expected, msg=f"{name}/{outer}: g")
        assert da.shape == a.shape and db.shape == b.shape and dweight.shape == weight.shape
        torch.testing.assert_close(dbias, (grad[1] * slope).sum(dim=0), msg=f"{name}/{outer}: dbias")


@pytest.mark.parametrize("name", ORACLE_AND_ALL)
def test_no_keys_at_all_gives_zero_output_and_zero_gradients(name):
    """M = 0: every row lacks a valid key, so g = 0 and nothing flows back (not NaN from an empty mean)."""
    _usable(name)
    device, dtype = _device_dtype(name)
    inner, outer = _activations(name)
    t = Problem(2, 3, 1, 4, 2, inner=inner, outer=outer).tensors(dtype, device)
    b = t["b"][:, :0]
    for key_mask in (None, torch.ones(2, 0, dtype=torch.bool, device=device)):
        out, grads = _call(name, t["a"], b, t["weight"], t["bias"], t["grad"], inner=inner, outer=outer,
                           key_mask=key_mask)
        assert out.shape == (2, 3, 2)
        for label, x in zip(("g", *GRADS), (out, *grads)):
            assert torch.equal(x, torch.zeros_like(x)), f"{name}: {label} = {x}"


# ------------------------------------------------------------------------------------------------
# NaN and inf.


def _assert_like_pytorch(name, out, grads, ref_out, ref_grads, tol):
    """The output's NaN positions and finite values equal the oracle's; a gradient is compared value
    by value where the oracle's is finite, and must hold a NaN where the oracle's does."""
    torch.testing.assert_close(out.double().cpu(), ref_out, equal_nan=True, rtol=tol, atol=tol,
                               msg=lambda m: f"{name}: g differs from PyTorch's: {m}")
    for label, x, ref in zip(GRADS, grads, ref_grads):
        x = x.double().cpu()
        if torch.isfinite(ref).all():
            assert rel_error(x, ref) <= tol, f"{name}: {label} differs from PyTorch's where it is finite"
        else:
            assert x.isnan().any(), f"{name}: {label} hides the NaN that PyTorch's gradient has"


@pytest.mark.parametrize("where", ["a", "b", "weight"])
@pytest.mark.parametrize("name", ORACLE_AND_ALL)
def test_nan_in_an_input_propagates_as_in_pytorch(name, where):
    _usable(name)
    device, dtype = _device_dtype(name)
    inner, outer = _activations(name)
    t = Problem(2, 4, 5, 3, 2, inner=inner, outer=outer, seed=7).tensors(torch.float64, "cpu")
    t[where][(0, 1) if where == "weight" else (0, 1, 2)] = float("nan")
    ref_out, ref_grads = _call("oracle", t["a"], t["b"], t["weight"], t["bias"], t["grad"], inner=inner,
                               outer=outer)
    assert ref_out.isnan().any() and not ref_out.isnan().all()
    moved = {k: v.to(device=device, dtype=dtype) for k, v in t.items() if v is not None and k != "key_mask"}
    out, grads = _call(name, moved["a"], moved["b"], moved["weight"], moved["bias"], moved["grad"], inner=inner,
                       outer=outer)
    _assert_like_pytorch(name, out, grads, ref_out, ref_grads, 1e-9 if dtype == torch.float64 else 5e-5)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", ORACLE_AND_ALL)
def test_a_poisoned_key_that_key_mask_excludes_never_reaches_g_or_any_gradient(name, value):
    _usable(name)
    device, dtype = _device_dtype(name)
    inner, outer = _activations(name)
    t = Problem(2, 4, 5, 3, 2, inner=inner, outer=outer, mask="ragged", seed=9).tensors(dtype, device)
    mask = t["key_mask"]
    mask[:, 1] = False
    clean = _call(name, t["a"], t["b"], t["weight"], t["bias"], t["grad"], inner=inner, outer=outer,
                  key_mask=mask)
    poisoned_b = t["b"].clone()
    poisoned_b[:, 1] = value
    out, grads = _call(name, t["a"], poisoned_b, t["weight"], t["bias"], t["grad"], inner=inner, outer=outer,
                       key_mask=mask)
    for label, x, ref in zip(("g", *GRADS), (out, *grads), (clean[0], *clean[1])):
        assert torch.isfinite(x).all(), f"{name}: the excluded key's {value} leaked into {label}"
        assert torch.equal(x, ref), f"{name}: {label} changed with the value of an excluded key"


# ------------------------------------------------------------------------------------------------
# Autograd entry points: reverse mode works everywhere, forward mode says it is not supported.


def _small(name):
    device, dtype = _device_dtype(name)
    inner, outer = _activations(name)
    t = Problem(1, 3, 4, 2, 2, inner=inner, outer=outer, seed=1).tensors(dtype, device)

    def f(a, b=t["b"], weight=t["weight"], bias=t["bias"]):
        return fastrel.global_relation(a, b, weight, bias, inner=inner, outer=outer, backend=name)

    def oracle(a):
        return fastrel.reference.global_relation(a.double().cpu(), t["b"].double().cpu(), t["weight"].double().cpu(),
                                                 t["bias"].double().cpu(), inner=inner, outer=outer)

    return f, oracle, t["a"]


FORWARD_MODE = {
    "torch.func.jvp": lambda f, a: torch.func.jvp(f, (a,), (torch.ones_like(a),)),
    "torch.func.jacfwd": lambda f, a: torch.func.jacfwd(f)(a),
    "torch.autograd.forward_ad": lambda f, a: _dual(f, a),
    "torch.func.hessian": lambda f, a: torch.func.hessian(lambda x: f(x).sum())(a),
}


def _dual(f, a):
    with fwAD.dual_level():
        return fwAD.unpack_dual(f(fwAD.make_dual(a, torch.ones_like(a)))).tangent


@pytest.mark.parametrize("entry", list(FORWARD_MODE))
@pytest.mark.parametrize("name", ALL)
def test_forward_mode_ad_raises_an_error_that_names_what_is_supported(name, entry):
    usable(name)
    f, _, a = _small(name)
    with pytest.raises((NotImplementedError, RuntimeError)) as raised:
        FORWARD_MODE[entry](f, a)
    message = str(raised.value)
    assert "global_relation" in message and "reverse-mode" in message, message


def test_second_derivatives_raise_an_error_that_names_what_is_supported():
    f, _, a = _small("reference")
    a = a.requires_grad_()
    (da,) = torch.autograd.grad(f(a).sum(), a, create_graph=True)
    with pytest.raises(RuntimeError, match="global_relation.*second derivatives"):
        da.sum().backward()


REVERSE_MODE = {
    "torch.func.grad": lambda f, a: torch.func.grad(lambda x: f(x).square().sum())(a),
    "torch.func.vjp": lambda f, a: torch.func.vjp(f, a)[1](torch.ones_like(f(a)))[0],
    "torch.func.jacrev": lambda f, a: torch.func.jacrev(f)(a),
    "torch.func.vmap": lambda f, a: torch.func.vmap(f)(torch.stack([a, 2 * a, -a])),
}


@pytest.mark.parametrize("entry", list(REVERSE_MODE))
@pytest.mark.parametrize("name", ALL)
def test_functorch_reverse_mode_and_vmap_match_autograd_on_the_reference(name, entry):
    usable(name)
    f, oracle, a = _small(name)
    result = REVERSE_MODE[entry](f, a)
    expected = REVERSE_MODE[entry](oracle, a.double().cpu())
    assert rel_error(result, expected) <= (1e-9 if a.dtype == torch.float64 else 5e-5), entry


def test_eager_calls_run_the_backend_directly_and_fake_tensors_take_the_custom_op(monkeypatch):
    """Plain eager calls skip the custom op's dispatcher wrapper (host time per call); a dispatch mode
    (here fake tensors, as tracing uses) must still reach the op and its registered fake."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fastrel import ops

    calls = []
    for name in ("_global_relation", "_global_relation_backward"):
        op = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *args, op=op, name=name: calls.append(name) or op(*args))
    a, b, weight = (torch.randn(2, 5, 4, requires_grad=True), torch.randn(2, 3, 4), torch.randn(6, 4))
    out = fastrel.global_relation(a, b, weight, backend="reference")
    out.sum().backward()
    assert calls == [] and a.grad is not None
    mode = FakeTensorMode()
    fakes = [mode.from_tensor(x) for x in (a.detach(), b, weight)]
    with mode:
        fake = fastrel.global_relation(*fakes, backend="reference")
    assert calls == ["_global_relation"] and fake.shape == (2, 5, 6)


# ------------------------------------------------------------------------------------------------
# Options checked when they are given, with the op's messages.


@pytest.mark.parametrize("value", ["no", 1, 0.0, torch.tensor(True)], ids=repr)
def test_deterministic_accepts_only_bool_or_none(value):
    a = torch.randn(1, 2, 3)
    with pytest.raises(TypeError, match=r"^deterministic: expected a bool or None, got "):
        fastrel.global_relation(a, a, torch.randn(2, 3), deterministic=value)


@pytest.mark.parametrize("cls", [fastrel.RelationModule, fastrel.RGSA, fastrel.RGTR])
def test_modules_refuse_an_unknown_backend_at_construction_with_the_op_message(cls):
    sizes = (16, 4, 2) if cls is fastrel.RelationModule else (16,)
    a = torch.randn(1, 2, 3)
    with pytest.raises(ValueError) as from_op:
        fastrel.global_relation(a, a, torch.randn(2, 3), backend="bogus")
    with pytest.raises(ValueError) as from_module:
        cls(*sizes, backend="bogus")
    assert str(from_module.value) == str(from_op.value)
    with pytest.raises(TypeError, match="^backend: expected a str, got int"):
        cls(*sizes, backend=3)


@pytest.mark.parametrize("argument, value, detail", [
    ("inner", "gelu", "got 'gelu'"),
    ("outer", "abs", "got 'abs'"),
])
def test_modules_name_the_activation_argument_expected_and_actual(argument, value, detail):
    with pytest.raises(ValueError, match=f"^{argument}: expected one of .*{detail}"):
        fastrel.RelationModule(16, 4, 2, **{argument: value})


def test_module_input_errors_name_argument_expected_and_actual():
    module = fastrel.RGSA(16)
    with pytest.raises(ValueError, match=r"^x: expected shape \(B, C, Hf, Wf\) with C = 16, got shape \(2, 8, 3, 3\)"):
        module(torch.randn(2, 8, 3, 3))
    with pytest.raises(TypeError, match="^x: expected a torch.Tensor"):
        module([1.0])


# ------------------------------------------------------------------------------------------------
# The native boundary.


def test_native_checks_name_argument_expected_and_actual():
    usable("cpu")
    _C = native.module()
    a, b, w = torch.randn(1, 2, 3), torch.randn(1, 4, 3), torch.randn(2, 3)
    with pytest.raises(TypeError, match=r"^b: expected dtype float32 to match a, got float64"):
        _C.global_relation_forward_cpu(a, b.double(), w, None, None, 1, 1)
    with pytest.raises(ValueError, match=r"^weight: expected shape \(R, 3\), got shape \[2, 4\]"):
        _C.global_relation_forward_cpu(a, b, torch.randn(2, 4), None, None, 1, 1)
    with pytest.raises(ValueError, match=r"^outer: expected an activation code"):
        _C.global_relation_forward_cpu(a, b, w, None, None, 1, 3)


def test_activation_codes_bound_from_cpp_agree_with_python():
    usable("cpu")
    assert native.module().ACTIVATION_CODES == activations.CODES
    assert native.unavailable() is None


def test_a_native_build_with_other_activation_codes_is_unavailable_with_a_reason(monkeypatch):
    class Stale:
        ACTIVATION_CODES = {"identity": 0, "relu": 2, "leaky_relu": 1, "abs": 3}

    monkeypatch.setattr(native, "_import", lambda: Stale)
    reason = native.unavailable()
    assert reason is not None and "activation codes" in reason and "relu" in reason, reason
