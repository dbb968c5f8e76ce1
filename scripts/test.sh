#!/usr/bin/env bash
# The test command: sets everything up (scripts/setup.sh), then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FASTDNAS_EXPECT_CUDA_BUILD=${FASTDNAS_CUDA:-$( [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ] && echo 1 || echo 0 )}
exec .venv/bin/python -m pytest -q -ra tests "$@"
