"""Builds fastrel._C from csrc/: the C++ CPU kernels always, the CUDA kernels when possible.

CUDA sources are compiled when torch is a CUDA build and a CUDA toolkit is found;
FASTREL_BUILD_CUDA=0|1 overrides. TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0" when no GPU is visible.
"""

import glob
import os
import sys

import torch
from setuptools import setup
from torch.utils import cpp_extension


def _want_cuda() -> tuple[bool, str]:
    forced = os.environ.get("FASTREL_BUILD_CUDA")
    if forced not in (None, "", "0", "1"):
        sys.exit(f"FASTREL_BUILD_CUDA: expected 0 or 1, got {forced!r}")
    if forced == "0":
        return False, "FASTREL_BUILD_CUDA=0"
    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} is not a CUDA build"
    elif cpp_extension.CUDA_HOME is None:
        reason = "no CUDA toolkit found (set CUDA_HOME)"
    else:
        return True, f"CUDA {torch.version.cuda}, toolkit at {cpp_extension.CUDA_HOME}"
    if forced == "1":
        sys.exit(f"FASTREL_BUILD_CUDA=1 but {reason}")
    return False, reason


def _extension():
    cuda, why = _want_cuda()
    sources = sorted(glob.glob("csrc/*.cpp"))
    cxx = ["-O3", "-fopenmp"] + (["-march=native"] if _x86_64() else [])
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
