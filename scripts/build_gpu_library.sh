#!/usr/bin/env bash
# Builds fastdnas/_C.cpython-312-x86_64-linux-gnu.so for a GPU machine with Python 3.12 and
# torch 2.11.0+cu130 (sm_90: H100/H200), on a machine without a GPU, so that
# scripts/gpu_check.sh can skip its build. The library is git-ignored: carry it to the GPU
# machine with the checkout. Needs nvcc 13 (CUDA_HOME, default /usr/local/cuda).
#   PYTHON312   the Python 3.12 interpreter (default: python3.12)
#   VENV        its virtual environment with torch 2.11.0, created if missing (default .venv-gpu)
#   TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/copy_tree.sh
VENV=${VENV:-.venv-gpu}
[ -x "$VENV/bin/python" ] || "${PYTHON312:-python3.12}" -m venv "$VENV"
VENV=$(cd "$VENV" && pwd)
"$VENV/bin/python" -c "import sys; assert sys.version_info[:2] == (3, 12), sys.version"
"$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.11.0'), torch.__version__" 2>/dev/null \
  || "$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.11.0 ninja numpy setuptools
# A separate tree: the in-place build of this checkout (another Python) stays untouched.
tree=build/gpu-library
copy_tree "$tree"
(cd "$tree" && CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} FASTDNAS_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
  MAX_JOBS=${MAX_JOBS:-2} "$VENV/bin/python" setup.py -q build_ext --inplace)
library=$(cd "$tree" && ls fastdnas/_C.cpython-312-*.so)
cp "$tree/$library" "$library"
"$VENV/bin/python" -c "
import fastdnas
from fastdnas._extension import cuda_kernels_built
assert cuda_kernels_built(), 'no CUDA kernels in the library'
print('built', fastdnas._C.__file__)"
ls -l "$library"
