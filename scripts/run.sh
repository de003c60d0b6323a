#!/usr/bin/env bash
# Set up (idempotent) and run the product's main job on real text.
# Today: stream a standard-library module through the engine (tiny model, every knob at its
# default unless given with --set) and print the JSON summary. Extra args go to `engine run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
INPUT=$(.venv/bin/python -c 'import argparse; print(argparse.__file__)')
exec .venv/bin/python -m engine run --input "$INPUT" --model tiny "$@"
