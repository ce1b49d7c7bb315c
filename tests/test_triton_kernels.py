"""Properties of the Triton kernels beyond the shared suite: NaN as in PyTorch, H = 0, and
deterministic mode reproducible across processes (under the interpreter on CPU-only machines)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from cases import Problem, device_for, rel_error, run
from conftest import usable

import fastrel
from fastrel import activations

NAME = "triton"


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
