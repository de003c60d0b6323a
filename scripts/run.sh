#!/usr/bin/env bash
# Set up (idempotent) and start the Studio web app on this machine: http://127.0.0.1:8501
# It lists the recordings shipped in sample_runs/ and the user's runs/ folder; the Record page
# records new ones (runs/). The launcher (`python -m app`, app/__main__.py) listens on 127.0.0.1 only
# whatever the config files say; extra args go to `streamlit run` after its flags, and a later flag
# wins: --server.port 8600 (or PORT=8600), or --server.address 0.0.0.0 to expose it on purpose.
# Other folders of runs, added to the list: MCS_RUN_ROOTS=/path/a:/path/b bash scripts/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p runs
echo "MegaContext Studio: open http://127.0.0.1:${PORT:-8501} (Ctrl-C stops the server)" >&2
exec .venv/bin/python -m app "$@"
