"""Start recordings from the app as background processes, and report on them.

A recording is `python -m engine record ...` started with `subprocess.Popen` in its own session,
so it outlives the page's reruns (and the browser tab). Its stdout and stderr go to
`runs_dir()/_logs/<name>.log`; `runs_dir()/_logs/<name>.json` (created exclusively: it is the
lock that refuses a second start of the same name) holds its pid, command and input. Pasted text
and uploads are written to `runs_dir()/_inputs/` first, so the engine reads every input from a file.

Checks done here, each a one-line `RecordError`: a plain, unused run name (`app.paths.new_run_dir`);
a file input inside the allowed folders (`app.paths.check_input_file`); non-empty pasted or uploaded
text within `MAX_INPUT_BYTES`; knobs valid for `RunConfig`, none of them a path (`PATH_KNOBS`).
Content errors (binary, unreadable, empty file) are the engine's own one-line `error: ...`, read back
from the log by `job_status`.

This module imports no streamlit and never reads recordings beyond their manifest.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from app import paths
from contract.config import SCORER_NAMES, RunConfig, apply_overrides
from telemetry.runs import RunReadError, derive_status, load_manifest

MAX_INPUT_BYTES = 20 * 1024 * 1024  # the same cap as the upload widget (.streamlit/config.toml maxUploadSize)
MODELS = ("tiny", "default")  # or a local Hugging Face folder
# Knobs whose value is a path on the server (contract/config.py): the engine would create folders and files
# there, outside the run folder, so the app refuses them; the CLI (`python -m engine record --set`) takes them.
PATH_KNOBS = ("tree.spill_dir",)
_PROCS: dict[str, subprocess.Popen] = {}  # children of this server process (polled, so none is left a zombie)


class RecordError(ValueError):
    """A recording that cannot be started as asked; one line saying why."""


def logs_dir() -> Path:
    return paths.runs_dir() / "_logs"


def inputs_dir() -> Path:
    return paths.runs_dir() / "_inputs"


def _lock(name: str) -> Path:
    return logs_dir() / f"{name}.json"


def log_path(name: str) -> Path:
    return logs_dir() / f"{name}.log"


# ----------------------------------------------------------------------------------------- checks


def check_name(name: str) -> Path:
    """The output folder for run `name`, or RecordError if the name is bad, in use or recording."""
    try:
        out = paths.new_run_dir(name.strip())
    except paths.PathRefused as e:
        raise RecordError(str(e)) from None
    if is_running(name.strip()):
        raise RecordError(f"a recording named {name.strip()!r} is already running")
    if out.exists():
        raise RecordError(f"run folder {paths.run_ref(out)!r} already exists; pick another name")
    return out


def check_knobs(scorer: str, sets: list[str]) -> list[str]:
    """The `--set` strings, validated against RunConfig (RecordError with the config's one line)."""
    if scorer not in SCORER_NAMES:
        raise RecordError(f"scorer must be one of {', '.join(SCORER_NAMES)}, got {scorer!r}")
    sets = [s.strip() for s in sets if s.strip()]
    for item in sets:
        knob = item.partition("=")[0].strip()  # as apply_overrides reads the name
        if knob in PATH_KNOBS:
            raise RecordError(f"{knob} names a path on the server; it cannot be set from the app (use the CLI)")
    try:
        apply_overrides(RunConfig(), [*sets, f"scorer.name={scorer}"])
    except ValueError as e:
        raise RecordError(str(e).splitlines()[0]) from None
    return sets


def check_model(model: str) -> str:
    """`tiny`, `default`, or a local model folder inside the allowed input folders."""
    model = model.strip()
    if model in MODELS:
        return model
    if not model:
        raise RecordError("no model given: use tiny, default or a local model folder")
    try:
        p = paths.check_input_file(model)
    except paths.PathRefused as e:
        raise RecordError(str(e).replace("input", "model", 1)) from None
    if not p.is_dir():
        raise RecordError(f"model {model!r} is not a folder (expected a Hugging Face model folder)")
    return str(p)


def input_from_path(path: str) -> Path:
    if not path.strip():
        raise RecordError("no input file given")
    try:
        return paths.check_input_file(path.strip())
    except paths.PathRefused as e:
        raise RecordError(str(e)) from None


def _check_size(n: int, what: str) -> None:
    if n == 0:
        raise RecordError(f"the {what} is empty: nothing to record")
    if n > MAX_INPUT_BYTES:
        raise RecordError(f"the {what} is {n / 2**20:.1f} MB, over the {MAX_INPUT_BYTES // 2**20} MB limit; "
                          "record it from a file path instead")  # fmt: skip


def _write_input(filename: str, data: bytes) -> Path:
    inputs_dir().mkdir(parents=True, exist_ok=True)
    dest = inputs_dir() / filename
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dest)  # the engine never sees half a file
    return dest


def input_from_text(name: str, text: str) -> Path:
    """Pasted text -> a file under _inputs/ (RecordError if blank or over the size limit)."""
    if not text.strip():
        raise RecordError("the pasted text is empty: nothing to record")
    data = text.encode("utf-8")
    _check_size(len(data), "pasted text")
    return _write_input(f"{name}.txt", data)


def input_from_upload(name: str, filename: str, data: bytes) -> Path:
    """An uploaded file -> a file under _inputs/ (content is checked by the engine)."""
    _check_size(len(data), f"uploaded file {filename!r}")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(filename).name).lstrip(".") or "upload"
    return _write_input(f"{name}-{safe}", data)


# ---------------------------------------------------------------------------------------- start


@dataclass(frozen=True)
class Job:
    name: str
    out: Path
    log: Path
    pid: int
    command: list[str]


def command(inp: Path, out: Path, model: str, scorer: str, sets: list[str], device: str = "auto") -> list[str]:
    cmd = [sys.executable, "-m", "engine", "record", "--input", str(inp), "--out", str(out), "--model", model,
           "--scorer", scorer, "--device", device]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    return cmd


def start(name: str, inp: Path, model: str, scorer: str, sets: list[str], device: str = "auto") -> Job:
    """Check everything, then start the recorder in the background. RecordError if refused."""
    name = name.strip()
    out = check_name(name)
    model, sets = check_model(model), check_knobs(scorer, sets)
    logs_dir().mkdir(parents=True, exist_ok=True)
    lock = _lock(name)
    lock.unlink(missing_ok=True)  # check_name found it stale (its recorder is gone)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # two clicks race here: one wins
    except FileExistsError:
        raise RecordError(f"a recording named {name!r} is already starting") from None
    cmd = command(inp, out, model, scorer, sets, device)
    with open(log_path(name), "wb") as log:
        proc = subprocess.Popen(cmd, cwd=paths.REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    _PROCS[name] = proc
    meta = {"pid": proc.pid, "out": str(out), "input": str(inp), "command": cmd,
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}  # fmt: skip
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f)
    return Job(name, out, log_path(name), proc.pid, cmd)


# --------------------------------------------------------------------------------------- status


def _meta(name: str) -> dict | None:
    try:
        return json.loads(_lock(name).read_text())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    """True while `pid` is a live engine recorder (not a zombie, not a reused pid)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and b"engine" in cmdline


def is_running(name: str) -> bool:
    proc = _PROCS.get(name)
    if proc is not None:
        return proc.poll() is None
    meta = _meta(name)
    if meta is None:
        return _lock(name).exists()  # created, pid not written yet: it is starting
    return _pid_alive(int(meta.get("pid", -1)))


def _log_tail(name: str, n_bytes: int = 4096) -> tuple[str, str | None]:
    """(last progress line, the engine's `error: ...` line if any) from the log."""
    try:
        with open(log_path(name), "rb") as f:
            f.seek(max(0, os.path.getsize(log_path(name)) - n_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "", None
    lines = [seg.strip() for line in text.splitlines() for seg in line.split("\r") if seg.strip()]
    error = next((ln for ln in reversed(lines) if ln.startswith("error:")), None)
    if error is None and any(ln.startswith("Traceback") for ln in lines):
        error = "error: " + lines[-1]  # an unexpected crash: its last line says what
    return (lines[-1] if lines else ""), error


def job_status(name: str) -> dict:
    """Where recording `name` stands: state (starting | recording | complete | failed | interrupted |
    unknown), tokens, steps, the run reference, the last log line and the engine's error line."""
    meta = _meta(name) or {}
    out = Path(meta["out"]) if "out" in meta else paths.runs_dir() / name
    running = is_running(name)
    proc = _PROCS.get(name)
    code = proc.poll() if proc is not None else None
    last, error = _log_tail(name)
    info = {"name": name, "ref": paths.run_ref(out), "out": str(out), "running": running, "returncode": code,
            "tokens": 0, "steps": 0, "state": "unknown", "last_line": last, "error": error,
            "input": meta.get("input"), "started_at": meta.get("started_at")}  # fmt: skip
    try:
        m = load_manifest(out)
        info.update(tokens=int(m.get("tokens") or 0), steps=int(m.get("steps") or 0))
        status = derive_status(m)
        info["state"] = "recording" if running and status in ("recording", "interrupted") else status
        if m.get("error") and not error:
            info["error"] = f"error: {m['error']}"
    except RunReadError:
        info["state"] = "starting" if running else ("failed" if error or code else "unknown")
    return info


def job_for(ref: str) -> dict | None:
    """The status (`job_status`) of the recording started from the app that writes run `ref`, or None
    when no recording started here writes it (a run recorded elsewhere, or any other reference)."""
    name = str(ref).rsplit("/", 1)[-1]
    if not name or not _lock(name).is_file() or paths.run_ref(paths.runs_dir() / name) != ref:
        return None
    return job_status(name)


def jobs() -> list[str]:
    """Names of recordings started from the app, newest first."""
    if not logs_dir().is_dir():
        return []
    found = sorted(logs_dir().glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [p.stem for p in found]


def wait(name: str, timeout: float) -> dict:
    """Block until recording `name` has stopped (for tests and scripts); returns its status."""
    import time

    deadline = time.monotonic() + timeout
    proc = _PROCS.get(name)
    while time.monotonic() < deadline:
        if proc is not None:
            try:
                proc.wait(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                continue
            break
        if not is_running(name):
            break
        time.sleep(0.3)
    return job_status(name)
