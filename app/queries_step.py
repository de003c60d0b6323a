"""Queries about one refocus step: its WC (with text previews), its decisions, its attention maps.

Cached like `app.queries` (keyed by run folder and version) and returning small DataFrames: one
step's WC is a few hundred entries. Parts are written in step order, so a per-table index of each
part's step range (from the Parquet footers' statistics, one DuckDB `parquet_metadata` query, cached)
lets a step's rows be read from the one or two parts that hold it rather than from all of them: on a
256k-token run that is 4 ms instead of 80 ms per table, which is what keeps a scrubber move quick.
Only good parts (`Run.parts`: footers checked against the schema) are ever read. Draws nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app.queries import _df, get_run, node_labels
from contract import nodes


@st.cache_data(max_entries=128, show_spinner=False)
def _step_index(path: str, ver: str, table: str) -> pd.DataFrame:
    """(file, lo, hi): each good part of `table` and the steps it holds (lo/hi null: no statistics)."""
    run = get_run(path)
    files = [str(p) for p in run.parts(table)]
    if not files:
        return pd.DataFrame({"file": [], "lo": [], "hi": []})
    q = """SELECT file_name AS file, min(TRY_CAST(stats_min_value AS BIGINT)) AS lo,
        max(TRY_CAST(stats_max_value AS BIGINT)) AS hi
        FROM parquet_metadata($p) WHERE path_in_schema = 'step' GROUP BY file_name"""
    idx = _df(run.sql(q, {"p": files}))
    # A part with no statistics (or whose step column went unindexed) is always read.
    missing = sorted(set(files) - set(idx["file"]))
    if missing:
        idx = pd.concat([idx, pd.DataFrame({"file": missing, "lo": None, "hi": None})], ignore_index=True)
    return idx


def rows_at(path: str, ver: str, table: str, step: int) -> pd.DataFrame:
    """Every row of `table` at `step`, in recorded order, read from only the parts that can hold it."""
    run = get_run(path)
    last = run.last_step()
    if last is not None and step > last:  # a stopped run's rows past its last steps row are not shown
        return _df(run.table(table).slice(0, 0))
    idx = _step_index(path, ver, table)
    lo, hi = idx["lo"].astype("float64"), idx["hi"].astype("float64")
    hit = idx.loc[lo.isna() | hi.isna() | ((lo <= step) & (hi >= step)), "file"].tolist()
    if not hit:
        return _df(run.table(table).slice(0, 0))
    q = "SELECT * FROM read_parquet($p, union_by_name=true) WHERE step = $s"
    return _df(run.sql(q, {"p": hit, "s": int(step)}))


@st.cache_data(max_entries=32, show_spinner=False)
def previews(path: str, ver: str) -> pd.Series:
    """Every node's text preview, by node id (a few MB even at 2M tokens: cheaper than a query per step)."""
    n = _df(get_run(path).table("nodes", ["node_id", "preview"]))
    return n.drop_duplicates("node_id").set_index("node_id")["preview"]


@st.cache_data(max_entries=256, show_spinner=False)
def step_row(path: str, ver: str, step: int) -> dict:
    """The steps-table row of `step` as a dict ({} if it was not recorded)."""
    r = rows_at(path, ver, "steps", step)
    if r.empty:
        return {}
    # to_dict("records") keeps each column's type (a row Series would turn every int into a float).
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.to_dict("records")[0].items()}


@st.cache_data(max_entries=256, show_spinner=False)
def step_entries(path: str, ver: str, step: int) -> pd.DataFrame:
    """The WC at `step` (every recorded round), in WC order, with each node's text preview."""
    e = rows_at(path, ver, "entries", step)
    if e.empty:
        return e.assign(node="", preview="", position=pd.Series(dtype="int64"))
    e = e.sort_values(["iteration", "start"], kind="stable").reset_index(drop=True)
    e["preview"] = e["node_id"].map(previews(path, ver)).fillna("")
    e.insert(2, "node", node_labels(e["node_id"]))
    e.insert(0, "position", e.groupby("iteration").cumcount())
    return e


@st.cache_data(max_entries=256, show_spinner=False)
def step_decisions(path: str, ver: str, step: int) -> pd.DataFrame:
    """Every decision of `step`: the applied edits first (in the order they were applied), then the
    other candidates as recorded; with a readable node (`L1 #26, tokens 832-864`), the LOD change, and
    `impossible` marking candidates no allocator could apply (expanding LOD0, collapsing into a level
    above the tree's top), which the allocator logs as illegal."""
    d = rows_at(path, ver, "decisions", step)
    if d.empty:
        return d.assign(node="", change="", impossible=False)
    d, run = d.reset_index(drop=True), get_run(path)
    block_size, max_lod = int(run.knob("tree.block_size", 32)), int(run.knob("tree.max_lod", 2))
    d.insert(2, "node", node_labels(d["node_id"], block_size))
    lod_from, lod_to = d["lod_from"].astype(int), d["lod_to"].astype(int)
    d["change"] = [f"{a}->{'out' if b < 0 else b}" for a, b in zip(lod_from, lod_to, strict=True)]
    d["impossible"] = ((d["action"] == "expand") & (lod_from == 0)) | ((d["action"] == "collapse") & (lod_to > max_lod))
    applied = d["outcome"] == "applied"
    key = pd.DataFrame(
        {"later": ~applied, "it": d["iteration"], "seq": d["seq"].where(applied, 0), "row": range(len(d))}
    )
    return d.iloc[key.sort_values(["later", "it", "seq", "row"], kind="stable").index].reset_index(drop=True)


def decision_view(d: pd.DataFrame, actions=None, outcomes=None, impossible: bool = True) -> pd.DataFrame:
    """The columns a person reads first, in that order (the rest stay in the exported file), of the
    rows whose action and outcome are among those given (None: all); `impossible=False` drops the
    structurally impossible candidates."""
    keep = pd.Series(True, index=d.index)
    if actions is not None:
        keep &= d["action"].isin(list(actions))
    if outcomes is not None:
        keep &= d["outcome"].isin(list(outcomes))
    if not impossible and "impossible" in d.columns:
        keep &= ~d["impossible"]
    cols = ["iteration", "seq", "action", "node", "change", "score", "outcome", "forced", "node_id"]
    return d.loc[keep, [c for c in cols if c in d.columns]]


@st.cache_data(max_entries=64, show_spinner=False)
def table_steps(path: str, ver: str, table: str) -> np.ndarray:
    """Steps at which an optional table (`attention`, `lens_attention`) has rows, in order."""
    run = get_run(path)
    src = run.source(table)
    if not src:
        return np.zeros(0, np.int64)
    steps = run.sql(f"SELECT DISTINCT step FROM {src[0]} ORDER BY step", src[1]).column("step")
    return steps.to_numpy().astype(np.int64)


def nearest(steps: np.ndarray, step: int) -> int | None:
    """The element of the sorted `steps` closest to `step` (the earlier one on a tie)."""
    if steps.size == 0:
        return None
    i = int(np.searchsorted(steps, step))
    cands = [int(steps[j]) for j in (i - 1, i) if 0 <= j < steps.size]
    return min(cands, key=lambda s: (abs(s - step), s))


@st.cache_data(max_entries=128, show_spinner=False)
def attention_at(path: str, ver: str, step: int) -> pd.DataFrame:
    """Base-model attention mass at `step`: one row per (layer, entry), with the entry's WC position."""
    a = rows_at(path, ver, "attention", step)
    return _with_positions(path, ver, step, a, iteration=0)


@st.cache_data(max_entries=128, show_spinner=False)
def lens_attention_at(path: str, ver: str, step: int) -> pd.DataFrame:
    """LensNet cross-attention mass at `step` (every round), with each entry's WC position."""
    a = rows_at(path, ver, "lens_attention", step)
    if a.empty:
        return _with_positions(path, ver, step, a, iteration=0)
    parts = [_with_positions(path, ver, step, g, iteration=int(it)) for it, g in a.groupby("iteration")]
    return pd.concat(parts, ignore_index=True)


def _with_positions(path: str, ver: str, step: int, a: pd.DataFrame, iteration: int) -> pd.DataFrame:
    e = step_entries(path, ver, step)
    e = e[e["iteration"] == iteration][["node_id", "position", "node", "lod", "start"]] if not e.empty else e
    if a.empty:
        return a.assign(position=pd.Series(dtype="int64"), node=pd.Series(dtype="object"))
    out = a.merge(e, on="node_id", how="left") if not e.empty else a.assign(position=np.nan, node=None)
    tail = out["node_id"] < 0  # the raw tail sits after every entry
    out.loc[tail, "node"] = "tail"
    out.loc[tail, "position"] = (e["position"].max() + 1) if not e.empty else 0
    out["position"] = out["position"].fillna(-1).astype(np.int64)
    return out.sort_values([c for c in ("iteration", "layer", "position") if c in out.columns]).reset_index(drop=True)


def attention_detail_rows(detail: pd.DataFrame, kind: str, block_size: int) -> pd.DataFrame:
    """The rows of one kind (`heads` or `lens`) of a step's attention detail (`app.attention.read_detail`),
    with each entry's WC position (entries in token order, the tail after them) and node label, in the
    columns `charts_step.attention_heatmap` reads."""
    d = detail[detail["kind"] == kind].drop(columns="kind").reset_index(drop=True)
    ids = np.unique(d["node_id"].to_numpy())
    real = ids[ids >= 0]
    lod, idx = nodes.node_lod(real), nodes.node_index(real)
    order = real[np.argsort(nodes.node_start(lod, idx, block_size), kind="stable")]
    position = pd.Series(np.arange(order.size), index=order)
    d["position"] = d["node_id"].map(position).fillna(order.size).astype(np.int64)  # the tail (-1) last
    d["node"] = node_labels(d["node_id"], block_size)
    return d


def heads_view(heads: pd.DataFrame, layer: int | None, head: int | None) -> tuple[pd.DataFrame, str]:
    """What the heads chart draws, and its row column: every layer (`layer` None) or one layer's heads,
    each head's own mass or (`head` None) their mean over heads, which is what the recorder keeps."""
    d = heads if layer is None else heads[heads["layer"] == layer]
    if head is not None:
        d = d[d["head"] == head]
    elif layer is None:
        d = d.groupby(["layer", "node_id", "position", "node"], as_index=False)["mass"].mean()
    return d.reset_index(drop=True), ("layer" if layer is None else "head")
