#!/usr/bin/env bash
# Every CUDA check and benchmark in one call, for a machine with a GPU: build, the graph-replay
# tests, the whole test suite (CUDA cases included), compute-sanitizer memcheck and racecheck on
# the kernel tests, the benchmark suite, and a torch.profiler summary of the fused search step.
# Everything goes to ${OUT:-benchmarks/results}/<gpu>-<date>/ (versions in versions.txt).
# Uses the current python3 (set PYTHON=.venv/bin/python to use the project's venv).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} FASTDNAS_CUDA=1 FASTDNAS_EXPECT_CUDA_BUILD=1 MAX_JOBS=${MAX_JOBS:-16}
gpu=$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))") || { echo "no CUDA GPU"; exit 1; }
dest=${OUT:-benchmarks/results}/${gpu}-$(date +%F)
mkdir -p "$dest"
status=0
step() { echo "== $1"; }

step build
"$PYTHON" -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -n 20 || exit 1
{
  date -Is
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  "$CUDA_HOME/bin/nvcc" --version | tail -n 2
  git rev-parse HEAD
} > "$dest/versions.txt" 2>&1

step "graph replay vs eager"
"$PYTHON" -m pytest -q -ra tests/test_graphed.py 2>&1 | tee "$dest/graph-tests.log" || status=1

step "test suite"
"$PYTHON" -m pytest -q -ra tests 2>&1 | tee "$dest/tests.log" || status=1

sanitizer=$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")
for tool in memcheck racecheck; do
  step "compute-sanitizer $tool"
  "$sanitizer" --tool "$tool" --error-exitcode 1 "$PYTHON" -m pytest -q -x -k cuda \
    tests/test_mixed_sum.py tests/test_trellis_ops.py tests/test_mixed_node.py tests/test_depthwise_conv.py 2>&1 | tail -n 40 | tee "$dest/sanitizer-$tool.log" || status=1
done

step benchmarks
"$PYTHON" -m benchmarks.run --out "$dest/benchmarks.json" 2>&1 | tee "$dest/benchmarks.log" || status=1

step "profile of the fused search step (eager, and replayed from CUDA graphs)"
for variant in "fused eager" "fused graphs"; do
  "$PYTHON" -m benchmarks.profile_step --variant "$variant" --out "$dest" 2>&1 | tail -n 45 || status=1
done

echo "results in $dest (status $status)"
exit $status
