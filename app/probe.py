"""The Step inspector's probe, run in the background: `python -m engine probe RUN --step T --out FILE`
(`studio/probe.py`: the true NLL change of one-level edits of the step's top-k candidates, against the
scores the scorer gave), one cached Parquet file per step (`app.jobs.cache_dir(run, "probe")`).

`probe_state` says where a step's probe stands: done (its rows, settings and rank correlations),
running (its last progress line), failed (its one-line error: a missing model or input, a step that
cannot be probed) or not started. `app.jobs.cannot_rerun` refuses at once what would surely fail.
Imports no streamlit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from app import jobs

TOP_K = 16  # entries probed by default: half the highest-scored, half the lowest
META = b"mcs.probe"  # studio.probe.META: the app reads the file, it does not import the probe


def probe_path(run_dir: str | os.PathLike, step: int) -> Path:
    return jobs.cache_dir(run_dir, "probe") / f"step-{int(step):06d}.parquet"


def start_probe(run_dir: str | os.PathLike, step: int, top_k: int = TOP_K) -> subprocess.Popen | None:
    """Start the probe of `step` unless one runs already; returns the process."""
    target = probe_path(run_dir, step)
    target.unlink(missing_ok=True)  # a re-probe (other top-k) replaces the old result
    cmd = [sys.executable, "-m", "engine", "probe", str(Path(run_dir).resolve()), "--step", str(int(step)),
           "--top-k", str(int(top_k)), "--out", str(target), "--quiet"]  # fmt: skip
    return jobs.start(target, cmd)


def read_probe(run_dir: str | os.PathLike, step: int) -> pd.DataFrame | None:
    """The cached probe of `step` (attrs["meta"]: settings, Spearman, seconds), or None."""
    return jobs.read_parquet(probe_path(run_dir, step), META)


def probe_state(run_dir: str | os.PathLike, step: int) -> tuple[str, object]:
    """("done", DataFrame) | ("running", progress line or None) | ("failed", one line) | ("none", None)."""
    return jobs.file_state(probe_path(run_dir, step), lambda p: jobs.read_parquet(p, META))
