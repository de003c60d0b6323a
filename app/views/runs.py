"""Runs page: every recording under the configured run folders, and the choice of one or two to open.

Lists each run folder with its status (recording, complete, failed, interrupted, or invalid with the
reason), size, scorer, tokens, steps, parent and changed knobs, plus headline metrics (cached
`telemetry.run_metrics.summary`). Picking a run sets `?run=`; a second one sets `?run2=` for Compare.
Listing and metrics come from `app/queries.py`; this page only lays them out.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import paths, state, widgets
from app import queries as q

NONE = "(none)"
BIG_MB = 64  # runs bigger than this get headline metrics only on request (or once computed elsewhere)
OPENABLE = ("complete", "recording", "interrupted", "failed")
STATUS_ICON = {"complete": "✅", "recording": "🔴", "interrupted": "⏸️", "failed": "❌", "invalid": "⚠️"}

st.title("Runs")
roots = paths.run_roots()
st.caption("Run folders: " + ", ".join(f"`{r}`" for r in roots))
runs = q.runs_table()
if runs.empty:
    st.info(f"No runs yet in {', '.join(f'`{r}`' for r in roots)}. {q.RECORD_HINT}")
    st.stop()

show_metrics = st.toggle("headline metrics", value=True, key="runs_metrics", help="computed once per run, then cached")
view = runs.drop(columns=["root", "path"])
view.insert(0, "state", [f"{STATUS_ICON.get(s, '')} {s}" for s in runs["status"]])
view = view.drop(columns=["status"])
if show_metrics:
    rows = []
    pending = 0
    for p, status, size in zip(runs["path"], runs["status"], runs["size_mb"], strict=True):
        s = None
        if status in OPENABLE and status != "recording":  # a live run's numbers change every second
            ver = q.version(p)
            s = q.cached_summary(p, ver)
            # A big run's summary takes seconds the first time: computed when its Metrics page opens
            # (or on request here), so that this list always opens fast.
            if s is None and (size <= BIG_MB or st.session_state.get("runs_big")):
                try:
                    s = q.summary(p, ver)
                except Exception:  # a half-written run must not break the list; its cell stays empty
                    s = None
            pending += s is None
        rows.append({m: (s or {}).get(m) for m in q.HEADLINE})
    view = pd.concat([view, pd.DataFrame(rows)], axis=1)
    if pending or st.session_state.get("runs_big"):
        st.toggle(f"also compute metrics of runs over {BIG_MB} MB (seconds each, once)", key="runs_big")
st.dataframe(
    view,
    hide_index=True,
    key="runs_table",
    column_config={
        "ref": st.column_config.TextColumn("run", help="the reference kept in the URL (?run=)"),
        "size_mb": st.column_config.NumberColumn("MB", format="%.2f"),
        "problem": st.column_config.TextColumn("problem", width="medium"),
    },
)

openable = runs[runs["status"].isin(OPENABLE)]
refs = list(openable["ref"])
if not refs:
    st.warning(f"No run here can be opened: every folder is invalid (see the problem column). {q.RECORD_HINT}")
    st.stop()
current = state.param(state.RUN)
c1, c2 = st.columns(2)
with c1:
    # No run in the URL yet: start on a finished one, the likeliest to be wanted.
    complete = [i for i, s in enumerate(openable["status"]) if s == "complete"]
    first = refs.index(current) if current in refs else (complete[0] if complete else 0)
    run_ref = st.selectbox("open run", refs, index=first, key="runs_pick")
state.set_param(state.RUN, run_ref)
others = [NONE] + [r for r in refs if r != run_ref]
current2 = state.param(state.RUN2)
with c2:
    run2 = st.selectbox(
        "compare with",
        others,
        index=others.index(current2) if current2 in others else 0,
        key="runs_pick2",
        help="a second run for the Compare page, e.g. a replay of the first",
    )
state.set_param(state.RUN2, None if run2 == NONE else run2)

info = runs[runs["ref"] == run_ref].iloc[0]
status = info["status"]
if status == "recording":
    st.info(f"`{run_ref}` is still recording: the Live page follows it.")
    widgets.nav_link("Follow it live", "live", run=run_ref)
elif status == "interrupted":
    st.warning(f"`{run_ref}` was interrupted (its recorder stopped without finishing): what it wrote is readable.")
elif status == "failed":
    st.warning(f"`{run_ref}` failed: {info['problem'] or 'no reason recorded'}. What it wrote is readable.")
if info["parent"]:
    st.caption(f"Parent: `{info['parent']}`; changed knobs: {info['changed_knobs'] or 'none'}")

step = state.param(state.STEP)
targets = [
    ("Timeline", "timeline", {"run": run_ref, "step": step}),
    ("Step inspector", "step", {"run": run_ref, "step": step}),
    ("Metrics", "metrics", {"run": run_ref}),
]
if run2 != NONE:
    targets.append((f"Compare with {run2}", "compare", {"run": run_ref, "run2": run2, "step": step}))
for col, (label, page, params) in zip(st.columns(len(targets)), targets, strict=True):
    with col:
        widgets.nav_link(label, page, **params)
