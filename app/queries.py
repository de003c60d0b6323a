"""The app's query layer: cached functions over `telemetry.reader` that return small pandas DataFrames.

Every function takes a run folder (a string) and its `version`, a cheap fingerprint of the folder
(manifest stamp and part counts): a finished run keeps its version, so its results stay cached for
the life of the server, while a run that is still recording changes version with every flush and
heartbeat, so a page that follows it sees new data on its next rerun. Heavy work (binning a heatmap,
scanning entries) runs in DuckDB inside the reader; what comes back here is already screen-sized
(at most `MAX_CELLS` heatmap cells, at most `MAX_POINTS` points per metric line).

This module draws nothing: the widgets every page shares (run guard, step scrubber, page links) are
`app/widgets.py`. Queries about one step are in `app/queries_step.py`; charts in `app/charts*.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import streamlit as st

from app import paths
from contract import nodes
from telemetry import metrics, registry, run_metrics
from telemetry.reader import Run
from telemetry.runs import RunReadError  # noqa: F401  (pages catch it as q.RunReadError: they import no telemetry)

MAX_CELLS = 250_000  # heatmap cells sent to the browser, all traces of a figure together
MAX_POINTS = 2_000  # points per metric line: more than a screen shows
SCORE_COLUMNS = ("raw_score", "score_interp", "score_shift", "score")  # the pipeline's stages, in order
RECORD_HINT = (
    "Record one on the **Record** page, or from a shell: "
    "`python -m engine record --input FILE --out runs/NAME --model tiny`."
)


# ------------------------------------------------------------------------------------ keys


def version(path: str | os.PathLike) -> str:
    """A fingerprint that changes whenever a run gains data or its manifest is rewritten."""
    p = Path(path)
    try:
        s = (p / "manifest.json").stat()
        stamp = f"{s.st_mtime_ns}:{s.st_size}"
    except OSError:
        stamp = "-"
    parts = 0
    for table in ("steps", "entries", "decisions"):
        try:
            parts += len(os.listdir(p / table))
        except OSError:
            pass
    return f"{stamp}:{parts}"


@st.cache_resource(max_entries=32, show_spinner=False)
def _run(path: str) -> Run:
    # One Run per folder for the server's life: it keeps the DuckDB connection and its cache of
    # checked part footers, so a warm query never re-reads footers.
    return Run(path)


def get_run(path: str | os.PathLike) -> Run:
    return _run(str(Path(path).resolve()))


def key(run: Run) -> tuple[str, str]:
    """(path, version): the first two arguments of every cached query."""
    p = str(Path(run.path).resolve())
    return p, version(p)


# ------------------------------------------------------------------------------------- labels


def node_labels(node_id: pd.Series | np.ndarray, block_size: int | None = None) -> list[str]:
    """`L1 #12` for node (lod 1, index 12), or with `block_size` its tokens too (`L1 #12, tokens
    384-416`); `tail` for the raw tail (-1)."""
    ids = np.asarray(node_id, dtype=np.int64)
    lod, idx = nodes.node_lod(ids), nodes.node_index(ids)
    labels = [f"L{lv} #{ix}" for lv, ix in zip(lod, idx, strict=True)]
    if block_size is not None:
        start, end = nodes.node_span(ids, block_size)
        labels = [f"{b}, tokens {s}-{e}" for b, s, e in zip(labels, start, end, strict=True)]
    return ["tail" if i < 0 else b for i, b in zip(ids, labels, strict=True)]


def _df(t: pa.Table) -> pd.DataFrame:
    return t.to_pandas()


# The metric registry as pages read it (pages import the query layer, not telemetry).
HEADLINE = registry.HEADLINE  # the Runs table's metric columns
METRICS, METRIC, LINES, LINE_NAMES = registry.METRICS, registry.METRIC, registry.LINES, registry.LINE_NAMES


def overlay_series(runs: list[tuple[str, str]], line: registry.Line) -> pd.DataFrame:
    """One per-step series (`line`'s first column) of several runs side by side: a `step` column and
    one column per run reference, outer-joined on step (a run without a step has no value there)."""
    column = line.columns[0]
    out = pd.DataFrame({"step": pd.Series(dtype="int64")})
    for ref, path in runs:
        df = series(path, version(path), line.series)
        part = df[["step", column]].rename(columns={column: ref}) if column in df.columns else df[["step"]]
        out = out.merge(part, on="step", how="outer")
    return out.sort_values("step").reset_index(drop=True)


def missing_attention(manifest: dict, table: str) -> tuple[str, str | None]:
    """Why a run has no rows in `table` (`attention` or `lens_attention`), in one line, and the run to
    look in instead (a replay's parent, as a run reference) or None."""
    what = {"attention": "base-model attention", "lens_attention": "LensNet cross-attention"}[table]
    parent = manifest.get("parent")
    if parent:
        try:
            ref = paths.run_ref(paths.resolve_run(parent))
        except paths.PathRefused:
            return f"No {what} in this replay: it re-plans with the recorded scores and runs no model.", None
        return (f"No {what} in this replay: it re-plans with the recorded scores and runs no model; "
                f"the run it replays, `{ref}`, has what was recorded."), ref  # fmt: skip
    if table == "lens_attention" and manifest.get("scorer") != "lensnet":
        return f"No {what} in this run: its scorer is `{manifest.get('scorer')}`, and only `lensnet` has one.", None
    if table == "attention":
        return f"This run recorded no {what} (record with `session.attention_every` above 0).", None
    return f"This run recorded no {what}.", None


def missing_message(line: registry.Line, df: pd.DataFrame) -> str:
    """Why a run has nothing to draw for `line` (its series `df` is empty or all null), in one line
    that says how to record it: NLL off, or NLL on without the baselines a ΔNLL needs."""
    if line.series != "delta_nll":
        return f"No {line.title} data in this run."
    if "nll" not in df.columns or df["nll"].isna().all():
        return (
            "No NLL in this run: it was recorded with `session.compute_nll=false` "
            "(`--set session.compute_nll=true`, or leave it on in the Record page's knobs)."
        )
    return (
        "No baselines in this run: its NLL was measured, but not the full-context and recency-window NLL "
        "a ΔNLL compares it with (record with `session.baselines=true`: the Record page's NLL baselines switch)."
    )


@st.cache_resource(show_spinner=False)
def _summaries() -> dict:
    # Shared by every session, like cache_data, but it can be asked whether a run's summary is known
    # without computing it (the Runs page shows big runs' numbers only once something computed them).
    return {}


def summary(path: str, ver: str) -> dict:
    """`telemetry.run_metrics.summary` of the run (headline numbers, worst nodes as a list of dicts), cached."""
    known = _summaries()
    if (path, ver) not in known:
        if len(known) >= 128:  # a live run makes a new version every few seconds: forget the oldest
            known.pop(next(iter(known)))
        known[(path, ver)] = run_metrics.summary(get_run(path))
    return known[(path, ver)]


def cached_summary(path: str, ver: str) -> dict | None:
    """The run's summary if some page has computed it already, else None (never computes)."""
    return _summaries().get((path, ver))


@st.cache_data(max_entries=64, show_spinner=False)
def overview(path: str, ver: str) -> dict:
    """Extents and what the run holds: step and token range, tables, knobs the pages need."""
    run = get_run(path)
    out = {"s0": 0, "s1": -1, "t0": 0, "t1": 0, "n_steps": run.n_steps(), "tables": run.tables()}
    src = run.source("entries")  # cut where `steps` ends, like every read of a run
    if src:
        q = f'SELECT min(step) s0, max(step) s1, min(start) t0, max("end") t1 FROM {src[0]} WHERE iteration = 0'
        ext = run.sql(q, src[1]).to_pylist()[0]
        if ext["s0"] is not None:
            out.update({k: int(v) for k, v in ext.items()})
    out["block_size"] = int(run.knob("tree.block_size", 32))
    out["max_lod"] = int(run.knob("tree.max_lod", 2))
    out["tau_expand"] = float(run.knob("allocator.tau_expand", 0.2))
    m = run.manifest
    out["tokens"] = int(m.get("tokens") or 0)
    out["scorer"] = m.get("scorer")
    return out


def step_list(path: str, ver: str) -> np.ndarray:
    """The recorded steps, in order (usually 0..n-1; a cadence > 1 or a replay may skip some)."""
    return _steps(path, ver)


@st.cache_data(max_entries=64, show_spinner=False)
def _steps(path: str, ver: str) -> np.ndarray:
    return get_run(path).steps(["step"]).column("step").to_numpy()


# ------------------------------------------------------------------------------------ heatmaps


def grid_size(width: int, height: int, n_steps: int, n_tokens: int, budget: int = MAX_CELLS) -> tuple[int, int]:
    """Bins (token bins, step bins) for a chart: never finer than the data, never over `budget` cells."""
    w, h = max(1, min(width, n_tokens)), max(1, min(height, n_steps))
    if w * h > budget:  # keep the aspect: shrink both by the same factor
        f = (budget / (w * h)) ** 0.5
        w, h = max(1, int(w * f)), max(1, int(h * f))
    return w, h


@st.cache_data(max_entries=16, show_spinner=False)  # up to ~12 MB each at MAX_CELLS: keep few
def heatmap(
    path: str,
    ver: str,
    column: str = "lod",
    width: int = 1000,
    height: int = 250,
    step_range: tuple[int, int] | None = None,
    token_range: tuple[int, int] | None = None,
    agg: str = "mean",
) -> pd.DataFrame:
    """One entries column binned over (token, step) in DuckDB, as long-form cells.

    `attrs["extent"]` holds what a chart needs to place the bins: t0, t1 (tokens, half-open),
    s0, s1 (steps, inclusive), w and h (bins). `width * height` must respect MAX_CELLS (see grid_size).
    """
    run = get_run(path)
    ov = overview(path, ver)
    s0, s1 = step_range or (ov["s0"], ov["s1"])
    t0, t1 = token_range or (ov["t0"], ov["t1"])
    if s1 < s0 or t1 <= t0:
        df = pd.DataFrame(columns=["x_bin", "y_bin", "token_lo", "token_hi", "step_lo", "step_hi", "value", "weight"])
        df.attrs["extent"] = {"t0": t0, "t1": t1, "s0": s0, "s1": s1, "w": 0, "h": 0}
        return df
    w, h = min(width, t1 - t0), min(height, s1 - s0 + 1)
    if column == "lod":
        t = run.lod_timeline(w, h, (s0, s1), (t0, t1), agg=agg)
    else:
        t = run.score_heatmap(w, h, (s0, s1), (t0, t1), column=column, agg=agg)
    df = _df(t)
    df.attrs["extent"] = {"t0": int(t0), "t1": int(t1), "s0": int(s0), "s1": int(s1), "w": int(w), "h": int(h)}
    return df


# ------------------------------------------------------------------------------------- metrics


def _thin(df: pd.DataFrame, max_points: int) -> pd.DataFrame:
    """Mean of every metric over equal runs of steps, so a line has at most `max_points` points."""
    if len(df) <= max_points:
        return df.reset_index(drop=True)
    b = np.arange(len(df)) * max_points // len(df)
    num = df.select_dtypes(include=["number", "bool"]).astype(float)
    out = num.groupby(b).mean()
    out["step"] = df["step"].groupby(b).first().to_numpy()  # a bin is placed at its first step
    return out.reset_index(drop=True)


@st.cache_data(max_entries=256, show_spinner=False)
def series(path: str, ver: str, name: str, max_points: int = MAX_POINTS) -> pd.DataFrame:
    """`telemetry.run_metrics.series(run, name)` as a DataFrame thinned to `max_points` rows."""
    df = _df(run_metrics.series(get_run(path), name))
    if name == "sequential" and not df.empty:
        # One row per consecutive pair of expansions: the share per step is what a line can show.
        df = df.groupby("step", as_index=False)["sequential"].mean()
    return _thin(df, max_points)


@st.cache_data(max_entries=64, show_spinner=False)
def worst_nodes(path: str, ver: str, top: int = 10, osc_window: int = 5) -> pd.DataFrame:
    """The nodes with the most ping-pongs, each with its first ping-pong step (where a link should land)."""
    run = get_run(path)
    cols = ["step", "iteration", "node_id", "lod_from", "lod_to", "action", "outcome", "seq"]
    ev = _df(metrics.oscillation_events(run.table("decisions", cols, where="outcome = 'applied'"), osc_window))
    if ev.empty:
        return pd.DataFrame(columns=["node", "node_id", "ping_pongs", "first_step", "start", "end"])
    g = ev.groupby("node_id").agg(ping_pongs=("step", "size"), first_step=("step", "min")).reset_index()
    g = g.sort_values(["ping_pongs", "node_id"], ascending=[False, True]).head(top).reset_index(drop=True)
    bs = int(run.knob("tree.block_size", 32))
    g["start"], g["end"] = nodes.node_span(g["node_id"].to_numpy(), bs)
    g.insert(0, "node", node_labels(g["node_id"]))
    return g


@st.cache_data(max_entries=64, show_spinner=False)
def residency_lengths(path: str, ver: str) -> pd.DataFrame:
    """How many closed residency runs last each number of steps (a histogram's data)."""
    runs = _df(run_metrics.residency_runs_of(get_run(path)))  # batch by batch: bounded memory on long runs
    closed = runs[~runs["open"]] if not runs.empty else runs
    if closed.empty:
        return pd.DataFrame({"length": pd.Series(dtype="int64"), "runs": pd.Series(dtype="int64")})
    c = closed.groupby("length").size().rename("runs").reset_index()
    return c


def compare_table(a: dict, b: dict, names: tuple[str, str]) -> pd.DataFrame:
    """Every metric of the registry (and the step count) for two runs side by side: `b - a`, and
    which run is better where the metric has a better direction and the two differ."""
    rows = []
    for key in ("steps", *(m.key for m in registry.METRICS)):
        m = registry.METRIC.get(key)
        va, vb = a.get(key), b.get(key)
        delta = vb - va if isinstance(va, int | float) and isinstance(vb, int | float) else None
        better = ""
        if m is not None and m.better and delta:  # a None or 0 delta has no better side
            better = names[1] if (delta < 0) == (m.better == "lower") else names[0]
        label = m.title if m is not None else "steps"
        rows.append({"metric": key, names[0]: va, names[1]: vb, "delta": delta, "better": better, "label": label})
    return pd.DataFrame(rows)


def scenario_marks(manifest: dict) -> list[tuple[int, int, str]]:
    """Token spans a scenario run asks the Timeline to mark (a passkey run's needle), from its manifest;
    [] for an ordinary run or a malformed entry."""
    sc = manifest.get("scenario") if isinstance(manifest.get("scenario"), dict) else {}
    span = sc.get("needle_span")
    if isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) for v in span) and span[0] < span[1]:
        return [(span[0], span[1], "needle")]
    return []


def scenario_caption(manifest: dict) -> str:
    """One line about a scenario run: where the needle is and what happened when it was asked for;
    "" for an ordinary run."""
    if not scenario_marks(manifest):
        return ""
    sc = manifest.get("scenario") or {}
    start, end = sc.get("needle_span", [0, 0])
    line = f"Needle (passkey {sc.get('passkey', '?')}) at tokens {start:,}-{end:,}, marked in magenta."
    res = sc.get("result") or {}
    if res:
        lod = res.get("needle_lod")
        where = "at LOD0" if lod == 0 else ("evicted" if lod == -1 else f"at LOD{lod}")
        got = "recovered" if res.get("recovered") else "not recovered"
        line += f" When asked, the needle was {where}; answer NLL {res.get('answer_nll', float('nan')):.2f}, {got}."
    return line
