"""Build of fastdnas: CPU kernels always, CUDA kernels when a toolkit and a CUDA torch are present.

Environment:
  FASTDNAS_CUDA=0|1       0: skip the CUDA kernels; 1: their absence is an error (default: auto)
  TORCH_CUDA_ARCH_LIST    GPU architectures to compile for (default: the visible GPUs, else a
                          portable list for the installed nvcc)
  MAX_JOBS                parallel compile jobs
"""
import glob
import os
import re
import subprocess
import sys

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def nvcc_version():
    out = subprocess.run([os.path.join(CUDA_HOME, "bin", "nvcc"), "--version"], capture_output=True, text=True)
    match = re.search(r"release (\d+)\.(\d+)", out.stdout)
    if not match:
        raise RuntimeError(f"could not read the nvcc version from: {out.stdout!r}")
    return int(match.group(1)), int(match.group(2))


def want_cuda():
    flag = os.environ.get("FASTDNAS_CUDA", "")
    available = torch.version.cuda is not None and CUDA_HOME is not None
    if flag not in ("", "0", "1"):
        raise RuntimeError(f"FASTDNAS_CUDA must be 0 or 1, got {flag!r}")
    if flag == "1" and not available:
        raise RuntimeError(
            "FASTDNAS_CUDA=1 but the CUDA kernels cannot be built: "
            f"torch.version.cuda={torch.version.cuda!r} (a CUDA build of torch is needed), "
            f"CUDA_HOME={CUDA_HOME!r} (set CUDA_HOME to the toolkit)"
        )
    return available if flag == "" else flag == "1"


def default_arch_list():
    # Without a visible GPU, build for every generation the toolkit still supports, plus PTX
    # for newer ones. CUDA 13 dropped architectures below 7.5.
    major, _ = nvcc_version()
    if major >= 13:
        return "7.5;8.0;8.6;9.0+PTX"
    if major == 12:
        return "6.0;7.0;7.5;8.0;8.6;9.0+PTX"
    return "6.0;7.0;7.5;8.0+PTX"


def missing_cuda_headers_dir():
    """A folder of links to the CUDA library headers (cuSPARSE, cuBLAS, ...) that torch's headers
    include but a minimal toolkit lacks, taken from torch's pip-installed nvidia packages.
    Only missing headers are linked, so the toolkit's own headers always win."""
    try:
        import nvidia
    except ImportError:
        return None
    toolkit = os.path.join(CUDA_HOME, "include")
    links = os.path.join(ROOT, "build", "cuda_library_headers")
    found = False
    for package_dir in nvidia.__path__:
        for header in glob.glob(os.path.join(package_dir, "*", "include", "*.h")):
            name = os.path.basename(header)
            if os.path.exists(os.path.join(toolkit, name)):
                continue
            os.makedirs(links, exist_ok=True)
            link = os.path.join(links, name)
            if not os.path.lexists(link):
                os.symlink(header, link)
            found = True
    return links if found else None


def openmp_flags():
    """at::parallel_for spreads a CPU kernel's work items over torch's threads only in code
    compiled with OpenMP (torch's Linux builds use OpenMP); without it every kernel runs on one
    thread. The extension then uses the libgomp torch has loaded (the same soname), so
    torch.set_num_threads governs it."""
    return ["-fopenmp"] if sys.platform.startswith("linux") and torch.backends.openmp.is_available() else []


def extension():
    sources = ["csrc/fastdnas.cpp"] + sorted(glob.glob("csrc/*/*_cpu.cpp"))
    sources += sorted(glob.glob("csrc/*/*_autograd.cpp"))  # the C++ autograd formulas
    extra = {"cxx": ["-O3"] + openmp_flags()}
    link = openmp_flags()
    if want_cuda():
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = default_arch_list()
        sources += sorted(glob.glob("csrc/*/*_cuda.cu"))
        # --fmad=false: no multiply-add is contracted into an FMA (nvcc and ptxas decide that per
        # architecture), so every sum rounds as the source orders it, as in the CPU build: the
        # same bits on every GPU. The kernels are bound by memory bandwidth, not arithmetic.
        extra["nvcc"] = ["-O3", "-lineinfo", "--fmad=false"]
        headers = missing_cuda_headers_dir()
        include_dirs = [headers] if headers else []
        return CUDAExtension("fastdnas._C", sources, include_dirs=include_dirs, extra_compile_args=extra,
                             extra_link_args=link), True
    return CppExtension("fastdnas._C", sources, extra_compile_args=extra, extra_link_args=link), False


def write_build_info(with_cuda):
    # Read at import time to explain a load failure (e.g. built for another torch).
    with open(os.path.join(ROOT, "fastdnas", "_build_info.py"), "w") as f:
        f.write('"""Written by setup.py: how the compiled extension was built."""\n')
        f.write(f"TORCH_VERSION = {torch.__version__!r}\n")
        f.write(f"TORCH_CUDA_VERSION = {torch.version.cuda!r}\n")
        f.write(f"WITH_CUDA = {with_cuda!r}\n")
        f.write(f"CUDA_ARCH_LIST = {os.environ.get('TORCH_CUDA_ARCH_LIST', '') if with_cuda else ''!r}\n")


def main():
    ext, with_cuda = extension()
    write_build_info(with_cuda)
    setup(
        name="fastdnas",
        version="0.1.0",
        description="Fused C++/CUDA kernels and complete search systems for differentiable NAS (DARTS, Auto-DeepLab)",
        packages=find_packages(include=["fastdnas", "fastdnas.*"]),
        ext_modules=[ext],
        cmdclass={"build_ext": BuildExtension},
        python_requires=">=3.10",
        # The oldest torch with every custom-op API used (torch.library.register_fake, opcheck) up to
        # the newest tested; scripts/test_oldest_torch.sh and scripts/test.sh test both ends.
        install_requires=["torch>=2.4.0,<2.15", "numpy"],
        extras_require={
            "search": ["scikit-learn", "matplotlib", "tqdm"],
            "nb201": ["nats_bench"],  # --benchmark: the NATS-Bench reader, imported only when asked
            "test": ["pytest", "pytest-benchmark", "expecttest", "nats_bench"],
        },
        entry_points={"console_scripts": ["fastdnas=fastdnas.cli:main"]},
    )


# Also run by pip (setuptools executes this file as __main__); benchmarks/ptxas_table.py imports it
# for its nvcc settings.
if __name__ == "__main__":
    main()
