"""Start the Studio web app with safe settings, whatever folder it is started from: `python -m app [args]`.

Streamlit reads `.streamlit/config.toml` from the working directory only, so `streamlit run
app/streamlit_app.py` started anywhere but the repository root listened on every interface, sent usage
statistics and took 200 MB uploads. This launcher passes that file's settings as `streamlit run` flags
(`SAFE_FLAGS`), which win over any config file and any STREAMLIT_* environment variable: the server
listens on 127.0.0.1 only, gathers no usage statistics, caps uploads at 20 MB, runs headless with no
file watcher and a minimal toolbar. The port is `PORT` from the environment, 8501 without it.

Extra arguments go to `streamlit run` after those flags, and the last of two equal flags wins, so a user
can change any of them on purpose: `python -m app --server.port 8600`, or, to expose the app to the
network, `python -m app --server.address 0.0.0.0`.

It imports nothing from the project (no engine, no telemetry): it replaces itself (`os.execv`) with
`<this python> -m streamlit run <absolute path of app/streamlit_app.py> ...`, so signals reach the server.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "streamlit_app.py"
# The settings of .streamlit/config.toml (tests/test_launcher.py checks that the two agree); the upload cap
# is also app.recorder.MAX_INPUT_BYTES.
SAFE_FLAGS = (
    "--server.address", "127.0.0.1",
    "--browser.gatherUsageStats", "false",
    "--server.maxUploadSize", "20",
    "--server.headless", "true",
    "--server.fileWatcherType", "none",
    "--client.toolbarMode", "minimal",
)  # fmt: skip
DEFAULT_PORT = "8501"


def argv(extra: list[str]) -> list[str]:
    """The server's command line: the safe flags and the port first, the user's `extra` after them (they win)."""
    port = os.environ.get("PORT") or DEFAULT_PORT
    return [sys.executable, "-m", "streamlit", "run", str(SCRIPT), *SAFE_FLAGS, "--server.port", port, *extra]


def main() -> None:
    cmd = argv(sys.argv[1:])
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
