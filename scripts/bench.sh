#!/usr/bin/env bash
# Sets everything up, then runs every benchmark that applies to this machine (one table + JSON).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m benchmarks.run "$@"
