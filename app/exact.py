"""The Knobs lab's exact re-plan, run in the background: `python -m engine replay RUN --exact --set ...`
re-runs the scorer and the base model over the run's text with the lab's knobs, into a new run folder
in the runs folder (listed on the Runs page, followable on the Live page, comparable on Compare).

One knob setting of one run has one folder (`exact_dir`: the parent's name, the changed knobs and a
short hash of both), so a setting measured once is shown again at once. `exact_state` says where it
stands: done (the folder, complete), running (steps written so far), failed (one
line: the job's `error: ...`, or why the folder stopped) or not started. `exact_sets` adds what the
lab asks of every exact re-plan: no NLL baselines unless the user wants them (the recorded run's
serve, and they cost most of the time). Imports no streamlit.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from app import jobs, paths
from app.lab import replay_name
from telemetry.runs import RunReadError, derive_status, load_manifest

NO_BASELINES = "session.baselines=false"


def exact_sets(sets: list[str], baselines: bool) -> list[str]:
    """The `--set` list of an exact re-plan: the lab's knobs, plus `session.baselines=false` unless
    `baselines` (a re-plan without them measures the policy's NLL only, in a fraction of the time)."""
    sets = sorted(s for s in sets if not s.startswith("session.baselines="))
    return sets if baselines else sorted([*sets, NO_BASELINES])


def exact_dir(run_dir: str | os.PathLike, sets: list[str]) -> Path:
    """The run folder of `run_dir` re-planned exactly with `sets`, in the writable runs folder."""
    run_dir = Path(run_dir).resolve()
    changed = dict(s.split("=", 1) for s in sets if s != NO_BASELINES)  # the lab's knobs name it; the hash tells
    digest = hashlib.sha1(f"{run_dir}|{sorted(sets)}".encode()).hexdigest()[:6]
    return paths.runs_dir() / f"{replay_name(run_dir.name, changed)}-exact-{digest}"


def _marker(out: Path) -> Path:
    # The job's lock, log and error live in the runs folder's cache, not beside the run folder: the
    # runs folder lists run folders only.
    return paths.runs_dir() / "_cache" / "exact" / out.name


def start_exact(run_dir: str | os.PathLike, sets: list[str]) -> subprocess.Popen | None:
    """Start the exact re-plan of `run_dir` with `sets` unless it runs already; returns the process.
    A folder left by a failed or stopped attempt is replaced."""
    out = exact_dir(run_dir, sets)
    cmd = [sys.executable, "-m", "engine", "replay", str(Path(run_dir).resolve()), "--out", str(out), "--exact",
           "--overwrite", *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    return jobs.start(_marker(out), cmd)


def exact_state(run_dir: str | os.PathLike, sets: list[str]) -> tuple[str, object]:
    """("done", run folder) | ("running", steps written so far, or None while the model loads) |
    ("failed", one line) | ("none", None)."""
    out = exact_dir(run_dir, sets)
    marker = _marker(out)
    try:
        manifest = load_manifest(out)
    except RunReadError:
        manifest = None
    status = derive_status(manifest) if manifest is not None else None

    def why_failed() -> str | None:
        if status not in ("failed", "interrupted"):
            return None
        why = jobs.error(marker) or manifest.get("error") or "it stopped before the end"
        return f"{why} ({status} after {manifest.get('steps', 0):,} steps)"

    return jobs.job_state(marker, lambda: out if status == "complete" else None,
                          how_far=lambda: (manifest or {}).get("steps"), why_failed=why_failed)  # fmt: skip
