"""Compare page: two runs (URL `run` and `run2`, e.g. a recording and its replay) side by side.

One shared step scrubber drives both LOD timelines (each binned to half the page's cell budget)
and both lists of applied edits at that step; below, the headline metrics of both with their
deltas (`run2 - run`) and one metric over time for both. Queries: `app/queries.py`; charts:
`app/charts.py`, `app/charts_metrics.py`.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts, charts_metrics, export, state, widgets
from app import queries as q
from app import queries_step as qs

st.title("Compare")
run_a, (path_a, ver_a) = widgets.require_run(state.RUN, what="a first run")
run_b, (path_b, ver_b) = widgets.require_run(state.RUN2, what="a second run to compare with")
ov_a, ov_b = q.overview(path_a, ver_a), q.overview(path_b, ver_b)
ref_a, ref_b = state.param(state.RUN), state.param(state.RUN2)
if ref_a == ref_b:
    st.info("Both sides are the same run: pick another as `run2` on the **Runs** page.")
n = max(ov_a["n_steps"], ov_b["n_steps"])
if n == 0:
    st.info("Neither run has recorded steps yet.")
    st.stop()
step = widgets.step_scrubber(n)

budget = q.MAX_CELLS // 2  # two heatmaps on one page share the page's budget
sides = ((run_a, path_a, ver_a, ov_a, ref_a, "a"), (run_b, path_b, ver_b, ov_b, ref_b, "b"))
for col, (run, path, ver, ov, ref, tag) in zip(st.columns(2), sides, strict=True):
    with col:
        st.markdown(f"**{ref}** · {run.status} · scorer `{ov['scorer']}`")
        if ov["s1"] < ov["s0"]:
            st.info("No WC recorded in this run.")
            continue
        w, h = q.grid_size(700, 250, ov["s1"] - ov["s0"] + 1, ov["t1"] - ov["t0"], budget)
        cells = q.heatmap(path, ver, "lod", w, h)
        mark = step if step <= ov["s1"] else None
        fig = charts.lod_heatmap(cells, max_lod=ov["max_lod"], step=mark, height=460, pickable=True)
        widgets.step_picking_chart(fig, key=f"cmp_tl_{tag}", axis="y", n_steps=n)  # a click selects that step
        export.download_buttons(cells, f"{run.name}-lod-timeline", key=f"cmp_tl_{tag}_dl")
        dec = qs.step_decisions(path, ver, step) if step <= ov["s1"] else pd.DataFrame()
        applied = dec[dec["outcome"] == "applied"] if not dec.empty else dec
        st.caption(f"Step {step}: {len(applied)} applied of {len(dec)} candidates")
        if not applied.empty:
            st.dataframe(qs.decision_view(applied), hide_index=True, key=f"cmp_dec_{tag}")

st.subheader("Headline metrics")
names = (ref_a, ref_b if ref_b != ref_a else f"{ref_b} (2)")
table = q.compare_table(q.summary(path_a, ver_a), q.summary(path_b, ver_b), names)
st.dataframe(table, hide_index=True, key="cmp_metrics")
export.download_buttons(table, f"compare-{run_a.name}-{run_b.name}", key="cmp_metrics_dl")

lines = {line.title: line for line in q.LINES}
metric = st.selectbox("over time", list(lines), index=list(lines).index("Utilization"), key="cmp_m")
line = lines[metric]
both = q.overlay_series([(names[0], path_a), (names[1], path_b)], line)
fig = charts_metrics.metric_lines(both, list(names), y_title=line.columns[0], step=step, connect=line.connect,
                                  pickable=True)  # fmt: skip
widgets.step_picking_chart(fig, key="cmp_series", n_steps=n)
export.download_buttons(both, f"compare-{metric}-{run_a.name}-{run_b.name}", key="cmp_series_dl")
