"""The Step inspector's attention detail, run in the background: `python -m engine attention RUN --step T
--out FILE` (`studio/attention_detail.py`: the base model's attention at the step by layer and head,
and LensNet's by query, recomputed on the rebuilt step), one cached Parquet file per step
(`app.jobs.cache_dir(run, "attention")`), like the probe (`app/probe.py`). Imports no streamlit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from app import jobs

META = b"mcs.attention"  # studio.attention_detail.META: the app reads the file, it does not import the engine


def detail_path(run_dir: str | os.PathLike, step: int) -> Path:
    return jobs.cache_dir(run_dir, "attention") / f"step-{int(step):06d}.parquet"


def start_detail(run_dir: str | os.PathLike, step: int) -> subprocess.Popen | None:
    """Start the attention detail of `step` unless one runs already; returns the process."""
    target = detail_path(run_dir, step)
    cmd = [sys.executable, "-m", "engine", "attention", str(Path(run_dir).resolve()), "--step", str(int(step)),
           "--out", str(target), "--quiet"]  # fmt: skip
    return jobs.start(target, cmd)


def read_detail(run_dir: str | os.PathLike, step: int) -> pd.DataFrame | None:
    """The cached detail of `step` (attrs["meta"]: layers, heads, LensNet's check, seconds), or None."""
    return jobs.read_parquet(detail_path(run_dir, step), META)


def detail_state(run_dir: str | os.PathLike, step: int) -> tuple[str, object]:
    """("done", DataFrame) | ("running", progress line or None) | ("failed", one line) | ("none", None)."""
    return jobs.file_state(detail_path(run_dir, step), lambda p: jobs.read_parquet(p, META))
