# Sourced by scripts that build fastdnas for another Python or torch: copy_tree DEST refreshes a
# copy of the sources in DEST (keeping DEST/build, so ninja recompiles only what changed: file
# times are kept) without this checkout's compiled library, virtual environments or outputs.
copy_tree() {
  local dest=$1
  mkdir -p "$dest"
  find "$dest" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
  tar -cf - --exclude=./.git --exclude='./.venv*' --exclude=./build --exclude=./runs \
    --exclude='*.so' --exclude=__pycache__ --exclude=.pytest_cache --exclude=.benchmarks \
    --exclude=./fastdnas/_build_info.py . | tar -xf - -C "$dest"
}
