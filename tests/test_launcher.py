"""The launcher `python -m app` (app/__main__.py): safe `streamlit run` flags whatever the working directory.

- its command line carries the settings of `.streamlit/config.toml` as flags (the two must agree), the port
  from `PORT` (8501 without it), and a user's own flags after them, where Streamlit's parser lets them win;
- (slow) a server it starts from a temporary folder, whose own `.streamlit/config.toml` and environment ask
  for every interface, listens on 127.0.0.1 only (read from /proc/net/tcp and tcp6) and answers its health
  check there.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from app import __main__ as launcher

REPO = Path(__file__).resolve().parents[1]
LISTEN = "0A"  # the TCP state LISTEN in /proc/net/tcp*


def _pairs(flags: list[str] | tuple[str, ...]) -> dict[str, str]:
    assert len(flags) % 2 == 0, flags
    return dict(zip(flags[::2], flags[1::2], strict=True))


def test_the_flags_are_the_config_files_settings():
    cfg = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    want = {f"--{section}.{key}": str(v).lower() if isinstance(v, bool) else str(v)
            for section, table in cfg.items() for key, v in table.items()}  # fmt: skip
    assert _pairs(launcher.SAFE_FLAGS) == want
    assert want["--server.address"] == "127.0.0.1" and want["--browser.gatherUsageStats"] == "false"


def test_argv_safe_flags_first_port_from_the_environment_user_flags_last(monkeypatch):
    monkeypatch.delenv("PORT", raising=False)
    cmd = launcher.argv([])
    assert cmd[:5] == [sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "streamlit_app.py")]
    assert _pairs(cmd[5:]) == {**_pairs(launcher.SAFE_FLAGS), "--server.port": "8501"}
    monkeypatch.setenv("PORT", "8600")
    assert _pairs(launcher.argv([])[5:])["--server.port"] == "8600"
    cmd = launcher.argv(["--server.address", "0.0.0.0"])
    assert cmd[-2:] == ["--server.address", "0.0.0.0"] and cmd.index("--server.address") < len(cmd) - 2


def test_a_later_explicit_flag_wins_in_streamlits_parser(monkeypatch):
    from streamlit.web.cli import main_run

    monkeypatch.delenv("PORT", raising=False)
    params = main_run.make_context("run", launcher.argv([])[4:]).params
    assert params["server_address"] == "127.0.0.1" and params["server_port"] == 8501
    assert params["browser_gatherUsageStats"] is False and params["server_maxUploadSize"] == 20
    params = main_run.make_context("run", launcher.argv(["--server.address", "0.0.0.0", "--server.port=8600"])[4:])
    assert params.params["server_address"] == "0.0.0.0" and params.params["server_port"] == 8600


# ------------------------------------------------------------------------------------------ a real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _address(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp* writes an address as 32-bit words in host (little-endian) byte order."""
    raw = b"".join(bytes.fromhex(hex_addr[i : i + 8])[::-1] for i in range(0, len(hex_addr), 8))
    return ipaddress.ip_address(raw)


def listening(port: int) -> set[str]:
    """The local addresses of every TCP socket listening on `port` (IPv4 and IPv6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue  # no IPv6 on this machine
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, _, hex_port = local.partition(":")
            if state == LISTEN and int(hex_port, 16) == port:
                found.add(str(_address(addr)))
    return found


def _health(port: int) -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
            return r.read().strip()
    except OSError:
        return None


@pytest.mark.slow  # a Streamlit server start (5-15 s on the 2-core machine)
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp")
def test_the_server_listens_on_loopback_only_from_any_folder(tmp_path):
    # A folder whose own config file, and an environment, that ask for every interface: the flags must win.
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "config.toml").write_text(
        '[server]\naddress = "0.0.0.0"\nmaxUploadSize = 200\n[browser]\ngatherUsageStats = true\n'
    )
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "STREAMLIT_SERVER_ADDRESS": "0.0.0.0", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # fmt: skip
    env.pop("PORT", None)
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app", "--server.port", str(port)], cwd=tmp_path, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not listening(port) or _health(port) is None:
            assert proc.poll() is None, "the launcher exited:\n" + log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no server on the port in 60 s:\n" + log.read_text()[-3000:]
            time.sleep(0.25)
        addrs = listening(port)
        assert addrs == {"127.0.0.1"}, addrs
        assert not addrs & {"0.0.0.0", "::"}
        assert _health(port) == b"ok"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and anything it started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
