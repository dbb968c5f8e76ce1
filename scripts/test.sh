#!/usr/bin/env bash
# The test command: sets everything up (scripts/setup.sh), then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/cuda_choice.sh  # setup.sh's choice: the CUDA kernels must then be there
export FASTDNAS_EXPECT_CUDA_BUILD=$FASTDNAS_CUDA
# torch.compile's on-disk cache, one per version of the sources: its keys do not cover a custom
# op's schema or autograd formula, so a graph compiled against other ops could be reused.
sources_hash=$(find csrc fastdnas -type f \( -name "*.py" -o -name "*.h" -o -name "*.cpp" -o -name "*.cu*" \) \
  | sort | xargs cat | sha1sum | cut -c1-12)
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$(pwd)/build/torchinductor-cache/$sources_hash}
exec .venv/bin/python -m pytest -q -ra tests "$@"
