#!/usr/bin/env bash
# The main job: sets everything up, searches a DARTS cell on the handwritten digits that ship
# with scikit-learn (no download), then retrains the found genotype and reports test accuracy.
# Extra arguments go to the search (e.g. --epochs 5). Results land in runs/digits/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-runs/digits}
# Re-running continues an interrupted search (or just rewrites the outputs of a finished one).
RESUME=()
[ -f "$OUT/checkpoint.pt" ] && RESUME=(--resume)
.venv/bin/fastdnas search darts --dataset digits --out "$OUT" "${RESUME[@]}" "$@"
.venv/bin/fastdnas train darts --dataset digits --genotype "$OUT/genotype.json" --out "$OUT/retrain"
