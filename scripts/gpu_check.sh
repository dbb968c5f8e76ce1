#!/usr/bin/env bash
# The CUDA checks in one call of at most 9 minutes (planned for a 16-core H100/H200 machine),
# performance first, each phase under its own timeout. Every figure is printed as one line
#   PERF <subject>.<variant>.<metric>=<value> unit=<unit>    (or =FAILED reason=<why>)
# as soon as it is measured, and the run ends with a SUMMARY block (under 3 KB: every PERF figure,
# one line per subject, and each phase's status, seconds and test counts), so that the last
# lines of the console carry every result even if no file comes back.
#
#   bash scripts/gpu_check.sh [RESULTS_DIR]      (default: $OUT, else benchmarks/results/<gpu>-<date>)
#
# Phase (planned seconds, at most)  what
#   library (10)          fastdnas._C loads and runs a CUDA op, else it is rebuilt (build, up to
#                         300; 35 s with 16 jobs for one architecture), time taken from later phases
#   versions (30)         GPU, driver, torch, nvcc (a loaded machine takes over 10 s to import torch)
#   steps-darts1 (50)     DARTS search step, first order, C=16, 8 cells, batch 64, 32x32: fused eager,
#                         fused + CUDA graphs, reference eager, reference + CUDA graphs (python -m
#                         benchmarks.search_step): median ms, peak MiB (max_memory_allocated, reset
#                         per variant), speedup over reference eager, ms of an evaluation batch and
#                         the extrapolated hours of a 50-epoch CIFAR-10 search
#   steps-darts2 (60)     the same, second order
#   steps-adl1 (140)      Auto-DeepLab search step at the paper's size (F=8, L=12, B=5, batch 2,
#                         321x321; evaluation on 1024x512 images), the same four variants, plus the
#                         weight-only step; extrapolated hours of a 40-epoch Cityscapes search
#   profile (30)          torch.profiler of the fused DARTS step at the real size: busy time and top
#                         kernels per step (table: profile-darts-fused-eager-cuda.txt)
#   bench-kernels (25)    the kernel rows (python -m benchmarks.run --only kernels): ms of reference
#                         and fused forward+backward, fused bandwidth as a fraction of a copy's
#   bench-passes (30)     the depthwise kernels pass by pass (forward, input gradient, weight gradient)
#                         against F.conv2d(groups=C) / convolution_backward at the DARTS sizes
#                         (python -m benchmarks.kernel_passes): worst and geometric-mean speedups
#   kernel-tests (45)     CUDA cases of the five kernel test files (-k cuda)
#   graph-tests (80)      tests/test_graphed.py (CUDA-graph replay == eager)
#   other-cuda-tests (30) the CUDA cases of every other test file (not the CPU-only CUDA emulator's)
#   compile (45)          torch.compile variants (fused, then reference) of the DARTS first-order step;
#                         warmup_s is the compilation
#   memcheck (60)         compute-sanitizer memcheck on the kernel tests (after a 25 s probe that the
#                         sanitizer works on the device), no caching allocator; graph-capture,
#                         torch.compile and gradcheck cases deselected
#   racecheck (40)        compute-sanitizer racecheck on the same tests
# The planned times add up to more than the budget (PHASE_BUDGET_S, default 530 s for all phases):
# a phase that would end past it gets only the time left, so memcheck and racecheck get what the
# earlier phases leave. Tests run with -v and, where pytest-timeout is installed, at most 60 s per
# test. ONLY="graph-tests memcheck" runs just those phases (and the library and versions checks).
#
# RESULTS_DIR ends with 3 files: summary.txt (versions, one line per phase, the SUMMARY block),
# logs.tar (every phase's log and the benchmarks' JSON: bench-steps-darts1.json, ...,
# bench-kernels.json, bench-passes.json, bench-compile.json; appended as each phase ends) and the profile table.
# A prebuilt library (scripts/build_gpu_library.sh: Python 3.12, torch 2.11.0, sm_90) is used as
# it is; without a GPU the script checks the library and stops before the GPU phases (exit 3).
# Uses the current python3 (PYTHON=... to choose another).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} FASTDNAS_EXPECT_CUDA_BUILD=1 PYTHONUNBUFFERED=1
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
rm -f "$dest/logs.tar"
work=$(mktemp -d)  # logs of running phases, the PERF lines, the compact phase lines
: > "$work/phases.txt"
: > "$work/perf.txt"
status=0
repo=$(pwd)
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}

note() { echo "$*" | tee -a "$summary"; }
keep() { tar -rf "$dest/logs.tar" -C "$work" "$@" 2>/dev/null; }  # into logs.tar
wants() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

# On every exit (also without a GPU): the SUMMARY block, on the console and in summary.txt.
finish() {
  note "total $((SECONDS - start))s, status $status; results in $dest"
  { "$PYTHON" -m benchmarks.report "$work/phases.txt" "$work/perf.txt" 2>/dev/null ||
    { echo "=== SUMMARY (raw)"; cat "$work/phases.txt" "$work/perf.txt"; echo "=== END SUMMARY"; }; } | tee -a "$summary"
  rm -rf "$work"
}
trap finish EXIT

# test_counts LOG: "N passed M failed ..." from pytest -v lines (also of a run cut short), the first
# failed tests, and the compute-sanitizer reports.
test_counts() {
  local log=$1 counts="" kind n
  grep -q -E '::\S+ (PASSED|FAILED|SKIPPED|ERROR)' "$log" || return 0
  for kind in PASSED FAILED SKIPPED ERROR; do
    n=$(grep -c -E "::\S+ $kind" "$log")
    [ "$n" -gt 0 ] || [ $kind = PASSED ] || [ $kind = FAILED ] && counts+=" $n ${kind,,}"
  done
  local failed
  failed=$(grep -oE '::\S+ (FAILED|ERROR)' "$log" | cut -c3- | cut -d' ' -f1 | head -n 2 | cut -c1-70 | paste -sd, -)
  [ -n "$failed" ] && counts+="; first failed: $failed"
  grep -q '^========= ' "$log" && counts+="; sanitizer reports: $(grep -c -E '^========= (Invalid|Error|Race)' "$log")"
  echo ";$counts"
}

# run_phase NAME PLANNED_SECONDS COMMAND...: runs COMMAND under timeout, PERF lines to the console
# as they come, the log into logs.tar; one line (status, seconds, counts) to summary.txt and the
# SUMMARY. Sets phase_rc.
run_phase() {
  local name=$1 planned=$2
  shift 2
  phase_rc=0
  wants "$name" || { phase_rc=1; return; }
  local left=$((budget - (SECONDS - start)))
  local limit=$((planned < left ? planned : left))
  if [ "$limit" -lt 5 ]; then
    note "$name: not run (the ${budget}s budget is spent)"
    echo "$name: NOT RUN (budget spent)" >> "$work/phases.txt"
    status=1 phase_rc=1
    return
  fi
  echo "== $name (at most ${limit}s)"
  local t0=$SECONDS log=$work/$name.log
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log" | grep --line-buffered '^PERF'
  phase_rc=${PIPESTATUS[0]}
  grep '^PERF' "$log" >> "$work/perf.txt"
  grep -v -e '^PERF' -e '^\s*$' "$log" | tail -n 3 | cut -c1-300
  local result=ok
  [ $phase_rc -eq 124 ] || [ $phase_rc -eq 137 ] && result="TIMED OUT at ${limit}s"
  [ $phase_rc -ne 0 ] && [ "$result" = ok ] && result="FAILED (exit $phase_rc)"
  [ $phase_rc -ne 0 ] && status=1
  local line
  line="$name: $result, $((SECONDS - t0))s$(test_counts "$log")"
  echo "$line" >> "$work/phases.txt"
  note "$line; last: $(grep -v -e '^PERF' -e '^\s*$' "$log" | tail -n 1 | cut -c1-200)"
  keep "$name.log"
}

# --- library: use the prebuilt fastdnas/_C*.so when it loads (and runs a CUDA op where a GPU is) ---
has_gpu=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
library_ok() {
  "$PYTHON" - "$has_gpu" <<'EOF'
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
if library_ok > "$work/library.log" 2>&1; then
  note "library: prebuilt $(tail -n 1 "$work/library.log" | cut -d' ' -f3)"
  echo "library: prebuilt" >> "$work/phases.txt"
elif [ "$has_gpu" != 1 ]; then
  # Nothing here could use a rebuilt library: report, and go on to the versions.
  note "library: unusable, not rebuilt without a GPU: $(grep -v '^\s*$' "$work/library.log" | tail -n 1 | cut -c1-300)"
  echo "library: unusable (no CUDA kernels), not rebuilt without a GPU" >> "$work/phases.txt"
else
  tail -n 3 "$work/library.log"
  export FASTDNAS_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
  run_phase build 300 "$PYTHON" setup.py -q build_ext --inplace
  library_ok > /dev/null 2>&1 || { note "library: does not load after the rebuild; stopping"; status=1; exit 1; }
fi
keep library.log

run_phase versions 30 bash -c '
  date -Is; git -C "$0" rev-parse HEAD 2>/dev/null
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi: not found"
  "$1" -c "import sys, torch; print(\"python\", sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"cudnn\", torch.backends.cudnn.version(), \"gpu\", torch.cuda.is_available())"
  "$CUDA_HOME/bin/nvcc" --version 2>&1 | tail -n 1' "$repo" "$PYTHON"
tar -xOf "$dest/logs.tar" versions.log 2>/dev/null | sed 's/^/  /' >> "$summary"
tar -xOf "$dest/logs.tar" versions.log 2>/dev/null | grep -e '^python ' -e 'MiB$' | cut -c1-160 | sed 's/^/  /' \
  >> "$work/phases.txt"

if [ "$has_gpu" != 1 ]; then
  note "no CUDA GPU visible (torch.cuda.is_available() is False): stopping before the GPU phases"
  echo "no CUDA GPU visible: stopped before the GPU phases" >> "$work/phases.txt"
  status=3
  exit 3
fi

# --- performance: the search steps at the real sizes, the profile, the kernel rows ---
steps=("$PYTHON" -m benchmarks.search_step --device cuda --budget 2)
run_phase steps-darts1 50 "${steps[@]}" --space darts --order 1 --out "$work/bench-steps-darts1.json"
run_phase steps-darts2 60 "${steps[@]}" --space darts --order 2 --out "$work/bench-steps-darts2.json"
run_phase steps-adl1 140 "${steps[@]}" --space autodeeplab --order 1 --out "$work/bench-steps-adl1.json"
run_phase profile 30 "$PYTHON" -m benchmarks.profile_step --space darts --variant "fused eager" --device cuda \
  --out "$dest"
run_phase bench-kernels 25 "$PYTHON" -m benchmarks.run --only kernels --device cuda --min-run-time 0.25 \
  --out "$work/bench-kernels.json"
run_phase bench-passes 30 "$PYTHON" -m benchmarks.kernel_passes --device cuda --min-run-time 0.1 \
  --out "$work/bench-passes.json"
keep $(cd "$work" && ls bench-steps-*.json bench-kernels.json bench-passes.json 2>/dev/null)

# --- tests ---
kernel_tests="$repo/tests/test_mixed_sum.py $repo/tests/test_trellis_ops.py $repo/tests/test_mixed_node.py $repo/tests/test_depthwise_conv.py $repo/tests/test_depthwise_segments.py"
pytest=("$PYTHON" -m pytest -v -ra --tb=short -p no:cacheprovider --rootdir "$repo")
"$PYTHON" -c "import pytest_timeout" 2>/dev/null && pytest+=(--timeout 60)
run_phase kernel-tests 45 "${pytest[@]}" -k cuda $kernel_tests
run_phase graph-tests 80 "${pytest[@]}" "$repo/tests/test_graphed.py"
# Not test_cuda_emu.py: -k cuda would select all of it by its name (the CUDA emulator, CPU only).
others=$(ls "$repo"/tests/test_*.py | grep -v -e test_mixed_sum -e test_trellis_ops -e test_mixed_node \
  -e test_depthwise_conv -e test_depthwise_segments -e test_graphed -e test_cuda_emu)
run_phase other-cuda-tests 30 "${pytest[@]}" -k cuda $others

# --- torch.compile, under a hard limit ---
run_phase compile 45 "${steps[@]}" --space darts --order 1 --variant "fused compile" --variant "reference compile" \
  --out "$work/bench-compile.json"
[ -f "$work/bench-compile.json" ] && keep bench-compile.json

# --- compute-sanitizer, last ---
sanitizer=$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")
sanitized=(-k "cuda and not graph and not compile and not gradcheck" $kernel_tests)
if wants memcheck || wants racecheck; then
  before=$status  # a refusal of the device is not a failure of the code
  ONLY="${ONLY:+$ONLY sanitizer-probe}" run_phase sanitizer-probe 25 "$sanitizer" --tool memcheck --error-exitcode 1 \
    "$PYTHON" -c "import torch; torch.ones(1, device='cuda').add_(1); torch.cuda.synchronize(); print('compute-sanitizer: works')"
  status=$before
  if [ $phase_rc -eq 0 ]; then
    run_phase memcheck 60 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck --error-exitcode 1 \
      "${pytest[@]}" "${sanitized[@]}"
    run_phase racecheck 40 "$sanitizer" --tool racecheck --error-exitcode 1 "${pytest[@]}" "${sanitized[@]}"
  else
    note "memcheck, racecheck: not run (the sanitizer probe did not pass: see its line, and sanitizer-probe.log)"
    echo "memcheck, racecheck: not run (the sanitizer probe did not pass)" >> "$work/phases.txt"
  fi
fi
exit $status
