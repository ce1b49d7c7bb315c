"""RelationModule, RGSA and RGTR: shapes, masking semantics, backend independence, compile."""

from __future__ import annotations

import pytest
import torch
from conftest import usable
from torch import nn

import fastrel
from fastrel.backends import BACKENDS

CPU_BACKENDS = [name for name in BACKENDS if name != "reference" and "cpu" in BACKENDS[name].devices]


def _pair(cls, backend: str, **kwargs):
    """The same module twice: on the reference backend and on ``backend``, with equal parameters."""
    torch.manual_seed(0)
    reference = cls(32, 12, 6, backend="reference", **kwargs).double()
    fused = cls(32, 12, 6, backend=backend, **kwargs).double()
    fused.load_state_dict(reference.state_dict())
    return reference, fused


def _gradients(module: nn.Module) -> dict:
    return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


def _assert_close_gradients(x: dict, y: dict) -> None:
    assert x.keys() == y.keys()
    for k in x:
        torch.testing.assert_close(x[k], y[k], rtol=1e-7, atol=1e-9, msg=f"gradient of {k}")


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_rgsa_on_any_backend_matches_the_reference_backend(name):
    usable(name)
    kwargs = {} if ("relu", "relu") in BACKENDS[name].supported_pairs else {"outer": "identity"}
    reference, fused = _pair(fastrel.RGSA, name, **kwargs)
    x = torch.randn(3, 32, 5, 3, dtype=torch.float64)
    results = []
    for module in (reference, fused):
        feature, attention = module(x, return_attention=True)
        (feature.square().sum() + attention.sum()).backward()
        results.append((feature, attention, _gradients(module)))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    _assert_close_gradients(results[0][2], results[1][2])


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_rgtr_on_any_backend_matches_the_reference_backend(name, residual):
    usable(name)
    kwargs = {} if ("relu", "relu") in BACKENDS[name].supported_pairs else {"outer": "identity"}
    reference, fused = _pair(fastrel.RGTR, name, residual=residual, **kwargs)
    if residual:  # a trained branch (it starts at zero), so that the relation part has a gradient
        with torch.no_grad():
            reference.refine.weight.normal_(std=0.1)
        fused.load_state_dict(reference.state_dict())
    x = torch.randn(4, 6, 32, dtype=torch.float64)
    lengths = torch.tensor([6, 3, 1, 0])
    results = []
    for module in (reference, fused):
        clip, refined = module(x, lengths=lengths)
        (clip.square().sum() + refined.sum()).backward()
        results.append((clip, refined, _gradients(module)))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    _assert_close_gradients(results[0][2], results[1][2])
    assert results[0][2]["relation.project.weight"].abs().sum() > 0


def test_residual_rgtr_starts_as_the_temporal_mean_and_keeps_padding_zero():
    module = fastrel.RGTR(32, residual=True, backend="reference").train()
    assert module.norm is None
    x = torch.randn(2, 5, 32)
    lengths = torch.tensor([5, 3])
    clip, refined = module(x, lengths=lengths)
    torch.testing.assert_close(clip[0], x[0].mean(dim=0))
    torch.testing.assert_close(clip[1], x[1, :3].mean(dim=0))
    torch.testing.assert_close(refined[1, :3], x[1, :3])
    assert torch.equal(refined[1, 3:], torch.zeros(2, 32))
    clip.square().sum().backward()
    assert module.refine.weight.grad.abs().sum() > 0  # the zero branch still learns at once


def test_residual_must_be_a_bool():
    with pytest.raises(ValueError, match="residual"):
        fastrel.RGTR(8, residual="yes")


def test_backend_choice_leaves_the_state_dict_unchanged():
    keys = {tuple(fastrel.RGSA(64, backend=name).state_dict()) for name in BACKENDS}
    assert len(keys) == 1


def test_rgsa_attention_is_a_distribution_over_positions():
    feature, attention = fastrel.RGSA(32, backend="reference")(torch.randn(2, 32, 4, 3), return_attention=True)
    assert feature.shape == (2, 32) and attention.shape == (2, 4, 3)
    torch.testing.assert_close(attention.sum(dim=(1, 2)), torch.ones(2))
    assert (attention >= 0).all()


def test_rgsa_frame_feature_is_the_attention_weighted_sum_of_positions():
    x = torch.randn(2, 32, 4, 3)
    feature, attention = fastrel.RGSA(32, backend="reference")(x, return_attention=True)
    torch.testing.assert_close(feature, (x * attention[:, None]).sum(dim=(2, 3)))


def test_rgtr_padding_frames_do_not_change_the_clip_feature():
    module = fastrel.RGTR(32, backend="reference").eval()
    x = torch.randn(2, 5, 32)
    lengths = torch.tensor([5, 3])
    clip, refined = module(x, lengths=lengths)
    x2 = x.clone()
    x2[1, 3:] = 1e3 * torch.randn(2, 32)
    clip2, refined2 = module(x2, lengths=lengths)
    torch.testing.assert_close(clip, clip2)
    assert torch.equal(refined2[1, 3:], torch.zeros(2, 32))
    alone, _ = module(x[1:, :3])
    torch.testing.assert_close(clip[1:], alone)


def test_rgtr_lengths_and_mask_are_equivalent():
    module = fastrel.RGTR(32, backend="reference").eval()
    x = torch.randn(3, 4, 32)
    lengths = torch.tensor([4, 2, 1])
    mask = torch.arange(4)[None, :] < lengths[:, None]
    for a, b in zip(module(x, lengths=lengths), module(x, mask=mask)):
        torch.testing.assert_close(a, b)


def test_relation_module_relates_one_set_to_another():
    module = fastrel.RelationModule(16, 8, 4, backend="reference")
    x, y = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    g = module(x, y)
    expected = fastrel.reference.global_relation(
        module.query(x), module.key(y), module.project.weight, module.project.bias
    )
    torch.testing.assert_close(g, expected)
    assert g.shape == (2, 5, 4)


class _Clip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rgsa = fastrel.RGSA(16, 8, 4)
        self.rgtr = fastrel.RGTR(16, 8, 4)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:  # (B, T, C, Hf, Wf)
        B, T = frames.shape[:2]
        f = self.rgsa(frames.flatten(0, 1)).view(B, T, -1)
        return self.rgtr(f)[0]


def test_torch_compile_fullgraph_traces_rgsa_and_rgtr_without_graph_breaks():
    torch.manual_seed(0)
    model = _Clip()
    frames = torch.randn(2, 3, 16, 4, 2)
    eager = model(frames)
    eager.sum().backward()
    expected = _gradients(model)
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(frames)
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    got = _gradients(model)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-4, atol=1e-5)


def _bad_modules():
    return [
        ("in_channels", lambda: fastrel.RGSA(0), ValueError),
        ("hidden_channels", lambda: fastrel.RelationModule(4, -1, 2), ValueError),
        ("inner", lambda: fastrel.RGTR(8, inner="tanh"), ValueError),
        ("outer", lambda: fastrel.RGSA(8, outer="abs"), ValueError),
        ("x", lambda: fastrel.RGSA(8)(torch.randn(2, 8, 3)), ValueError),
        ("x", lambda: fastrel.RGSA(8)(torch.randn(2, 7, 3, 3)), ValueError),
        ("x", lambda: fastrel.RGTR(8)(torch.randn(2, 3, 7)), ValueError),
        ("lengths", lambda: fastrel.RGTR(8)(torch.randn(2, 3, 8), lengths=torch.tensor([4, 1])), ValueError),
        ("mask", lambda: fastrel.RGTR(8)(torch.randn(2, 3, 8), mask=torch.ones(2, 3)), ValueError),
        ("backend", lambda: fastrel.RGSA(8, backend="gpu")(torch.randn(1, 8, 2, 2)), ValueError),
    ]


@pytest.mark.parametrize("argument, make, error", _bad_modules(), ids=lambda v: v if isinstance(v, str) else None)
def test_bad_module_arguments_raise_naming_the_argument(argument, make, error):
    with pytest.raises(error, match=rf"^{argument}: expected"):
        make()
