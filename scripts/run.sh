#!/usr/bin/env bash
# Set up (idempotent) and start the Studio web app on this machine: http://127.0.0.1:8501
# It lists the recordings shipped in sample_runs/ and the user's runs/ folder; the Record page
# records new ones (runs/). Extra args go to `streamlit run` (e.g. --server.port 8600).
# Other folders of runs: MCS_RUN_ROOTS=/path/a:/path/b bash scripts/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p runs
echo "MegaContext Studio: open http://127.0.0.1:${PORT:-8501} (Ctrl-C stops the server)" >&2
exec .venv/bin/python -m streamlit run app/streamlit_app.py --server.port "${PORT:-8501}" "$@"
