#!/usr/bin/env bash
# The whole test suite on the oldest supported torch (CPU kernels), the other end of the range
# scripts/test.sh tests: a virtual environment in .venv-oldest (set up idempotently), and a copy
# of the sources in build/oldest-torch built there, so this checkout's own build is untouched.
# Extra arguments pass to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/copy_tree.sh
source scripts/oldest_venv.sh
oldest_venv ninja pybind11 numpy pytest pytest-benchmark expecttest scikit-learn matplotlib tqdm nats_bench
venv=$(pwd)/.venv-oldest
tree=build/oldest-torch
copy_tree "$tree"
cd "$tree"
FASTDNAS_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} "$venv/bin/python" setup.py -q build_ext --inplace
"$venv/bin/python" -c "import torch, fastdnas; print(f'fastdnas on torch {torch.__version__} (CPU kernels)')"
export FASTDNAS_EXPECT_CUDA_BUILD=0
# torch.compile's on-disk cache, one per version of the sources: its keys do not cover a custom
# op's schema or autograd formula, so a graph compiled against other ops could be reused.
sources_hash=$(find csrc fastdnas -type f \( -name "*.py" -o -name "*.h" -o -name "*.cpp" -o -name "*.cu*" \) \
  | sort | xargs cat | sha1sum | cut -c1-12)
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$(pwd)/build/torchinductor-cache/$sources_hash}
# The emulated CUDA kernels (tests/test_cuda_emu.py) test the .cu sources, which do not change with
# torch: they run in the newest leg (scripts/test.sh).
exec "$venv/bin/python" -m pytest -q -ra tests --ignore=tests/test_cuda_emu.py "$@"
