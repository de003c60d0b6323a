"""The document at one refocus step, for the text view: each WC entry with the text of its span, its
LOD and score, the step's applied edit on it, and whether it overlaps a scenario's needle.

The text comes from the run's `text` table (every block's whole text; runs recorded before it was
written get it from `python -m engine add-text`). A gist's text is the text of the blocks it covers:
what the model sees of it is one vector, the text is what that vector stands for. Cached like
`app.queries`; draws nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import queries as q
from app import queries_step as qs
from contract import nodes

TEXT_COLUMNS = ["position", "node", "lod", "start", "end", "score", "edit", "needle", "text", "node_id"]


@st.cache_data(max_entries=16, show_spinner=False)
def blocks(path: str, ver: str) -> pd.DataFrame:
    """Every recorded block's text (start, end, text), in token order; empty if the run has no `text` table."""
    run = q.get_run(path)
    if "text" not in run.tables():
        return pd.DataFrame({"start": pd.Series(dtype="int64"), "end": pd.Series(dtype="int64"), "text": []})
    t = q._df(run.table("text", ["start", "end", "text"]))
    return t.drop_duplicates("start").sort_values("start", kind="stable").reset_index(drop=True)


def _span_texts(b: pd.DataFrame, start: np.ndarray, end: np.ndarray) -> list[str]:
    """The text of each token span [start, end): the blocks that start inside it, joined."""
    starts = b["start"].to_numpy()
    lo, hi = np.searchsorted(starts, start), np.searchsorted(starts, end)
    texts = b["text"].tolist()
    return ["".join(texts[i:j]) for i, j in zip(lo.tolist(), hi.tolist(), strict=True)]


def _edits(dec: pd.DataFrame, lod: np.ndarray, start: np.ndarray, end: np.ndarray, block_size: int) -> list[str]:
    """Per entry, the applied edit it took part in ("expand", "collapse", "evict") or "". A decision
    names its coarse node: an expanded gist is that node, collapsed entries are its children."""
    out = np.full(lod.shape[0], "", dtype=object)
    if dec.empty:
        return out.tolist()
    applied = dec[dec["outcome"] == "applied"]
    ids = applied["node_id"].to_numpy()
    c_lod, c_idx = nodes.node_lod(ids), nodes.node_index(ids)
    c_start = nodes.node_start(c_lod, c_idx, block_size)
    c_end = c_start + nodes.span_tokens(c_lod, block_size)
    for action, lod_from, s, e in zip(applied["action"], applied["lod_from"].astype(int), c_start, c_end, strict=True):
        hit = (lod == lod_from) & (start >= s) & (end <= e) & (out == "")
        out[hit] = action
    return out.tolist()


@st.cache_data(max_entries=64, show_spinner=False)
def step_text(path: str, ver: str, step: int) -> pd.DataFrame:
    """The WC the step's first scorer round saw, in token order (`TEXT_COLUMNS`), each entry with its
    text; empty if the step recorded no WC. `attrs`: `evicted_upto` (tokens before the first entry),
    `tail` (tokens read after the last entry) and `has_text` (False: the run has no text table)."""
    e = qs.step_entries(path, ver, step)
    b = blocks(path, ver)
    if e.empty:
        out = pd.DataFrame({c: [] for c in TEXT_COLUMNS})
        out.attrs.update(evicted_upto=0, tail=0, has_text=not b.empty)
        return out
    e = e[e["iteration"] == e["iteration"].min()].reset_index(drop=True)
    run = q.get_run(path)
    bs = int(run.knob("tree.block_size", 32))
    start, end, lod = e["start"].to_numpy(), e["end"].to_numpy(), e["lod"].to_numpy().astype(int)
    e["edit"] = _edits(qs.step_decisions(path, ver, step), lod, start, end, bs)
    marks = q.scenario_marks(run.manifest)
    e["needle"] = False
    for s, t, _ in marks:
        e["needle"] |= (e["start"] < t) & (e["end"] > s)
    e["text"] = _span_texts(b, start, end)
    out = e[TEXT_COLUMNS].copy()
    row = qs.step_row(path, ver, step)
    seen = int(row.get("tokens_seen", end.max())) if row else int(end.max())
    out.attrs.update(evicted_upto=int(start.min()), tail=max(0, seen - int(end.max())), has_text=not b.empty)
    return out
