"""Metrics page: a run's focus metrics (DESIGN section 4) over time, and its worst-oscillating nodes.

Headline numbers come from `telemetry.run_metrics.summary`, the lines from `telemetry.run_metrics.series`
(thinned to what a screen shows), both cached in `app/queries.py`. Each worst node links to the
Timeline at its first ping-pong step (`?run=...&step=...`), so the link can also be shared. The
selected step of the URL, if any, is marked on every line; a click on a line selects its step (and
links to it on the Timeline, the Step inspector and the Text page).
"""

from __future__ import annotations

import streamlit as st

from app import charts_metrics, export, state, widgets
from app import queries as q

LINES, NAMES = q.LINES, q.LINE_NAMES  # what each chart draws, from the one metric registry
CAPTION = ("ping_pongs", "applied_edits", "nll")  # counts (and the raw NLL) go in the caption, not in tiles


def _fmt(v: object, digits: int = 3) -> str:
    return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


st.title("Metrics")
run, (path, ver) = widgets.require_run()
if q.overview(path, ver)["n_steps"] == 0:
    st.info(f"Run `{run.name}` has no recorded steps yet.")
    st.stop()
s = q.summary(path, ver)
tiles = []
for m in q.METRICS:
    if m.key in CAPTION or m.key == "residency_p95":
        continue
    if m.key == "residency_mean":  # mean and p95 share one tile
        tiles.append(("residency mean / p95", f"{_fmt(s['residency_mean'], 1)} / {_fmt(s['residency_p95'], 1)}"))
    else:
        tiles.append((m.label, _fmt(s[m.key])))
for i in range(0, len(tiles), 5):
    for col, (label, value) in zip(st.columns(5), tiles[i : i + 5], strict=False):
        col.metric(label, value)
st.caption(f"{s['applied_edits']} applied edits, {s['ping_pongs']} ping-pongs, {s['steps']} steps.")

marker = state.int_param(state.STEP, -1, -1, 10**9) if state.param(state.STEP) is not None else None
if marker is not None:  # the selected step (a click on a line selects one): open it elsewhere
    widgets.step_links(state.param(state.RUN), marker)
cols = st.columns(2)
for i, line in enumerate(LINES):
    name, ys, title, y_title = line.series, list(line.columns), line.title, line.y_title
    with cols[i % 2]:
        df = q.series(path, ver, name)
        if df.empty or df[[c for c in ys if c in df.columns]].isna().all().all():
            st.markdown(f"**{title}**")
            st.info(q.missing_message(line, df))
            continue
        fig = charts_metrics.metric_lines(
            df, ys, title=title, y_title=y_title, step=marker, names=NAMES, connect=line.connect, pickable=True
        )
        widgets.step_picking_chart(fig, key=f"m_{name}_{i}")  # a click selects that step (marked on every line)
        export.download_buttons(df, f"{run.name}-{name}", key=f"m_{name}_{i}_dl")

with cols[len(LINES) % 2]:
    st.markdown("**Residency** (steps a node keeps its LOD)")
    # Opt-in: it re-reads every entry (seconds on a 256k-token run), and the tiles already give mean and p95.
    if st.toggle("show the distribution", key="m_residency_on"):
        res = q.residency_lengths(path, ver)
        if res.empty:
            st.info("No closed residency runs yet.")
        else:
            st.plotly_chart(charts_metrics.residency_histogram(res), key="m_residency")
            export.download_buttons(res, f"{run.name}-residency", key="m_residency_dl")

st.subheader("Worst-oscillating nodes")
worst = q.worst_nodes(path, ver)
if worst.empty:
    st.info("No ping-pongs: no node returned to a LOD it had within the oscillation window.")
else:
    ref = state.param(state.RUN)
    for r in worst.itertuples():
        label = f"{r.node}: {r.ping_pongs} ping-pongs, first at step {r.first_step}, tokens [{r.start:,}, {r.end:,})"
        widgets.nav_link(label, "timeline", run=ref, step=int(r.first_step))
    export.download_buttons(worst, f"{run.name}-worst-nodes", key="m_worst_dl")
