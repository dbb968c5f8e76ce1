# Sourced by setup.sh and test.sh: whether to compile the CUDA kernels, as FASTDNAS_CUDA=0|1.
# Kept when given; else 1 where a GPU is visible and a CUDA toolkit is found, 0 otherwise (on a
# machine without a GPU, kernels it cannot run are not worth a 20-minute build).
# /usr/local/bin/nvcc may be a wrapper; the toolkit's own folder is needed to link -lcudart.
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
if [ -z "${FASTDNAS_CUDA:-}" ]; then
  FASTDNAS_CUDA=0
  if nvidia-smi -L >/dev/null 2>&1 \
     || .venv/bin/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
      FASTDNAS_CUDA=1
    else
      echo "a GPU is visible but no CUDA toolkit (nvcc) was found: building the CPU kernels only (set CUDA_HOME)"
    fi
  fi
fi
export FASTDNAS_CUDA
