#!/usr/bin/env bash
# The CUDA checks in one call of at most 9 minutes (planned for a 16-core H100/H200 machine),
# in order of value, each phase under its own timeout; results are written as they come.
#
#   bash scripts/gpu_check.sh [RESULTS_DIR]      (default: $OUT, else benchmarks/results/<gpu>-<date>)
#
# Phase (planned seconds; measured on an H200)  what
#   library (10)          fastdnas._C loads and runs a CUDA op, else it is rebuilt (build, up to
#                         300; 35 s with 16 jobs for one architecture), time taken from later phases
#   versions (30)         GPU, driver, torch, nvcc; one-line compute-sanitizer probe
#   kernel-tests (60)     CUDA cases of the five kernel test files (-k cuda)
#   memcheck (150)        compute-sanitizer memcheck on them, no caching allocator; graph-capture,
#                         torch.compile and gradcheck cases deselected (gradcheck's hundreds of
#                         calls of the same kernels are too slow under the sanitizer)
#   graph-tests (90)      tests/test_graphed.py (CUDA-graph replay == eager)
#   other-cuda-tests (30) the CUDA cases of every other test file
#   bench-kernels (20), bench-steps (40)  python -m benchmarks.run --quick --skip-compile --device cuda
#   racecheck (60)        compute-sanitizer racecheck on the kernels with block reductions
#   profile (30)          torch.profiler table of the fused DARTS step (quick setting)
# Tests run with -v (each result is in the log as it comes) and, where pytest-timeout is
# installed, at most 60 s per test, so one hanging test does not take the whole phase.
# A phase that would end past the 9-minute mark gets only the time left (PHASE_BUDGET_S, default
# 530 s for all phases). ONLY="graph-tests memcheck" runs just those phases (and the library and
# versions checks).
#
# RESULTS_DIR ends with at most 8 files: summary.txt (one line per phase), versions.txt,
# logs.tar (every phase's log, appended as each phase ends), bench-kernels.json, bench-steps.json.
# A prebuilt library (scripts/build_gpu_library.sh: Python 3.12, torch 2.11.0, sm_90) is used as
# it is; without a GPU the script checks the library and stops before the GPU phases (exit 3).
# Uses the current python3 (PYTHON=... to choose another).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} FASTDNAS_EXPECT_CUDA_BUILD=1
start=$SECONDS
budget=${PHASE_BUDGET_S:-530}
dest=${1:-${OUT:-}}
if [ -z "$dest" ]; then
  gpu=$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_') if torch.cuda.is_available() else 'no-gpu')" 2>/dev/null || echo unknown)
  dest=benchmarks/results/$gpu-$(date +%F)
fi
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
summary=$dest/summary.txt
: > "$summary"
status=0

note() { echo "$*" | tee -a "$summary"; }

# run_phase NAME PLANNED_SECONDS COMMAND...: runs COMMAND under timeout with its log in logs.tar,
# and adds one line (status, seconds, the log's last line) to summary.txt.
run_phase() {
  local name=$1 planned=$2
  shift 2
  if [ -n "${ONLY:-}" ] && [[ " $ONLY build versions " != *" $name "* ]]; then
    return
  fi
  local left=$((budget - (SECONDS - start)))
  local limit=$((planned < left ? planned : left))
  if [ "$limit" -lt 5 ]; then
    note "$name: not run (the 9-minute budget is spent)"
    status=1
    return
  fi
  echo "== $name (at most ${limit}s)"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" > "$dest/$name.log" 2>&1
  rc=$?
  tail -n 5 "$dest/$name.log"
  local result="ok"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && result="TIMED OUT after ${limit}s"
  [ $rc -ne 0 ] && [ "$result" = ok ] && result="FAILED (exit $rc)"
  [ $rc -ne 0 ] && status=1
  note "$name: $result, $((SECONDS - t0))s; $(grep -v '^\s*$' "$dest/$name.log" | tail -n 1 | cut -c1-200)"
  tar -rf "$dest/logs.tar" -C "$dest" "$name.log" && rm -f "$dest/$name.log"
}

repo=$(pwd)
py() { "$PYTHON" "$@"; }
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}

# --- library: use the prebuilt fastdnas/_C*.so when it loads (and runs a CUDA op where a GPU is) ---
has_gpu=$(py -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
library_ok() {
  py - "$has_gpu" <<'EOF'
import sys, torch, fastdnas
from fastdnas._extension import cuda_kernels_built
assert cuda_kernels_built(), "fastdnas._C has no CUDA kernels"
if sys.argv[1] == "1":
    x = torch.ones(4, device="cuda")
    out = fastdnas.ops.mixed_sum([x, x], torch.ones(2, device="cuda"))
    assert out.eq(2).all().item(), out
print("fastdnas._C loads:", fastdnas._C.__file__)
EOF
}
if library_ok > "$dest/library.log" 2>&1; then
  note "library: prebuilt $(tail -n 1 "$dest/library.log" | cut -d' ' -f3)"
  tar -rf "$dest/logs.tar" -C "$dest" library.log && rm -f "$dest/library.log"
elif [ "$has_gpu" != 1 ]; then
  # Nothing here could use a rebuilt library: report, and go on to the versions.
  note "library: unusable, not rebuilt without a GPU: $(grep -v '^\s*$' "$dest/library.log" | tail -n 1 | cut -c1-300)"
  tar -rf "$dest/logs.tar" -C "$dest" library.log && rm -f "$dest/library.log"
else
  tail -n 3 "$dest/library.log"
  tar -rf "$dest/logs.tar" -C "$dest" library.log && rm -f "$dest/library.log"
  export FASTDNAS_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
  run_phase build 300 "$PYTHON" setup.py -q build_ext --inplace
  library_ok > /dev/null 2>&1 || { note "library: does not load after the rebuild; stopping"; exit 1; }
fi

run_phase versions 30 bash -c '
  date -Is; git -C "$0" rev-parse HEAD 2>/dev/null
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi: not found"
  "$1" -c "import sys, torch; print(\"python\", sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"cudnn\", torch.backends.cudnn.version(), \"gpu\", torch.cuda.is_available())"
  "$CUDA_HOME/bin/nvcc" --version 2>&1 | tail -n 1
  sanitizer=$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")
  if out=$(timeout 25 "$sanitizer" --tool memcheck --error-exitcode 1 "$1" -c "import torch; torch.ones(1, device=\"cuda\").add_(1); torch.cuda.synchronize()" 2>&1); then
    echo "compute-sanitizer: works"
  else
    echo "compute-sanitizer: refused: $(echo "$out" | grep -v "^\s*$" | grep -m1 -i "error\|refus\|not supported\|no such" || echo "$out" | tail -n 1)"
  fi' "$repo" "$PYTHON"
tar -xOf "$dest/logs.tar" versions.log > "$dest/versions.txt" 2>/dev/null

if [ "$has_gpu" != 1 ]; then
  note "no CUDA GPU visible (torch.cuda.is_available() is False): stopping before the GPU phases"
  exit 3
fi
sanitizer_works=$(grep -q "compute-sanitizer: works" "$dest/versions.txt" && echo 1 || echo 0)
sanitizer=$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")
kernel_tests="$repo/tests/test_mixed_sum.py $repo/tests/test_trellis_ops.py $repo/tests/test_mixed_node.py $repo/tests/test_depthwise_conv.py $repo/tests/test_depthwise_segments.py"
pytest=("$PYTHON" -m pytest -v -ra --tb=short -p no:cacheprovider --rootdir "$repo")
"$PYTHON" -c "import pytest_timeout" 2>/dev/null && pytest+=(--timeout 60)

run_phase kernel-tests 60 "${pytest[@]}" -k cuda $kernel_tests
if [ "$sanitizer_works" = 1 ]; then
  run_phase memcheck 150 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck --error-exitcode 1 \
    "${pytest[@]}" -k "cuda and not graph and not compile and not gradcheck" $kernel_tests
else
  note "memcheck: not run (compute-sanitizer refused the device; see versions.txt)"
fi
run_phase graph-tests 90 "${pytest[@]}" "$repo/tests/test_graphed.py"
others=$(ls "$repo"/tests/test_*.py | grep -v -e test_mixed_sum -e test_trellis_ops -e test_mixed_node \
  -e test_depthwise_conv -e test_depthwise_segments -e test_graphed)
run_phase other-cuda-tests 30 "${pytest[@]}" -k cuda $others
run_phase bench-kernels 20 "$PYTHON" -m benchmarks.run --quick --skip-compile --device cuda --only kernels \
  --out "$dest/bench-kernels.json"
run_phase bench-steps 40 "$PYTHON" -m benchmarks.run --quick --skip-compile --device cuda --only steps \
  --out "$dest/bench-steps.json"
if [ "$sanitizer_works" = 1 ]; then
  run_phase racecheck 60 "$sanitizer" --tool racecheck --error-exitcode 1 \
    "${pytest[@]}" -k "cuda and not graph and not compile and not gradcheck" $kernel_tests
else
  note "racecheck: not run (compute-sanitizer refused the device)"
fi
run_phase profile 30 "$PYTHON" -m benchmarks.profile_step --quick --variant "fused eager" --device cuda --out "$dest"

note "total $((SECONDS - start))s, status $status; results in $dest"
exit $status
