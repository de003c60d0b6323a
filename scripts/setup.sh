#!/usr/bin/env bash
# Create .venv from requirements.txt. torch is installed first and pinned: the machine's local
# CPU wheel satisfies `torch==2.13.0`; an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check "$(grep -E '^torch==' requirements.txt)"
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
