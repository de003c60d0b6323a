"""Queries over a knob sweep's results (`studio.sweep.read_results`): the table, its settings averaged
over recordings or for one, the Pareto set of two metrics, and the Knobs lab link of a setting.

Pure pandas over one small table (a row per cell), cached by the sweep folder and its version. Which
direction of a metric is better comes from the one metric registry. Draws nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app import paths
from app.sweeps import MANIFEST
from studio.sweep import METRIC_KEYS, read_results
from telemetry.registry import METRIC

ALL_RUNS = "every recording (mean)"


def version(path: Path) -> str:
    """Changes when the sweep writes a part or its manifest (a running sweep refreshes)."""
    parts = sorted((path / "results").glob("part-*.parquet"))
    stamp = os.stat(path / MANIFEST).st_mtime_ns if (path / MANIFEST).exists() else 0
    return f"{len(parts)}:{stamp}"


@st.cache_data(max_entries=16, show_spinner=False)
def results(path: str, ver: str) -> pd.DataFrame:
    """Every finished cell (a row each) with a `run_name` column; empty before the first part."""
    t = read_results(path)
    if t is None:
        return pd.DataFrame()
    df = t.to_pandas()
    df["run_name"] = df["run"].str.rstrip("/").str.rsplit("/", n=1).str[-1]
    return df


def knob_columns(df: pd.DataFrame, grid: dict) -> list[str]:
    return [k for k in grid if k in df.columns]


def directed_metrics(df: pd.DataFrame) -> list[str]:
    """Metrics with a better direction and at least one value in the sweep (the Pareto view's axes)."""
    return [k for k in METRIC_KEYS if METRIC[k].better and k in df.columns and df[k].notna().any()]


def measured_metrics(df: pd.DataFrame) -> list[str]:
    return [k for k in METRIC_KEYS if k in df.columns and df[k].notna().any()]


def settings(df: pd.DataFrame, knobs: list[str], run: str = ALL_RUNS) -> pd.DataFrame:
    """One row per setting: every metric's mean over the recordings (or the values of one recording,
    by its `run_name`), with how many recordings it covers. Knob values stay as written; a numeric
    copy (`<knob>#`) orders them."""
    d = df if run == ALL_RUNS else df[df["run_name"] == run]
    if d.empty:
        return pd.DataFrame(columns=[*knobs, "recordings"])
    metrics = [k for k in METRIC_KEYS if k in d.columns]
    out = d.groupby(knobs, sort=False, dropna=False)[metrics].mean().reset_index()
    out["recordings"] = d.groupby(knobs, sort=False, dropna=False).size().to_numpy()
    for k in knobs:
        out[f"{k}#"] = pd.to_numeric(out[k], errors="coerce")
    return out.sort_values([f"{k}#" for k in knobs] + knobs, kind="stable").reset_index(drop=True)


def pareto(df: pd.DataFrame, x: str, y: str) -> np.ndarray:
    """bool[n]: the rows no other row dominates on (x, y), each metric in its better direction (a row
    dominates another when it is at least as good on both and better on one). Rows with a missing
    value are never on the front."""
    sx = 1.0 if METRIC[x].better == "lower" else -1.0
    sy = 1.0 if METRIC[y].better == "lower" else -1.0
    a, b = sx * df[x].to_numpy(np.float64), sy * df[y].to_numpy(np.float64)  # lower is better for both now
    ok = ~(np.isnan(a) | np.isnan(b))
    front = np.zeros(len(df), bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (a <= a[i]) & (b <= b[i]) & ((a < a[i]) | (b < b[i]))
        front[i] = not dominated.any()
    return front


def run_ref(run: str) -> str | None:
    """The app's reference of a sweep's run (its folder, else a run of that name in the run roots), or
    None when the app cannot open it (a URI, or a run not in its folders)."""
    for candidate in (run, run.rstrip("/").rsplit("/", 1)[-1]):
        try:
            return paths.run_ref(paths.resolve_run(candidate))
        except paths.PathRefused:
            continue
    return None


def knob_params(row: pd.Series, knobs: list[str]) -> dict[str, str]:
    """The Knobs lab's URL parameters for a setting (`k.section.field=value`)."""
    return {f"k.{k}": str(row[k]) for k in knobs if isinstance(row[k], str) and row[k] != ""}
