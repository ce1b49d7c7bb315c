"""``python -m fastrel.info``: versions, and for each backend whether it can run here or why not."""

from __future__ import annotations

import platform
import sys

import torch

from fastrel.backends import BACKENDS
from fastrel.backends.base import SMALL_SET_ITEMS

AUTO_RULE = (
    'backend="auto": among the backends that accept a call, the first in the order above that prefers\n'
    "the call's device, dtype and sizes; else the first that accepts it. On CPU and CUDA: sort where it\n"
    "applies (the one fast path for outer = identity and for inner = identity); on CUDA otherwise,\n"
    "from H200 timings: triton for bf16/fp16 and for fp32 with TF32 allowed; without TF32, cuda for\n"
    f"fp32 sets larger than a clip (N or M > {SMALL_SET_ITEMS}) and the reference for fp32 clips; cuda for fp64."
)


def _triton_version() -> str:
    try:
        import triton
    except ImportError as error:
        return f"not importable ({error})"
    return triton.__version__


def _native() -> str:
    from fastrel.backends import native

    try:
        extension = native.module()
    except ImportError as error:
        return f"unusable: {error}"
    return "built with CUDA kernels" if extension.cuda else "built (C++ CPU kernels only)"


def report() -> str:
    """The text printed by ``python -m fastrel.info``."""
    from fastrel import __version__

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    lines = [
        f"fastrel {__version__}",
        f"python {platform.python_version()}, torch {torch.__version__}, triton {_triton_version()}",
        f"torch CUDA {torch.version.cuda or 'none (CPU build)'}, GPU: {device}",
        f"fastrel._C: {_native()}",
        "",
        f"{'backend':<10} {'status':<11} devices / dtypes / activations",
    ]
    for backend in BACKENDS.values():
        status = "available" if backend.unavailable is None else "unavailable"
        dtypes = ",".join(str(d).removeprefix("torch.") for d in backend.dtypes)
        if backend.pairs is None:
            pairs = f"inner {','.join(backend.inner)}; outer {','.join(backend.outer)}"
        else:
            pairs = "inner/outer " + ",".join(f"{i}/{o}" for i, o in backend.pairs)
        lines.append(f"{backend.name:<10} {status:<11} {','.join(backend.devices)} / {dtypes} / {pairs}")
        lines.append(f"{'':<22} {backend.summary}")
        for preference in backend.preferred:
            lines.append(f"{'':<22} auto prefers it for {preference.describe()}")
        if backend.unavailable is not None:
            lines.append(f"{'':<22} why not: {backend.unavailable}")
    lines += ["", AUTO_RULE]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the report; with ``--require a,b`` exit 1 unless those backends are available."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fastrel.info", description=__doc__)
    parser.add_argument("--require", default="", help="comma-separated backends that must be available")
    args = parser.parse_args(argv)
    print(report())
    missing = [n for n in args.require.split(",") if n and (n not in BACKENDS or BACKENDS[n].unavailable)]
    if missing:
        print(f"required backends unavailable: {missing}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
