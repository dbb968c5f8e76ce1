#!/usr/bin/env bash
# The test command: sets everything up (scripts/setup.sh), then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/cuda_choice.sh  # setup.sh's choice: the CUDA kernels must then be there
export FASTDNAS_EXPECT_CUDA_BUILD=$FASTDNAS_CUDA
exec .venv/bin/python -m pytest -q -ra tests "$@"
