#!/usr/bin/env bash
# Set up (idempotent) and run the product's main job on real text.
# Until the web app lands: record a standard-library module end to end (tiny model; any knob can be
# given as extra args, e.g. --scorer recency --set wc.w_max=1024) into runs/argparse, then print
# the focus metrics of that recording. The run folder can be replayed with other knobs:
#   .venv/bin/python -m engine replay runs/argparse --out runs/argparse-cool4 --set allocator.cooldown_steps=4
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
INPUT=$(.venv/bin/python -c 'import argparse; print(argparse.__file__)')
.venv/bin/python -m engine record --input "$INPUT" --out runs/argparse --overwrite --model tiny "$@"
.venv/bin/python -m telemetry metrics runs/argparse --indent 2
