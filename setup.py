"""Builds the ring-buffer KV-cache torch ops (csrc/) as ``more3s._C``.

The CPU extension builds everywhere; the CUDA sources join it when torch was built with CUDA
and a CUDA toolkit is found. Metadata lives in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"


def _extensions():
    from torch.utils import cpp_extension

    cpu_sources = sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.cpp"))
    if not cpu_sources:
        return [], {}
    cuda_sources = sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.cu"))
    use_cuda = bool(cuda_sources) and cpp_extension.CUDA_HOME is not None
    import torch

    use_cuda = use_cuda and torch.version.cuda is not None
    # rpath to torch's libraries, so `import more3s._C` works even before `import torch`.
    link = [f"-Wl,-rpath,{Path(torch.__file__).parent / 'lib'}"]
    # torch 2.13 headers need C++20 (cpp_extension adds it too; keep the flags consistent).
    # -fopenmp-simd: `omp simd` vectorization hints only (no OpenMP runtime), see csrc/*_cpu.cpp.
    extra = {"cxx": ["-O3", "-std=c++20", "-fopenmp-simd"]}
    if use_cuda:
        extra["nvcc"] = ["-O3", "-std=c++20", "--use_fast_math"]
        ext = cpp_extension.CUDAExtension(
            "more3s._C", cpu_sources + cuda_sources, extra_compile_args=extra,
            define_macros=[("MORE3S_WITH_CUDA", "1")], include_dirs=[str(CSRC)],
            extra_link_args=link,
        )
    else:
        ext = cpp_extension.CppExtension(
            "more3s._C", cpu_sources, extra_compile_args=extra, include_dirs=[str(CSRC)],
            extra_link_args=link,
        )
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
