#!/usr/bin/env bash
# Compiles every CUDA source (csrc/*/*.cu) for sm_60 (P100) and sm_70 (V100), which CUDA 13 no
# longer targets, with a CUDA 12 toolkit and a CUDA 12 build of torch: compile only, no GPU needed.
#   CUDA12_HOME  the CUDA 12 toolkit (default: the newest /usr/local/cuda-12.*, else the nvcc
#                on PATH if it is CUDA 12)
#   VENV         an environment with a CUDA 12 torch (default .venv-oldest, made by
#                scripts/test_oldest_torch.sh: PyPI's torch of the oldest supported release is a
#                CUDA 12.1 build)
# Exit 0: every file compiled; 1: a file failed; 2: no CUDA 12 toolkit here (nothing checked).
# PyPI has no CUDA 12 nvcc: the nvidia-cuda-nvcc-cu12 wheels (12.0.76 to 12.9.86) hold ptxas
# only, and Debian 12 packages CUDA 11.8; install NVIDIA's CUDA 12 toolkit to run this check.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-oldest}
nvcc=""
if [ -n "${CUDA12_HOME:-}" ]; then
  nvcc=$CUDA12_HOME/bin/nvcc
else
  for home in $(ls -d /usr/local/cuda-12.* 2>/dev/null | sort -V -r); do
    [ -x "$home/bin/nvcc" ] && { nvcc=$home/bin/nvcc; break; }
  done
  [ -n "$nvcc" ] || nvcc=$(command -v nvcc || true)
fi
release=$([ -x "$nvcc" ] && "$nvcc" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p' || true)
if [ "$release" != 12 ]; then
  echo "check_sm60_sm70: no CUDA 12 nvcc found (CUDA12_HOME, /usr/local/cuda-12.*, PATH): nothing checked" >&2
  exit 2
fi
cuda=$("$VENV/bin/python" -c "import torch; print(torch.version.cuda or '')" 2>/dev/null || true)
case "$cuda" in
  12.*) ;;
  *) echo "check_sm60_sm70: needs a CUDA 12 build of torch in $VENV (scripts/test_oldest_torch.sh makes one)," \
          "found torch.version.cuda=${cuda:-none}" >&2; exit 1 ;;
esac

out=build/sm60_sm70
mkdir -p "$out"
# The compile flags of torch's extension builder for this torch and this Python, the C++ standard
# its headers require, and (as setup.py does) links to the CUDA library headers torch's headers
# include that the toolkit lacks, taken from torch's nvidia packages.
flags=$("$VENV/bin/python" - "$(dirname "$(dirname "$nvcc")")" "$out/headers" <<'EOF'
import glob, os, sys, sysconfig
import torch
from torch.utils.cpp_extension import COMMON_NVCC_FLAGS
toolkit, links = sys.argv[1], sys.argv[2]
include = os.path.join(os.path.dirname(torch.__file__), "include")
dirs = [include, os.path.join(include, "torch", "csrc", "api", "include"), sysconfig.get_paths()["include"]]
try:
    import nvidia
    os.makedirs(links, exist_ok=True)
    for header in (h for d in nvidia.__path__ for h in glob.glob(os.path.join(d, "*", "include", "*.h"))):
        name = os.path.basename(header)
        if not os.path.exists(os.path.join(toolkit, "include", name)) and not os.path.lexists(os.path.join(links, name)):
            os.symlink(header, os.path.join(links, name))
    dirs.append(links)
except ImportError:
    pass
with open(os.path.join(include, "ATen", "ATen.h")) as f:
    std = "c++20" if "C++20 or later" in f.read() else "c++17"
print(" ".join(["-I" + d for d in dirs] + COMMON_NVCC_FLAGS
               + [f"-std={std}", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]))
EOF
)
echo "$("$nvcc" --version | tail -n 1); torch $("$VENV/bin/python" -c "import torch; print(torch.__version__)")"
# One nvcc per file with both architectures (the nvcc flags of setup.py); MAX_JOBS files at a
# time; every failure is shown.
find csrc -name '*.cu' | sort | xargs -P "${MAX_JOBS:-2}" -I{} sh -c '
  if "$1" -c "{}" -o "$0/$(basename "{}" .cu).o" $2 -O3 -lineinfo --fmad=false -Xcompiler -fPIC \
       -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C \
       -gencode arch=compute_60,code=sm_60 -gencode arch=compute_70,code=sm_70; then
    echo "ok      {} (sm_60, sm_70)"
  else
    echo "FAILED  {}"; exit 1
  fi' "$out" "$nvcc" "$flags"
echo "every .cu file compiles for sm_60 and sm_70"
