#!/usr/bin/env bash
# The main job: sets everything up, searches a DARTS cell on the handwritten digits that ship
# with scikit-learn (no download), then retrains the found genotype and reports test accuracy.
# Results land in runs/digits/ (OUT=DIR to change).
#
# Extra arguments go to both steps (e.g. --threads 2, --device cpu); those after --search only
# to the search, those after --train only to the retraining:
#   bash scripts/search.sh --threads 1 --search --epochs 5 --train --epochs 10
set -euo pipefail
cd "$(dirname "$0")/.."
both=() search=() train=()
target=both
for arg in "$@"; do
  case "$arg" in
    --search) target=search ;;
    --train) target=train ;;
    *) case "$target" in
         both) both+=("$arg") ;;
         search) search+=("$arg") ;;
         train) train+=("$arg") ;;
       esac ;;
  esac
done
bash scripts/setup.sh
OUT=${OUT:-runs/digits}
# Re-running continues an interrupted search (or just rewrites the outputs of a finished one).
RESUME=()
[ -f "$OUT/checkpoint.pt" ] && RESUME=(--resume)
.venv/bin/fastdnas search darts --dataset digits --out "$OUT" "${RESUME[@]}" "${both[@]}" "${search[@]}"
.venv/bin/fastdnas train darts --dataset digits --genotype "$OUT/genotype.json" --out "$OUT/retrain" \
  "${both[@]}" "${train[@]}"
