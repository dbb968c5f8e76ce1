#!/usr/bin/env bash
# Sets up everything on a fresh clone, idempotently: a virtual environment in .venv with
# torch 2.14.1 and the tools, then builds fastdnas: the CPU kernels, and the CUDA kernels where
# a GPU is visible or FASTDNAS_CUDA=1 asks for them (CI does: every .cu must compile there).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check \
  torch==2.14.1 ninja pybind11 numpy pytest pytest-benchmark expecttest scikit-learn matplotlib tqdm nats_bench

source scripts/cuda_choice.sh  # sets FASTDNAS_CUDA to 0 or 1 (and CUDA_HOME)
export MAX_JOBS=${MAX_JOBS:-2}
# Build unless the compiled library is there, newer than every source, loads, and has the CUDA
# kernels when they are required.
library=$(ls fastdnas/_C*.so 2>/dev/null | head -n 1 || true)
if [ -z "$library" ] || [ -n "$(find csrc setup.py -newer "$library" -print -quit)" ] \
   || ! .venv/bin/python -c "import fastdnas, fastdnas._build_info as b; assert b.WITH_CUDA or '$FASTDNAS_CUDA' != '1'" 2>/dev/null; then
  cpu_units=$(ls csrc/fastdnas.cpp csrc/*/*_cpu.cpp csrc/*/*_autograd.cpp | wc -l)
  cuda_units=$(ls csrc/*/*_cuda.cu | wc -l)
  if [ "$FASTDNAS_CUDA" = 1 ]; then
    echo "building fastdnas: $cpu_units CPU and $cuda_units CUDA units (TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-default}," \
         "MAX_JOBS=$MAX_JOBS): about 20 minutes on 2 CPU cores; FASTDNAS_CUDA=0 skips the CUDA units," \
         "TORCH_CUDA_ARCH_LIST=9.0 (say) compiles them for one architecture"
  else
    echo "building fastdnas: $cpu_units CPU units, MAX_JOBS=$MAX_JOBS (about 2 minutes on an idle 2-core VM," \
         "much more on a busy one); no GPU visible, so no CUDA kernels (FASTDNAS_CUDA=1 adds them, about 20 minutes more)"
  fi
  # The compiler's output goes to a log; the terminal gets one line per finished unit (ninja's [k/n]).
  mkdir -p build
  log=build/setup.log
  if ! .venv/bin/python -m pip install -v --disable-pip-version-check --no-build-isolation --no-deps -e . 2>&1 \
       | tee "$log" | awk '/^ *\[[0-9]+\/[0-9]+\] / { file = "?"; for (i = 2; i <= NF; i++) if ($i == "-c") file = $(i + 1);
                                                   sub(".*/csrc/", "csrc/", file); print "  compiled " $1 " " file; fflush() }'; then
    echo "build failed; the last lines of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
fi
.venv/bin/python -c "import fastdnas._build_info as b; print(f'fastdnas built for torch {b.TORCH_VERSION}, CUDA kernels: {b.WITH_CUDA} {b.CUDA_ARCH_LIST}')"
