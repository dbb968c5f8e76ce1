#!/usr/bin/env bash
# Compiles the device code of every CUDA source (csrc/*/*.cu, or the .cu files given) for sm_60
# (P100) and sm_70 (V100), which CUDA 13 no longer targets: compile only, no GPU needed.
# No CUDA 12 nvcc can be installed from PyPI (the nvidia-cuda-nvcc-cu12 wheels hold ptxas, not
# nvcc, cudafe++ or fatbinary) or Debian 12 (CUDA 11.8), so the compiler is clang 19 (Debian's
# clang-19) in CUDA mode, over a CUDA 12.3 toolkit assembled from PyPI wheels (headers, ptxas,
# libdevice) with the headers of a CUDA 12 torch. Per file and architecture, clang compiles the
# device code and CUDA 12.3's ptxas assembles it into a cubin, which is then checked to be code
# for that architecture holding the kernels. What it proves: every kernel, instantiated as the
# host code launches it, compiles to sm_60 and sm_70 machine code with the torch headers. What it
# does not: that nvcc's own front end (cudafe++, NVVM) accepts the sources for these
# architectures (CI compiles them with nvcc 13 for sm_75 and sm_90), nor that they run there.
#   VENV      an environment with a CUDA 12 torch (default .venv-oldest, set up here when missing
#             as scripts/test_oldest_torch.sh does: PyPI's torch of the oldest supported release
#             is a CUDA 12.1 build)
#   CLANG     the clang++ (default clang++-19, installed with apt-get when missing and root)
#   MAX_JOBS  parallel compiles (default 2)
# The CUDA wheels are installed (pip --target) under build/sm60_sm70. Exit 0: every file
# compiled; 1: a file failed; 2: the tools could not be had (nothing checked; the reason is
# printed).
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/sm60_sm70
mkdir -p "$out"
not_run() { echo "check_sm60_sm70: not run: $*" >&2; exit 2; }

CLANG=${CLANG:-clang++-19}
if ! command -v "$CLANG" >/dev/null; then
  [ "$CLANG" = clang++-19 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null ||
    not_run "no $CLANG here (set CLANG, or run as root with apt-get to install clang-19)"
  echo "installing clang-19 (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -q --no-install-recommends clang-19 ||
      { apt-get update -q && apt-get install -y -q --no-install-recommends clang-19; }; } >"$out/apt.log" 2>&1 ||
    not_run "apt-get install clang-19 failed (log: $out/apt.log)"
fi

VENV=${VENV:-}
torch_cuda() { "${VENV:-.venv-oldest}/bin/python" -c "import torch; print(torch.version.cuda or '')" 2>/dev/null || true; }
if [ -z "$VENV" ] && [ -z "$(torch_cuda)" ]; then
  echo "setting up .venv-oldest (the oldest supported torch, a CUDA 12 build)"
  source scripts/oldest_venv.sh
  oldest_venv >"$out/venv.log" 2>&1 || not_run "could not set up .venv-oldest (log: $out/venv.log)"
fi
VENV=${VENV:-.venv-oldest}
case "$(torch_cuda)" in
  12.*) ;;
  *) not_run "needs a CUDA 12 build of torch in $VENV, found torch.version.cuda=$(torch_cuda)" ;;
esac

# clang 19 fully supports CUDA up to 12.3; 12.3's cccl wheel is the first with <nv/target>, which
# the cuRAND headers clang's CUDA wrapper includes need.
wheels=$out/cuda-12.3-wheels
if [ ! -e "$wheels/complete" ]; then
  echo "installing the CUDA 12.3 wheels (pip) into $wheels"
  rm -rf "$wheels"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --target "$wheels" \
      nvidia-cuda-nvcc-cu12==12.3.107 nvidia-cuda-runtime-cu12==12.3.101 \
      nvidia-cuda-cccl-cu12==12.3.101.post1 >"$out/pip.log" 2>&1 ||
    not_run "pip could not install the CUDA 12.3 wheels (log: $out/pip.log)"
  touch "$wheels/complete"
fi

# The toolkit clang is given (--cuda-path): links to the wheels' files, plus the CUDA library
# headers that torch's headers and clang's CUDA wrapper include (cuBLAS, cuSPARSE, cuRAND, ...)
# from torch's own nvidia packages, as setup.py does. Then the compile flags of torch's
# extension builder that mean something to clang: its -D flags (clang needs no
# --expt-relaxed-constexpr: constexpr functions are host and device there), the C++ standard the
# torch headers require, the C++ ABI.
toolkit=$(pwd)/$out/cuda
flags=$(CUDA_HOME=$toolkit "$VENV/bin/python" - "$(pwd)/$wheels/nvidia" "$toolkit" 2>"$out/flags.log" <<'EOF'
import glob, os, shutil, sys, sysconfig
import torch
from torch.utils.cpp_extension import COMMON_NVCC_FLAGS
wheels, toolkit = sys.argv[1], sys.argv[2]
shutil.rmtree(toolkit, ignore_errors=True)
for d in ("bin", "include", "nvvm"):
    os.makedirs(os.path.join(toolkit, d))
os.symlink(os.path.join(wheels, "cuda_nvcc", "bin", "ptxas"), os.path.join(toolkit, "bin", "ptxas"))
os.symlink(os.path.join(wheels, "cuda_nvcc", "nvvm", "libdevice"), os.path.join(toolkit, "nvvm", "libdevice"))
sources = [os.path.join(wheels, p, "include", "*") for p in ("cuda_runtime", "cuda_nvcc", "cuda_cccl")]
import nvidia
sources += [os.path.join(d, "*", "include", "*.h") for d in nvidia.__path__]
for entry in (e for pattern in sources for e in sorted(glob.glob(pattern))):
    link = os.path.join(toolkit, "include", os.path.basename(entry))
    if not entry.endswith((".py", "__pycache__")) and not os.path.lexists(link):
        os.symlink(entry, link)
include = os.path.join(os.path.dirname(torch.__file__), "include")
dirs = [include, os.path.join(include, "torch", "csrc", "api", "include"), sysconfig.get_paths()["include"]]
with open(os.path.join(include, "ATen", "ATen.h")) as f:
    std = "c++20" if "C++20 or later" in f.read() else "c++17"
print(" ".join(["-I" + d for d in dirs] + [f for f in COMMON_NVCC_FLAGS if f.startswith("-D")]
               + [f"-std={std}", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]))
EOF
) || { cat "$out/flags.log" >&2; not_run "could not read torch's compile flags in $VENV"; }
echo "$("$CLANG" --version | head -n 1); CUDA 12.3 wheels (ptxas $("$toolkit/bin/ptxas" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')); torch $("$VENV/bin/python" -c "import torch; print(torch.__version__)" 2>/dev/null)"

# The flags setup.py gives nvcc, in clang's words: -O3; -gline-tables-only for -lineinfo;
# -ffp-contract=off for --fmad=false (no multiply-add contracted into an FMA). One compile per
# file and architecture, device code only (the host code is compiled by nvcc 13 and the host
# compiler in CI, the same for every architecture), MAX_JOBS at a time.
files=("$@")
[ ${#files[@]} -gt 0 ] || mapfile -t files < <(find csrc -name '*.cu' | sort)
rm -rf "$out/cubins" && mkdir "$out/cubins"
for f in "${files[@]}"; do for target in sm_60 sm_70; do echo "$f $target"; done; done |
  xargs -P "${MAX_JOBS:-2}" -n 2 sh -c '
    out=$1 clang=$2 toolkit=$3 flags=$4 file=$5 target=$6
    base=$out/$(basename "$file" .cu).$target
    # shellcheck disable=SC2086
    "$clang" -x cuda --cuda-path="$toolkit" --cuda-device-only --cuda-gpu-arch="$target" -c "$file" \
      -o "$base.cubin" $flags -O3 -gline-tables-only \
      -ffp-contract=off -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C \
      >"$base.log" 2>&1 || mv "$base.log" "$base.log.fail"' _ "$out/cubins" "$CLANG" "$toolkit" "$flags" || true

# A cubin for sm_XX is an ELF file for the NVIDIA CUDA machine whose flags' low byte is XX; each
# kernel (entry function) has an .nv.info.<name> section, and a file that defines kernels must
# have some (a .cu of host code only, such as depthwise_conv_cuda.cu, has none). Success only
# when every file passed.
passed=0
for f in "${files[@]}"; do
  base=$out/cubins/$(basename "$f" .cu)
  report="" failed=""
  defines_kernels=$(grep -c '__global__' "$f" || true)
  for target in sm_60 sm_70; do
    if [ -e "$base.$target.log.fail" ]; then failed+=" $target"; continue; fi
    header=$(readelf -h "$base.$target.cubin" 2>&1) || header=""
    elf_flags=$(sed -n 's/.*Flags: *\(0x[0-9a-f]*\).*/\1/p' <<<"$header")
    sm=$([ -n "$elf_flags" ] && echo $((elf_flags & 0xff)) || echo none)
    kernels=$(readelf -SW "$base.$target.cubin" 2>/dev/null | grep -c ' \.nv\.info\.' || true)
    if grep -q 'Machine: *NVIDIA CUDA' <<<"$header" && [ "sm_$sm" = "$target" ] &&
      { [ "$kernels" -gt 0 ] || [ "$defines_kernels" -eq 0 ]; }; then
      report+="${report:+, }$target: $kernels kernels"
    else
      failed+=" $target (the cubin is not $target code with kernels)"
    fi
  done
  if [ -z "$failed" ]; then
    echo "ok      $f ($report)"
    passed=$((passed + 1))
  else
    echo "FAILED  $f:$failed"
    cat "$base".*.log.fail 2>/dev/null || true
  fi
done
[ "$passed" -gt 0 ] && [ "$passed" = ${#files[@]} ] || exit 1
echo "every .cu file compiles for sm_60 and sm_70"
