"""Test setup: the Triton interpreter on CPU-only machines, hypothesis profiles, backend lists.

TRITON_INTERPRET must be set before any Triton kernel is defined, so it is set here, before
fastrel is imported. FASTREL_REQUIRE_BACKENDS (comma-separated) turns "backend unavailable" from
a skip into a failure, so a run cannot pass by skipping the backends it is meant to test. By default every
backend that should run on this machine is required: cpu, sort and triton (on the GPU, or in the
interpreter on the CPU), and cuda where a GPU exists. Set it to "" to allow skipping.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import fastrel.backends  # noqa: E402

settings.register_profile(
    "ci", max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("deep", max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
# A lent GPU's short check (benchmarks/gpu_check.sh): each example compiles its own kernels there.
settings.register_profile(
    "gpu", max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_DEFAULT_REQUIRED = "cpu,sort,triton" + (",cuda" if torch.cuda.is_available() else "")
REQUIRED = {n for n in os.environ.get("FASTREL_REQUIRE_BACKENDS", _DEFAULT_REQUIRED).split(",") if n}
unknown = REQUIRED - set(fastrel.backends.BACKENDS)
if unknown:
    raise pytest.UsageError(f"FASTREL_REQUIRE_BACKENDS: unknown backends {sorted(unknown)}")


def usable(name: str) -> None:
    """Skip (or fail, when required) a test whose backend cannot run on this machine."""
    reason = fastrel.backends.unavailable(name)
    if reason is None:
        return
    if name in REQUIRED:
        pytest.fail(f"backend {name!r} is required (FASTREL_REQUIRE_BACKENDS) but unavailable: {reason}")
    pytest.skip(f"backend {name!r} unavailable: {reason}")
