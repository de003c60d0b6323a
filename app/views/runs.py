"""Runs page: every recording under the configured run folders, and the choice of one or two to open.

Lists each run folder with its status (recording, complete, failed, interrupted, or invalid with the
reason), metrics the user picks (headline ones by default; cached `telemetry.run_metrics.summary`),
scorer, tokens, steps, creation time, duration, size, parent, changed knobs and any knob's value;
filtered by text and status, sorted by any column. Picking a run sets `?run=`; a second one sets
`?run2=` for Compare. Any number of runs can be overlaid on one per-step metric.
Listing and metrics come from `app/queries.py`; this page only lays them out.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts_metrics, export, paths, state, widgets
from app import queries as q
from app import queries_runs as qr

NONE = "(none)"
BIG_MB = 64  # runs bigger than this get headline metrics only on request (or once computed elsewhere)
OPENABLE = ("complete", "recording", "interrupted", "failed")

st.title("Runs")
roots = paths.run_roots()
st.caption("Run folders: " + ", ".join(f"`{r}`" for r in roots))
runs = qr.runs_table()
if runs.empty:
    st.info(f"No runs yet in {', '.join(f'`{r}`' for r in roots)}. {q.RECORD_HINT}")
    st.stop()

show_metrics = st.toggle("headline metrics", value=True, key="runs_metrics", help="computed once per run, then cached")
c_text, c_status = st.columns([3, 2])
needle = c_text.text_input("filter", key="runs_filter", placeholder="part of a run name, scorer, parent or knob")
statuses = sorted(runs["status"].unique())
picked_status = c_status.multiselect("status", statuses, default=statuses, key="runs_status")
c_metric, c_knob = st.columns(2)
metric_cols = c_metric.multiselect("metric columns", [m.key for m in q.METRICS], default=list(q.HEADLINE),
                                   key="runs_metric_cols", disabled=not show_metrics)  # fmt: skip
knob_names = sorted({k for knobs in runs["knobs"] for k in knobs})
knob_cols = c_knob.multiselect("knob columns", knob_names, key="runs_knob_cols", help="each run's value of these knobs")

# The run and its status first, the metrics next (they are what a list of runs is compared by), then the
# facts; sortable by any column (click its header).
view = pd.DataFrame({"run": runs["ref"], "status": runs["status"]})
if show_metrics and metric_cols:
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
        rows.append({m: (s or {}).get(m) for m in metric_cols})
    view = pd.concat([view, pd.DataFrame(rows)], axis=1)
    if pending or st.session_state.get("runs_big"):
        st.toggle(f"also compute metrics of runs over {BIG_MB} MB (seconds each, once)", key="runs_big")
facts = runs[["scorer", "tokens", "steps", "created_at", "duration_s", "size_mb", "parent", "changed_knobs"]]
view = pd.concat(
    [view, facts.assign(created_at=pd.to_datetime(facts["created_at"], errors="coerce", utc=True))], axis=1
)
for k in knob_cols:
    view[k] = [knobs.get(k) for knobs in runs["knobs"]]
view["problem"] = runs["problem"]
keep = runs["status"].isin(picked_status)
if needle.strip():
    hay = (runs["ref"] + " " + runs["scorer"] + " " + runs["parent"] + " " + runs["changed_knobs"]).str.lower()
    keep &= hay.str.contains(needle.strip().lower(), regex=False)
st.caption(f"{int(keep.sum())} of {len(runs)} runs shown.")
st.dataframe(
    view[keep.to_numpy()],
    hide_index=True,
    key="runs_table",
    column_config={
        "run": st.column_config.TextColumn("run", help="the reference kept in the URL (?run=)"),
        "created_at": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
        "duration_s": st.column_config.NumberColumn("duration (s)", format="%.0f", help="creation to last write"),
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
    ("Text", "text", {"run": run_ref, "step": step}),
    ("Metrics", "metrics", {"run": run_ref}),
]
if run2 != NONE:
    targets.append((f"Compare with {run2}", "compare", {"run": run_ref, "run2": run2, "step": step}))
for col, (label, page, params) in zip(st.columns(len(targets)), targets, strict=True):
    with col:
        widgets.nav_link(label, page, **params)

# ----------------------------------------------------------------------------------- overlay
st.subheader("Overlay runs")
lines = {line.title: line for line in q.LINES}
c_runs, c_line = st.columns([3, 1])
overlay = c_runs.multiselect("runs", refs, default=[r for r in (run_ref, None if run2 == NONE else run2) if r],
                             key="runs_overlay", help="any number of runs: one line each")  # fmt: skip
line = lines[c_line.selectbox("per-step metric", list(lines), index=list(lines).index("Swap rate"), key="runs_line")]
if overlay:
    paths_by_ref = dict(zip(runs["ref"], runs["path"], strict=True))
    both = q.overlay_series([(r, paths_by_ref[r]) for r in overlay], line)
    fig = charts_metrics.metric_lines(both, overlay, title=line.title, y_title=line.y_title, connect=line.connect)
    st.plotly_chart(fig, key="runs_overlay_chart")
    export.download_buttons(both, f"overlay-{line.series}", key="runs_overlay_dl")
