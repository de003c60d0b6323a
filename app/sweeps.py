"""Where knob sweeps live for the app, and starting one in the background.

A sweep is a folder with a `sweep.json` (`studio/sweep.py`). The app lists those under `_sweeps/` in
every run root (the shipped samples' `sample_runs/_sweeps/`, the user's `runs/_sweeps/`, where sweeps
started from the Sweep page go; the leading `_` keeps them off the Runs page) and starts
`python -m engine sweep ... --out runs/_sweeps/NAME` as a background job (`app/jobs.py`). Imports no
streamlit.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from app import jobs, paths
from studio.sweep import MANIFEST
from studio.sweep_plan import find_runs, parse_grid, plan

SWEEPS = "_sweeps"


def sweep_dirs() -> list[Path]:
    """Every sweep folder of every run root, roots in order, names sorted."""
    out = []
    for root in paths.run_roots():
        d = root / SWEEPS
        if d.is_dir():
            out += sorted(p for p in d.iterdir() if (p / MANIFEST).is_file() and not p.is_symlink())
    return out


def sweep_ref(path: Path) -> str:
    """`<root>/<sweep>`: what the URL carries."""
    return f"{path.parent.parent.name}/{path.name}"


def resolve_sweep(ref: str) -> Path:
    """A sweep reference -> its folder; `paths.PathRefused` for anything that is not a listed sweep."""
    for p in sweep_dirs():
        if sweep_ref(p) == ref:
            return p
    raise paths.PathRefused(f"no sweep {ref!r} in the run folders' {SWEEPS}/")


def own_sweep(ref: str) -> Path | None:
    """The folder a reference names in the writable runs folder (listed or not yet), else None."""
    root, _, name = ref.partition("/")
    if root != paths.runs_dir().name:
        return None
    try:
        return new_sweep_dir(name)
    except paths.PathRefused:
        return None


def manifest(path: Path) -> dict:
    try:
        return json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path / MANIFEST}: unreadable ({str(e).splitlines()[0]})") from None


def new_sweep_dir(name: str) -> Path:
    """A new sweep folder in the writable runs folder; PathRefused for a name that is not plain."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name or ""):
        raise paths.PathRefused(f"sweep name {name!r}: use letters, digits, '.', '_' and '-'")
    return paths.runs_dir() / SWEEPS / name


def check(runs: list[str], grid: list[str]) -> None:
    """ValueError (one line) if the sweep of `runs` (folders) over `grid` would not start: the checks
    `python -m engine sweep` makes before any cell runs."""
    plan(find_runs(runs), parse_grid(grid, exact=False), exact=False)


def _marker(out: Path) -> Path:
    return paths.runs_dir() / "_cache" / "sweeps" / out.name


def start_sweep(out: Path, runs: list[str], grid: list[str]) -> subprocess.Popen | None:
    """Start `python -m engine sweep` into `out` unless one runs already (local Ray)."""
    cmd = [sys.executable, "-m", "engine", "sweep", "--runs", *runs, "--out", str(out), "--quiet",
           *[a for g in grid for a in ("--grid", g)]]  # fmt: skip
    return jobs.start(_marker(out), cmd)


def sweep_state(out: Path) -> tuple[str, object]:
    """("running", "done of cells") | ("failed", one line) | ("done", the sweep folder) | ("none", None)."""
    marker = _marker(out)
    try:
        m = manifest(out)
    except ValueError:
        m = None
    return jobs.job_state(
        marker,
        lambda: out if m is not None and m.get("status") == "complete" else None,
        how_far=lambda: f"{m['done']:,} of {m['cells']:,} cells" if m else None,
        why_failed=lambda: jobs.error(marker) or (m or {}).get("error"),
    )
