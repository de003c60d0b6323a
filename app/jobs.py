"""Background jobs that produce one file for a run (the Gist map's UMAP, the Step inspector's probe),
and where such files are cached.

A job is a command started in its own session (it outlives the page's reruns and the browser tab)
whose product is one `target` file, written atomically by the job. Beside the target: `.running`
(the job's pid, while it runs), `.log` (its stdout and stderr), `.progress` (one line the job may
write to say how far it got) and `.error` (the one-line reason it failed, if the job writes one; a
job that only prints `error: ...` and exits has that line read back from its log). `cache_dir` keeps
what a job makes in the run folder for the user's own runs, and under `runs_dir()/_cache/` for
shipped samples and read-only folders, which stay as they were.

Imports no streamlit.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from app import paths

_PROCS: list[subprocess.Popen] = []  # ours: polled so that finished ones are reaped


def cache_dir(run_dir: str | os.PathLike, name: str) -> Path:
    """Folder `name` of the run's cached products: `RUN/name` for the user's own writable runs, else
    `runs_dir()/_cache/<root>/<run>/name`."""
    run_dir = Path(run_dir).resolve()
    if paths.runs_dir() in run_dir.parents and os.access(run_dir, os.W_OK):
        return run_dir / name
    return paths.runs_dir() / "_cache" / run_dir.parent.name / run_dir.name / name


def _side(target: Path, suffix: str) -> Path:
    return target.with_name(target.name + suffix)


def lock_path(target: Path) -> Path:
    return _side(target, ".running")


def error_path(target: Path) -> Path:
    """Where a job that can say why it failed writes that one line (the UMAP worker does)."""
    return _side(target, ".error")


def running(target: Path) -> bool:
    """True while the job making `target` runs (its pid is alive and not a zombie)."""
    try:
        pid = int(lock_path(target).read_text())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat")
        return not (stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")
    except (ProcessLookupError, PermissionError):
        return False


def error(target: Path) -> str | None:
    """Why the last job for `target` failed (one line), or None: its `.error` file, else, once it has
    ended without making the target, the last `error: ...` line of its log."""
    try:
        return error_path(target).read_text().strip() or None
    except OSError:
        pass
    if running(target) or target.exists():
        return None
    try:
        lines = _side(target, ".log").read_text(errors="replace").splitlines()
    except OSError:
        return None
    said = [ln.removeprefix("error: ").strip() for ln in lines if ln.startswith("error: ")]
    return said[-1] if said else None


def progress(target: Path) -> str | None:
    try:
        return _side(target, ".progress").read_text().strip() or None
    except OSError:
        return None


def start(target: Path, cmd: list[str]) -> subprocess.Popen | None:
    """Start `cmd` (which makes `target`) unless a job for `target` runs already; returns the process.
    A previous attempt's error, log and progress are cleared first."""
    _PROCS[:] = [p for p in _PROCS if p.poll() is None]
    if running(target):
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".error", ".progress"):
        _side(target, suffix).unlink(missing_ok=True)
    with open(_side(target, ".log"), "wb") as log:
        proc = subprocess.Popen(cmd, cwd=paths.REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    lock_path(target).write_text(str(proc.pid))
    _PROCS.append(proc)
    return proc


def read_parquet(path: Path, key: bytes):
    """A job's Parquet product as a pandas DataFrame with its JSON metadata `key` in attrs["meta"],
    or None while there is none (or it cannot be read)."""
    try:
        t = pq.read_table(path)
    except (OSError, pa.ArrowInvalid):
        return None
    df = t.to_pandas()
    df.attrs["meta"] = json.loads((t.schema.metadata or {}).get(key, b"{}"))
    return df


def job_state(marker: Path, done, *, how_far=None, why_failed=None) -> tuple[str, object]:
    """Where the job behind `marker` stands, judged by what it makes: ("running", `how_far()`, else its
    progress line, or None), ("done", `done()` once that gives something), ("failed", one line:
    `why_failed()` when the product itself says why, else the job's error) or ("none", None).

    Every background product of the app is judged this way: a cached file (`done` reads it), a run
    folder or a sweep (the three read their manifests)."""
    if running(marker):
        return "running", how_far() if how_far is not None else progress(marker)
    got = done()
    if got is not None:
        return "done", got
    err = (why_failed() if why_failed is not None else None) or error(marker)
    return ("failed", err) if err else ("none", None)


def file_state(target: Path, read) -> tuple[str, object]:
    """`job_state` of a job that makes the one file `target`: done once `read(target)` gives something."""
    return job_state(target, lambda: read(target))


def cannot_rerun(manifest: dict) -> str | None:
    """Why a job that re-runs the run's model over its text (the probe, the exact re-plan) cannot work,
    found without loading anything (None: try it): its text came from stdin or its input file is
    gone, or its model is a local folder that is not there."""
    src = manifest.get("input")
    if src in (None, "", "-"):
        return "its text was read from stdin, so there is no document to re-read"
    if not (Path(src) if Path(src).is_absolute() else paths.REPO / src).is_file():
        return f"its input {src} is not a readable file any more"
    model = str((manifest.get("model") or {}).get("id", ""))
    if model not in ("", "default") and not model.startswith("tiny") and not Path(model).expanduser().is_dir():
        return f"its model folder {model} is not on this machine"
    return None


def processes() -> list[subprocess.Popen]:
    """The jobs this server process started that may still run (tests stop them)."""
    return _PROCS
