"""Builds fastrel._C from csrc/: the C++ CPU kernels always, the CUDA kernels where they can run.

CUDA sources are compiled when torch is a CUDA build, a CUDA toolkit is found and a GPU is visible
(for that GPU's architecture). FASTREL_BUILD_CUDA=1 compiles them without a GPU too (CI; then
TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0"), FASTREL_BUILD_CUDA=0 never.
FASTREL_NATIVE=1 tunes the C++ kernels for the building machine (-march=native): for a local build
only (.ci/setup sets it), never for a wheel that other machines install.
"""

import glob
import os
import sys

import torch
from setuptools import setup
from torch.utils import cpp_extension


def _flag(name: str) -> str | None:
    """An on/off environment switch: "0", "1" or None when unset."""
    value = os.environ.get(name)
    if value not in (None, "", "0", "1"):
        sys.exit(f"{name}: expected 0 or 1, got {value!r}")
    return value or None


def _want_cuda() -> tuple[bool, str]:
    forced = _flag("FASTREL_BUILD_CUDA")
    if forced == "0":
        return False, "FASTREL_BUILD_CUDA=0"
    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} is not a CUDA build"
    elif cpp_extension.CUDA_HOME is None:
        reason = "no CUDA toolkit found (set CUDA_HOME)"
    elif forced == "1":
        return True, f"FASTREL_BUILD_CUDA=1, CUDA {torch.version.cuda}, toolkit at {cpp_extension.CUDA_HOME}"
    elif not torch.cuda.is_available():
        reason = "no GPU visible (FASTREL_BUILD_CUDA=1 builds the CUDA kernels anyway)"
    else:
        return True, f"CUDA {torch.version.cuda}, toolkit at {cpp_extension.CUDA_HOME}, GPU visible"
    if forced == "1":
        sys.exit(f"FASTREL_BUILD_CUDA=1 but {reason}")
    return False, reason


def _extension():
    cuda, why = _want_cuda()
    sources = sorted(glob.glob("csrc/*.cpp"))
    # -g0: no debug information (the interpreter's CFLAGS ask for -g), a faster build.
    cxx = ["-O3", "-g0", "-fopenmp"] + (["-march=native"] if _flag("FASTREL_NATIVE") == "1" and _x86_64() else [])
    args = {"cxx": cxx}
    defines = []
    if cuda:
        print(f"fastrel: building C++ and CUDA kernels ({why})")
        sources += sorted(glob.glob("csrc/*.cu"))
        args["nvcc"] = ["-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]
        defines.append(("WITH_CUDA", None))
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        builder = cpp_extension.CUDAExtension
    else:
        print(f"fastrel: building the C++ CPU kernels only ({why})")
        builder = cpp_extension.CppExtension
    return builder(
        "fastrel._C",
        sources,
        include_dirs=[os.path.abspath("csrc")],
        define_macros=defines,
        extra_compile_args=args,
        extra_link_args=["-fopenmp"],
    )


def _x86_64() -> bool:
    import platform

    return platform.machine() in ("x86_64", "AMD64")


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
