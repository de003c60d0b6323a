#!/usr/bin/env bash
# Train GistNet and LensNet against the default base model (SmolLM2-135M-Instruct) and write them to
# models/default/ (the files `--model default` loads). Steps: corpus (built if missing) -> GistNet
# (KL to the raw block over the next H tokens) -> LensNet labels (counterfactual ΔNLL of one-level
# edits, plus the base model's attention as an auxiliary target) -> LensNet.
#
#   bash scripts/train_default.sh        # CPU profile: wall-clock caps, about 90 minutes on 2 cores
#   bash scripts/train_default.sh gpu    # GPU profile: the same steps scaled up, about 5 minutes on an H100/H200
#   bash scripts/train_default.sh smoke  # seconds-long caps (with PROFILE_MODEL=tiny: a check of the plumbing)
#
# Resumable: every step keeps its checkpoint/labels in runs/train/<profile>/ (git-ignored) and a
# re-run continues where it stopped (delete that folder to start over). Each step's caps count the
# time of earlier runs too, so an interrupted script still finishes within its budget.
# Environment: PY (python, default .venv/bin/python), W (work folder), CORPUS (default $W/corpus),
# OUT (where the nets go),
# PROFILE_MODEL (the base model, default `default`). A JSON summary of both nets goes to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${1:-cpu}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-models/default}
MODEL=${PROFILE_MODEL:-default}
W=${W:-runs/train}
CORPUS=${CORPUS:-$W/corpus}
RUN=$W/$PROFILE
case "$PROFILE" in
  cpu)
    DEV=cpu
    NICE="nice -n 10"
    GIST=(--set max_seconds=2400 --set steps=100000 --set batch_size=4 --set val_windows=16 --max-chars 3000000)
    LABELS=(--set-labels max_seconds=2400 --set-labels episodes=1000 --set-labels candidates=12)
    LENS=(--set max_seconds=300 --set steps=20000 --set states_per_step=8)
    ;;
  gpu)
    DEV=cuda
    NICE=""
    GIST=(--set max_seconds=110 --set steps=100000 --set batch_size=32 --set val_windows=64 --max-chars 12000000)
    LABELS=(--set-labels max_seconds=120 --set-labels episodes=100000 --set-labels candidates=24 --set-labels batch=25)
    LENS=(--set max_seconds=30 --set steps=100000 --set states_per_step=16)
    ;;
  smoke)
    DEV=${DEV:-cuda}
    NICE=""
    GIST=(--set max_seconds=10 --set steps=20 --set batch_size=4 --set val_windows=4 --max-chars 200000)
    LABELS=(--set-labels max_seconds=10 --set-labels episodes=2 --set-labels candidates=4)
    LENS=(--set max_seconds=5 --set steps=10 --set states_per_step=2)
    ;;
  *)
    echo "error: unknown profile '$PROFILE' (expected cpu, gpu or smoke)" >&2
    exit 2
    ;;
esac
mkdir -p "$RUN" "$OUT"
[ -f "$CORPUS/manifest.json" ] || $NICE $PY -m studio.train corpus --out "$CORPUS" >/dev/null
$NICE $PY -m studio.train.gistnet_train --model "$MODEL" --device $DEV --corpus "$CORPUS" \
    --run-dir "$RUN/gistnet" --out "$OUT/gistnet.safetensors" "${GIST[@]}" > "$RUN/gistnet.json"
$NICE $PY -m studio.train.lensnet_train --model "$MODEL" --device $DEV --corpus "$CORPUS" \
    --gistnet "$OUT/gistnet.safetensors" --run-dir "$RUN/lensnet" --out "$OUT/lensnet.safetensors" \
    "${LABELS[@]}" "${LENS[@]}" > "$RUN/lensnet.json"
echo "trained: $OUT/gistnet.safetensors, $OUT/lensnet.safetensors (summaries in $RUN/*.json)" >&2
$PY -c 'import json, sys; print(json.dumps({"profile": sys.argv[1], "gistnet": json.load(open(sys.argv[2])),
    "lensnet": json.load(open(sys.argv[3]))}, indent=1))' "$PROFILE" "$RUN/gistnet.json" "$RUN/lensnet.json"
