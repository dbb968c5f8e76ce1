"""Builds the emulated CUDA extension: the project's CUDA sources (csrc/*/*_cuda.cu), compiled by
g++ against the emulator (tests/cuda_emu/include) into a module that runs them on CPU tensors
through the op library ``torch.ops.fastdnas_emu``. The build is cached in build/<name>."""
import glob
import os
import subprocess

from torch.utils import cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CUDA_SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "*", "*_cuda.cu")))


def _unit(build_dir, cu_path):
    """A C++ file that includes one .cu file, so g++ (not nvcc) compiles it; rewritten only when
    its text changes, to keep the build cache."""
    path = os.path.join(build_dir, "units", os.path.basename(cu_path).replace(".cu", ".cpp"))
    text = f'#include "{cu_path}"\n'
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)
    return path


def asan_runtime():
    """The AddressSanitizer runtime of g++, to preload into Python for the ASan build."""
    return subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True,
                          check=True).stdout.strip()


def load(asan=False, ucontext=False):
    """Builds (if needed) and imports the emulated extension. ``asan``: AddressSanitizer build (the
    process must preload asan_runtime()); ``ucontext``: the portable fiber switch, with the
    emulator's check kernels only (no ops)."""
    name = "fastdnas_cuda_emu" + ("_asan" if asan else "") + ("_ucontext" if ucontext else "")
    build_dir = os.path.join(ROOT, "build", name)
    os.makedirs(build_dir, exist_ok=True)
    sources = [os.path.join(HERE, "runtime.cpp"), os.path.join(HERE, "module.cpp")]
    # C++20 (std::source_location, std::atomic_ref) whatever standard this torch's extension
    # builder picks (torch 2.11's picks C++17); the last -std wins.
    cflags = ["-std=c++20", "-DFASTDNAS_CUDA_EMU", "-Wno-unknown-pragmas"]
    if ucontext:
        cflags += ["-DCUDA_EMU_UCONTEXT", "-DCUDA_EMU_CHECK_KERNELS_ONLY"]
    else:
        sources += [_unit(build_dir, cu) for cu in CUDA_SOURCES]
    ldflags = []
    if asan:
        cflags += ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"]
        ldflags += ["-fsanitize=address"]
    else:
        cflags += ["-O2"]
    return cpp_extension.load(name, sources, extra_cflags=cflags, extra_ldflags=ldflags,
                              extra_include_paths=[os.path.join(HERE, "include")], build_directory=build_dir,
                              verbose=os.environ.get("FASTDNAS_EMU_VERBOSE") == "1")
