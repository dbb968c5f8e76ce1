# Sourced by the scripts that use the oldest supported torch: oldest_venv [PACKAGE...] sets up
# .venv-oldest idempotently, a virtual environment with PyPI's build of the oldest torch setup.py
# accepts (a CUDA 12.1 build, with its nvidia library packages) and the packages named.
oldest_venv() {
  local torch
  torch=$(sed -n 's/.*"torch>=\([0-9.]*\),.*/\1/p' setup.py)
  [ -x .venv-oldest/bin/python ] || "${PYTHON:-python3}" -m venv .venv-oldest
  .venv-oldest/bin/python -m pip install -q --disable-pip-version-check "torch==$torch" "$@"
}
