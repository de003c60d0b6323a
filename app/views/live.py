"""Live page: follows a run that is still recording, refreshing every few seconds.

A timer fragment re-reads the run (new part files and a new manifest heartbeat give it a new cache
version) and redraws steps and tokens so far, the timeline of the latest steps and the utilization
and swap rate so far. A run that is not recording (finished, interrupted, failed) gets a one-line
message and a link to its Timeline instead; with no `?run=` the page offers the runs recording now.
A run whose recorder was just started from the Record page has no folder until the model has loaded:
the page waits for it (polling), and says so, or shows the recorder's error if it fails first. A click
on any chart selects that step and links to it on the Timeline, the Step inspector and the Text page.
Queries: `app/queries.py`; charts: `app/charts.py`, `app/charts_metrics.py`.
"""

from __future__ import annotations

import streamlit as st

from app import charts, charts_metrics, export, recorder, state, widgets
from app import queries as q
from app import queries_runs as qr
from app import queries_step as qs

REFRESH_S = 2.0
WINDOW_STEPS = 200  # the live timeline shows the newest steps only: the old ones do not change

st.title("Live")
if state.param(state.RUN) is None:
    runs = qr.runs_table()
    live = list(runs.loc[runs["status"] == "recording", "ref"]) if not runs.empty else []
    if not live:
        st.info(f"No run is recording now. {q.RECORD_HINT}")
        st.stop()
    pick = st.selectbox("recording now", live, key="live_pick")
    state.set_param(state.RUN, pick)


@st.fragment(run_every=REFRESH_S)
def wait_for_start(ref: str) -> None:
    """Until the recorder started from the Record page has created its run folder."""
    job = recorder.job_for(ref)
    if job is None or job["state"] != "starting":
        st.rerun()  # the folder is there (or the recorder stopped): the whole page shows it
    st.info(f"Waiting for `{ref}` to start: the recorder is loading its model. {job['last_line']}".strip())


asked = state.param(state.RUN) or ""
job = recorder.job_for(asked)
if job is not None and job["state"] == "starting":
    wait_for_start(asked)
    st.stop()
if job is not None and job["state"] == "failed" and job["error"]:
    st.error(f"The recording `{job['ref']}` failed before it wrote anything: {job['error']}")
    st.stop()
run, _ = widgets.require_run()
ref = state.param(state.RUN)
status = run.status
if status != "recording":
    if status == "complete":
        st.success(f"`{ref}` has finished recording ({run.manifest.get('steps', 0)} steps).")
    elif status == "interrupted":
        st.warning(f"`{ref}` was interrupted: its recorder stopped without finishing. What it wrote is readable.")
    else:
        st.error(f"`{ref}` failed: {run.manifest.get('error') or 'no reason recorded'}. What it wrote is readable.")
    widgets.nav_link("Open its timeline", "timeline", run=ref)
    st.stop()


@st.fragment(run_every=REFRESH_S)
def follow() -> None:
    path, ver = q.key(run)
    if run.status != "recording":
        st.rerun()  # finished or died between two ticks: the whole page switches to its message
    ov = q.overview(path, ver)
    last = qs.step_row(path, ver, ov["s1"]) if ov["s1"] >= 0 else {}
    c = st.columns(4)
    c[0].metric("steps so far", ov["n_steps"])
    c[1].metric("tokens so far", f"{last.get('tokens_seen', ov['t1']):,}")
    c[2].metric("WC cost", f"{last.get('wc_cost', '-')} / {last.get('w_max', '-')}")
    c[3].metric("heartbeat", str(run.manifest.get("heartbeat_at", "-"))[11:19])
    if ov["s1"] < ov["s0"]:
        st.info("No WC recorded yet: the first part files appear after the recorder's first flush.")
        return
    s0 = max(ov["s0"], ov["s1"] - WINDOW_STEPS + 1)
    # A click on any chart selects its step (kept while the run goes on) and offers it on the other pages.
    marker = state.int_param(state.STEP, -1, -1, 10**9) if state.param(state.STEP) is not None else None
    if marker is not None and marker >= 0:
        widgets.step_links(ref, marker)
    w, h = q.grid_size(1000, WINDOW_STEPS, ov["s1"] - s0 + 1, ov["t1"] - ov["t0"])
    cells = q.heatmap(path, ver, "lod", w, h, (s0, ov["s1"]), (ov["t0"], ov["t1"]))
    mark = marker if marker is not None and s0 <= marker <= ov["s1"] else None
    fig = charts.lod_heatmap(cells, max_lod=ov["max_lod"], title=f"Steps {s0} to {ov['s1']}", step=mark, height=420,
                             pickable=True)  # fmt: skip
    widgets.step_picking_chart(fig, key="live_tl", axis="y", n_steps=ov["s1"] + 1, scope="fragment")
    export.download_buttons(cells, f"{run.name}-lod-timeline-live", key="live_tl_dl")
    cols = st.columns(2)
    for col, (name, y) in zip(cols, (("utilization", "utilization"), ("swap_rate", "swap_rate")), strict=True):
        with col:
            df = q.series(path, ver, name)
            fig = charts_metrics.metric_lines(df, [y], title=name.replace("_", " "), step=marker, pickable=True)
            widgets.step_picking_chart(fig, key=f"live_{name}", n_steps=ov["s1"] + 1, scope="fragment")
            export.download_buttons(df, f"{run.name}-{name}-live", key=f"live_{name}_dl")


follow()
