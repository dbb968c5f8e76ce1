#!/usr/bin/env bash
# The main job: sets everything up, searches a DARTS cell on the handwritten digits that ship
# with scikit-learn (no download), then retrains the found genotype and reports test accuracy.
# Results land in runs/digits/ (OUT=DIR to change; see below for a folder that already holds a search).
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
# Re-running with the same settings continues an interrupted search (or just rewrites the outputs
# of a finished one). A folder holding a search with other settings is left alone: this search
# goes to the first of OUT-2, OUT-3, ... that is new or holds this same search.
base=$OUT
n=1
while [ -f "$OUT/checkpoint.pt" ] && ! .venv/bin/python -c 'import sys; from fastdnas.cli import same_run; sys.exit(same_run(sys.argv[1:]))' \
    search darts --dataset digits --out "$OUT" "${both[@]}" "${search[@]}"; do
  n=$((n + 1))
  OUT=$base-$n
done
RESUME=()
if [ -f "$OUT/checkpoint.pt" ]; then
  RESUME=(--resume)
  echo "search.sh: continuing the search in $OUT (--resume)"
elif [ "$OUT" != "$base" ]; then
  echo "search.sh: a new search in $OUT"
fi
.venv/bin/fastdnas search darts --dataset digits --out "$OUT" "${RESUME[@]}" "${both[@]}" "${search[@]}"
.venv/bin/fastdnas train darts --dataset digits --genotype "$OUT/genotype.json" --out "$OUT/retrain" \
  "${both[@]}" "${train[@]}"
