"""Builds torchqat._C, the operator library, from csrc/sources.txt (the list CMake reads too).

CUDA sources are compiled when the installed torch is a CUDA build and nvcc is found, or when
TORCHQAT_WITH_CUDA=1; TORCHQAT_WITH_CUDA=0 builds the CPU library only. Build with
``pip install --no-build-isolation -e .`` against the torch already installed.
"""

import os
from pathlib import Path

import importlib.util
import sysconfig

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).resolve().parent


def read_sources():
    lines = (ROOT / "csrc" / "sources.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def want_cuda():
    flag = os.environ.get("TORCHQAT_WITH_CUDA", "auto")
    if flag in ("0", "1"):
        return flag == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


sources = read_sources()
with_cuda = want_cuda()
if not with_cuda:
    sources = [s for s in sources if not s.endswith(".cu")]

# -ffp-contract=off: no ISA may fuse a multiply and an add that the scalar code rounds twice,
# so every CPU kernel (default, AVX2, AVX-512) computes the same bits.
# -fno-trapping-math: with trapping math on, GCC leaves every loop that selects on a float
# comparison scalar (it will not evaluate both sides of a select), e.g. the SiLU epilogue's clamp
# (core::exp_float) and ReLU. Nothing here reads the floating-point exception flags, and the
# option changes no result.
# -fopenmp: at::parallel_for is an OpenMP loop compiled into *our* objects (ATen/ParallelOpenMP.h);
# without the flag _OPENMP is undefined and every parallel_for silently runs on one thread. Only
# compiled with it, not linked: the GOMP_* symbols resolve to the libgomp torch already loads.
cxx_flags = ["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fopenmp", "-fvisibility=hidden",
             "-Wall", "-Wno-unknown-pragmas", "-Wno-psabi"]
# --fmad=false: like -ffp-contract=off on the CPU, so per-element gradient terms round as the
# CPU kernels round them.
nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "--fmad=false"]
include_dirs = [str(ROOT / "csrc")]
define_macros = [("TORCHQAT_WITH_CUDA", "1")] if with_cuda else []


def cublaslt():
    """(nvcc flags, link flags) for cuBLASLt, the INT8 GEMM of the CUDA kernels.

    The header comes from the CUDA toolkit when it has one, else from the nvidia-cublas wheel a
    pip-installed torch depends on (site-packages/nvidia/cu13 or nvidia/cublas). That directory
    also holds a copy of the CUDA runtime headers, so it goes *last* on nvcc's include path: the
    toolkit's own headers win and only the cuBLAS ones come from the wheel. The library is linked
    by its soname (libcublasLt.so.N): at run time that resolves to the copy torch has loaded.
    """
    roots = [Path(CUDA_HOME)] if CUDA_HOME else []
    try:
        import nvidia  # the wheels' namespace package

        roots += [d for base in nvidia.__path__ for d in sorted(Path(base).iterdir()) if d.is_dir()]
    except ImportError:
        pass
    header = next((r / "include" for r in roots if (r / "include" / "cublasLt.h").is_file()), None)
    libs = [lib for r in roots for sub in ("lib64", "lib") for lib in sorted((r / sub).glob("libcublasLt.so*"))
            if (r / sub).is_dir()]
    if header is None or not libs:
        raise RuntimeError("torchqat: the CUDA build needs cuBLASLt (cublasLt.h and libcublasLt.so), "
                           f"found header={header}, libraries={libs}; install the CUDA toolkit's "
                           "cuBLAS or the nvidia-cublas wheel")
    nvcc = [] if CUDA_HOME and header == Path(CUDA_HOME) / "include" else [f"-I{header}"]
    return nvcc, [str(libs[0])]


if with_cuda:
    cublaslt_nvcc_flags, cublaslt_link_flags = cublaslt()
    ext = CUDAExtension(
        "torchqat._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags + cublaslt_nvcc_flags},
        extra_link_args=cublaslt_link_flags,
    )
else:
    ext = CppExtension(
        "torchqat._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags},
    )

def load_linkcheck():
    """python/torchqat/_linkcheck.py, loaded by path: the package itself needs the library."""
    spec = importlib.util.spec_from_file_location("torchqat_linkcheck",
                                                  ROOT / "python" / "torchqat" / "_linkcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CheckedBuildExtension(BuildExtension.with_options(use_ninja=True)):
    """torch's BuildExtension (ninja), then a check that the library loads a shared C++ runtime
    (_linkcheck.py says why)."""

    def build_extension(self, ext):
        super().build_extension(ext)
        compiler = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "the C++ compiler"
        message = load_linkcheck().static_cxx_runtime_message(self.get_ext_fullpath(ext.name),
                                                               compiler)
        if message:
            raise RuntimeError(message)


setup(
    name="torchqat",
    version="0.1.0",
    description="Quantization-aware training for PyTorch with C++/CUDA operators and real INT8 kernels",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    # torch is not pinned here: the extension is built against whichever torch is installed.
    install_requires=["torch>=2.11", "tqdm"],
    package_dir={"": "python"},
    packages=find_packages("python"),
    ext_modules=[ext],
    cmdclass={"build_ext": CheckedBuildExtension},
    zip_safe=False,
)
