#!/usr/bin/env bash
# Everything this project needs a GPU for, as one command that fits a 10-minute window on one
# H100/H200 (set-up of the default model included):
#
#   bash scripts/gpu_check.sh            # = all: tests, model, train, bench, eval, needle, in that order
#   bash scripts/gpu_check.sh tests      # or any list of stages
#
#   tests   the `gpu` tests (pytest -m gpu)
#   smoke   train + bench + eval + needle with the tiny model and second-long caps (checks the plumbing)
#   model   convert the default model if needed (engine/default_model.py; MCS_GGUF may name the GGUF)
#   train   GistNet + LensNet with the GPU profile of scripts/train_default.sh, into models/default/
#   bench   bench/bench_gpu.py: a refocus step against the base model's forward, w_max 4,096, 1M tokens
#   eval    engine eval on three long test-split documents at w_max 1,024 (the compared policies, mean and spread)
#   needle  the passkey scenario at 8k and 16k tokens, five depths each
#
# Each stage writes <stage>.json (its result) under $RESULTS (default runs/gpu) as soon as it ends
# and appends its log to $RESULTS/stages.log; it has its own time cap, so a slow or failing stage
# costs only itself: the next one still runs. PY names the python (default .venv/bin/python).
# Figures go to docs/BENCHMARKS.md and models/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
R=${RESULTS:-runs/gpu}
C=${CORPUS:-runs/train/corpus}
mkdir -p "$R"
export PY PYTHONUNBUFFERED=1
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(tests model train bench eval needle)
T=$C/test
DOCS=("$T/asyncio__base_events.py" "$T/idlelib__pyshell.py" "$T/tarfile.py")
FILLER="$T/tarfile.py"
MODEL=default
DEV=${DEV:-cuda}  # the smoke stage can run on the CPU too (DEV=cpu)
export DEV
EVAL=(--set wc.w_max=1024 --set session.max_tokens=16384 --nll-every 2 --gist-samples 256
      --policies lensnet,recency,compressive,retrieval,attention,sink)
NEEDLE=(--lengths 8192,16384 --depths 0.1,0.3,0.5,0.7,0.9 --policies lensnet,retrieval,recency)
BENCH=(--tokens 1048576)
CAPS=(360 60 150 90)  # seconds: train, bench, eval, needle

LOGS=$(mktemp -d)
stage() {  # stage NAME CAP_SECONDS COMMAND...: run with a time cap, stdout to NAME.json, stderr to stages.log
  local name=$1 cap=$2 t0=$SECONDS status
  shift 2
  echo "== $name (cap ${cap} s)" >&2
  if timeout "$cap" "$@" > "$R/$name.json" 2> "$LOGS/$name.log"; then
    status="ok, $((SECONDS - t0)) s"
  else
    status="FAILED or timed out after $((SECONDS - t0)) s"
    tail -n 8 "$LOGS/$name.log" >&2
  fi
  echo "== $name $status" >&2
  { echo "===== $name: $status"; cat "$LOGS/$name.log"; } >> "$R/stages.log"
}

for s in "${STAGES[@]}"; do
  case "$s" in
    tests) stage tests 150 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_model.py \
      tests/test_session.py ;;
    smoke)
      # The same commands with the tiny model and tiny caps: a quick check of every stage's plumbing.
      stage smoke-train 120 env PROFILE_MODEL=tiny W=runs/smoke CORPUS="$C" OUT=runs/smoke/nets \
        bash scripts/train_default.sh smoke
      stage smoke-bench 60 $PY bench/bench_gpu.py --model tiny --device "$DEV" --tokens 65536 --steps 20
      stage smoke-eval 60 $PY -m engine eval --input "${DOCS[@]:0:2}" --model tiny --device "$DEV" \
        --set wc.w_max=512 --set session.max_tokens=3000 --nll-every 2 --gist-samples 16 --quiet
      stage smoke-needle 60 $PY -m engine eval --scenario passkey --input "$FILLER" --model tiny --device "$DEV" \
        --set wc.w_max=512 --lengths 2048 --depths 0.2,0.8 --policies lensnet,retrieval,recency --quiet
      ;;
    model) stage model 120 $PY -m engine.default_model ;;
    train)
      stage train "${CAPS[0]}" bash scripts/train_default.sh gpu
      cp models/default/gistnet.safetensors models/default/lensnet.safetensors "$R/" 2>/dev/null
      ;;
    bench) stage bench "${CAPS[1]}" $PY bench/bench_gpu.py --model $MODEL --device cuda "${BENCH[@]}" ;;
    eval) stage eval "${CAPS[2]}" $PY -m engine eval --input "${DOCS[@]}" --model $MODEL --device cuda "${EVAL[@]}" ;;
    needle) stage needle "${CAPS[3]}" $PY -m engine eval --scenario passkey --input "$FILLER" --model $MODEL \
      --device cuda --set wc.w_max=1024 "${NEEDLE[@]}" ;;
    *) echo "error: unknown stage '$s'" >&2; exit 2 ;;
  esac
done
