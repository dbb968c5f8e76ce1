#!/usr/bin/env bash
# Sets up everything on a fresh clone, idempotently: a virtual environment in .venv with
# torch 2.14.1 and the tools, then builds fastdnas (CPU kernels, and CUDA kernels where a CUDA
# toolkit is found: a GPU is not needed to compile them).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check \
  torch==2.14.1 ninja pybind11 numpy pytest pytest-benchmark expecttest scikit-learn matplotlib tqdm

# /usr/local/bin/nvcc may be a wrapper; the toolkit's own folder is needed to link -lcudart.
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
# With a toolkit present, a CUDA build is required: a broken .cu must fail here, never be skipped.
if [ -z "${FASTDNAS_CUDA:-}" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
  export FASTDNAS_CUDA=1
fi
export MAX_JOBS=${MAX_JOBS:-2}
# Build unless the compiled library is there, newer than every source, loads, and has the CUDA
# kernels when they are required.
library=$(ls fastdnas/_C*.so 2>/dev/null | head -n 1 || true)
if [ -z "$library" ] || [ -n "$(find csrc setup.py -newer "$library" -print -quit)" ] \
   || ! .venv/bin/python -c "import fastdnas, fastdnas._build_info as b; assert b.WITH_CUDA or '${FASTDNAS_CUDA:-}' != '1'" 2>/dev/null; then
  echo "building fastdnas (FASTDNAS_CUDA=${FASTDNAS_CUDA:-auto}, TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-default})"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
fi
.venv/bin/python -c "import fastdnas._build_info as b; print(f'fastdnas built for torch {b.TORCH_VERSION}, CUDA kernels: {b.WITH_CUDA} {b.CUDA_ARCH_LIST}')"
