#!/usr/bin/env bash
# Regenerate models/default from scratch on this machine: corpus -> tokenizer -> base LM.
# Intermediate files (corpus, token cache, resumable checkpoints) go to runs/train/ (git-ignored).
# Re-running resumes the base LM from its last checkpoint; delete runs/train/base to start over.
# Extra arguments go to the base LM step, e.g. `--set max_seconds=600`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
W=runs/train
nice -n 10 $PY -m engine.train corpus --out $W/corpus
nice -n 10 $PY -m engine.train tokenizer --corpus $W/corpus --out $W/tokenizer --vocab-size 8192
nice -n 10 $PY -m engine.train base --preset default --corpus $W/corpus --tokenizer $W/tokenizer \
    --run-dir $W/base --out models/default "$@"
# GistNet against the frozen base model (KL on the next H tokens, teacher = the raw block), then
# LensNet on counterfactual ΔNLL labels measured on sessions that use that GistNet's trees. Both
# resume from runs/train/{gistnet,lensnet}; the weights land beside the base model. Compact
# positions: the base model's trained context (1,024) is shorter than the streams it reads.
nice -n 10 $PY -m engine.train.gistnet_train --model default --corpus $W/corpus --run-dir $W/gistnet \
    --out models/default/gistnet.safetensors --set position_mode=compact
nice -n 10 $PY -m engine.train.lensnet_train --model default --corpus $W/corpus --run-dir $W/lensnet \
    --out models/default/lensnet.safetensors --set-labels position_mode=compact
