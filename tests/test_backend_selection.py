"""``backend="auto"`` on CUDA picks per shape class, as the backends declare (no GPU needed: probes patched)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import fastrel
from fastrel import backends
from fastrel.backends import BACKENDS, Shape, select
from fastrel.backends.base import SMALL_SET_ITEMS

PAPER_RGSA = Shape(N=128, M=128, H=256, R=128)  # one 16x8 frame map, paper sizes
RGTR_CLIP = Shape(N=8, M=8, H=256, R=128)  # T = 8 frames


@pytest.fixture
def gpu_machine(monkeypatch):
    """The registry as on a machine with a GPU and every backend built: each probe passes."""
    for name, backend in BACKENDS.items():
        monkeypatch.setitem(BACKENDS, name, dataclasses.replace(backend, probe=lambda: None))


def auto(dtype=torch.bfloat16, shape=PAPER_RGSA, inner="relu", outer="relu", device="cuda") -> str:
    return select("auto", device, dtype, inner, outer, True, shape)


@pytest.fixture
def tf32(request):
    """torch.backends.cuda.matmul.allow_tf32 set for the test, restored after it."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = request.param
    yield request.param
    torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [RGTR_CLIP, PAPER_RGSA], ids=["clip", "large"])
def test_half_precision_goes_to_triton_at_every_size(gpu_machine, dtype, shape):
    assert auto(dtype, shape) == "triton"


@pytest.mark.parametrize("tf32", [False], indirect=True)
def test_ieee_fp32_goes_to_cuda_for_large_sets_and_to_the_reference_for_clips(gpu_machine, tf32):
    assert auto(torch.float32, PAPER_RGSA) == "cuda"
    assert auto(torch.float32, RGTR_CLIP) == "reference"


@pytest.mark.parametrize("tf32", [True], indirect=True)
@pytest.mark.parametrize("shape", [RGTR_CLIP, PAPER_RGSA], ids=["clip", "large"])
def test_fp32_with_tf32_allowed_goes_to_triton(gpu_machine, tf32, shape):
    assert auto(torch.float32, shape) == "triton"


@pytest.mark.parametrize("tf32", [False], indirect=True)
def test_the_clip_class_ends_at_small_set_items_in_either_set(gpu_machine, tf32):
    edge = SMALL_SET_ITEMS
    assert auto(torch.float32, Shape(edge, edge, 64, 32)) == "reference"
    assert auto(torch.float32, Shape(edge + 1, edge, 64, 32)) == "cuda"
    assert auto(torch.float32, Shape(8, edge + 1, 64, 32)) == "cuda"


@pytest.mark.parametrize("shape", [RGTR_CLIP, PAPER_RGSA], ids=["clip", "large"])
def test_fp64_goes_to_cuda_at_every_size(gpu_machine, shape):
    assert auto(torch.float64, shape) == "cuda"


@pytest.mark.parametrize("shape", [RGTR_CLIP, PAPER_RGSA], ids=["clip", "large"])
def test_the_exact_sort_path_comes_first_wherever_it_applies(gpu_machine, shape):
    assert auto(shape=shape, inner="relu", outer="identity") == "sort"
    assert auto(shape=shape, inner="identity", outer="relu") == "sort"
    assert auto(shape=shape, inner="relu", outer="relu") != "sort"


def test_without_sizes_only_size_free_preferences_apply(gpu_machine):
    assert auto(torch.bfloat16, None) == "triton"  # registry order
    assert auto(torch.float64, None) == "cuda"


@pytest.mark.parametrize("tf32", [False], indirect=True)
def test_large_fp32_sets_go_to_triton_when_the_cuda_kernels_are_not_built(gpu_machine, monkeypatch, tf32):
    monkeypatch.setitem(BACKENDS, "cuda", dataclasses.replace(BACKENDS["cuda"], probe=lambda: "not built"))
    assert auto(torch.float32, PAPER_RGSA) == "triton"


def test_cpu_calls_keep_the_fused_cpu_backend(gpu_machine):
    assert auto(torch.float32, RGTR_CLIP, device="cpu") == "cpu"
    assert auto(torch.float32, PAPER_RGSA, device="cpu") == "cpu"


def test_every_preference_says_why(gpu_machine):
    for backend in BACKENDS.values():
        for preference in backend.preferred:
            assert len(preference.reason) > 20 and preference.reason in preference.describe()


def test_the_operator_passes_the_call_sizes_to_select(monkeypatch):
    seen = []

    def spy(*args):
        seen.append(args[-1])
        return "reference"

    monkeypatch.setattr(backends, "select", spy)
    a, b, weight = torch.randn(2, 5, 3), torch.randn(2, 7, 3), torch.randn(4, 3)
    fastrel.global_relation(a, b, weight)
    assert seen == [Shape(N=5, M=7, H=3, R=4)]
