"""Sweep page: a knob sweep over many recordings (`python -m engine sweep`, `studio/sweep.py`), read.

Pick a sweep (URL `?sweep=<root>/<name>`; sweeps live in `_sweeps/` of the run folders, `app/sweeps.py`)
and a recording, or every recording's mean. Then: the Pareto view of two metrics (each in its better
direction, from the metric registry), with the non-dominated settings marked and listed; a click on a
point names its setting and opens it in the Knobs lab on each recording; a heatmap of any metric over
any two knobs; parallel coordinates over every knob. "Start a sweep" runs a small one in the background
on local Ray. Queries: `app/queries_sweep.py`; charts: `app/charts_sweep.py`.
"""

from __future__ import annotations

import streamlit as st

from app import charts_sweep, export, paths, state, sweeps, widgets
from app import queries_runs as qr
from app import queries_sweep as qsw
from app.widgets import link

SWEEP = "sweep"  # the URL parameter


def _follow(out) -> None:
    say = lambda detail: f"Sweep `{out.name}` running in the background (local Ray): {detail or 'starting Ray'} ..."  # noqa: E731
    widgets.wait_for_job(sweeps.sweep_state, (out,), say)


def _start_form() -> None:
    runs = qr.runs_table()
    done = runs[runs["status"] == "complete"]["ref"].tolist() if not runs.empty else []
    with st.expander("Start a sweep", expanded=not sweeps.sweep_dirs()):
        picked = st.multiselect("recordings", done, default=done[:2], key="sw_runs")
        grid = st.text_area("grid: one knob per line, section.knob=v1,v2,...", key="sw_grid",
                            value="allocator.cooldown_steps=0,2,4\nallocator.hysteresis_margin=0,0.1,0.2")  # fmt: skip
        name = st.text_input("sweep name", value="my-sweep", key="sw_name")
        if st.button("Start sweep", key="sw_go", disabled=not picked):
            try:
                out = sweeps.new_sweep_dir(name.strip())
                lines = [ln.strip() for ln in grid.splitlines() if ln.strip()]
                folders = [str(paths.resolve_run(r)) for r in picked]
                sweeps.check(folders, lines)  # a bad grid is one line here, before anything starts
            except ValueError as e:
                st.error(str(e).splitlines()[0])
                return
            sweeps.start_sweep(out, folders, lines)
            state.set_param(SWEEP, sweeps.sweep_ref(out))
            st.rerun()


st.title("Sweep")
st.caption("Every recording re-planned with every setting of a knob grid, measured (`python -m engine sweep`, "
           "on Ray). Which cooldown, margin, thresholds and gamma cut oscillation most without losing "
           "locality or NLL, on all of them?")  # fmt: skip
_start_form()
dirs = sweeps.sweep_dirs()
if not dirs:
    st.info("No sweeps yet. Start one above, or from the command line: `python -m engine sweep --runs 'runs/*' "
            "--grid allocator.cooldown_steps=0,2,4 --out runs/_sweeps/NAME`.")  # fmt: skip
    st.stop()
refs = [sweeps.sweep_ref(p) for p in dirs]
asked = state.param(SWEEP)
if asked is not None and asked not in refs:
    starting = sweeps.own_sweep(asked)
    if starting is not None and sweeps.sweep_state(starting)[0] == "running":  # started here, no folder yet
        _follow(starting)
        st.stop()
    st.error(f"No sweep {asked!r} in the run folders; pick one below.")
if asked in refs and asked != st.session_state.get("sw_url"):  # the URL moved (a link, a start): follow it
    st.session_state["sw_pick"] = asked
ref = st.selectbox("sweep", refs, index=refs.index(asked) if asked in refs else len(refs) - 1, key="sw_pick")
state.set_param(SWEEP, ref)
st.session_state["sw_url"] = ref
path = sweeps.resolve_sweep(ref)
status, detail = sweeps.sweep_state(path)
if status == "running":
    _follow(path)
elif status == "failed":
    st.warning(f"The sweep stopped: {detail}. Start it again with the same folder: finished cells are kept.")
try:
    m = sweeps.manifest(path)
    df = qsw.results(str(path), qsw.version(path))
except ValueError as e:  # an unreadable sweep.json or results part: say which, in one line
    st.error(f"Cannot read sweep {ref}: {str(e).splitlines()[0]}")
    st.stop()
n_runs = len(m.get("runs", []))
st.markdown(f"**{ref}**: {m.get('mode', '?')} re-plans, {m.get('done', 0):,} of {m.get('cells', 0):,} cells, "
            f"{n_runs} recording{'s' if n_runs != 1 else ''}, {m.get('engine', '?')} "
            f"({m.get('workers') or '?'} workers), {m.get('elapsed_s', 0):.1f} s; "
            f"status {m.get('status', '?')}.")  # fmt: skip
if df.empty:
    st.info("No finished cells yet.")
    st.stop()
knobs = qsw.knob_columns(df, m.get("grid", {}))
names = sorted(df["run_name"].unique())
run = st.selectbox("recording", [qsw.ALL_RUNS, *names], key="sw_run")
table = qsw.settings(df, knobs, run)

# ------------------------------------------------------------------------------------- Pareto
st.subheader("Pareto view")
axes = qsw.directed_metrics(df)
if len(axes) < 2:
    st.info("Fewer than two metrics with a better direction were measured: no Pareto view.")
else:
    c_x, c_y = st.columns(2)
    # Oscillation against NLL where the sweep measured NLL (exact); else against locality.
    dx, dy = ("ping_pongs_per_edit", "delta_nll_recency") if "delta_nll_recency" in axes else ("swap_rate", "locality")
    x = c_x.selectbox("x", axes, index=axes.index(dx) if dx in axes else 0, key="sw_x")
    y = c_y.selectbox("y", axes, index=axes.index(dy) if dy in axes else 1, key="sw_y")
    front = qsw.pareto(table, x, y)
    event = st.plotly_chart(charts_sweep.pareto_chart(table, x, y, front, knobs), key="sw_pareto",
                            on_select="rerun", selection_mode="points")  # fmt: skip
    points = event.selection.points if event and event.selection else []
    if points and points[0].get("customdata") is not None:
        cd = points[0]["customdata"]
        st.session_state["sw_picked"] = int(cd[0] if isinstance(cd, list) else cd)
    picked = st.session_state.get("sw_picked")
    if picked is not None and picked < len(table):
        row = table.iloc[picked]
        st.markdown(f"**Setting:** {charts_sweep.setting_label(row, knobs)}")
        params = qsw.knob_params(row, knobs)
        for name in [run] if run != qsw.ALL_RUNS else names:
            ref_run = qsw.run_ref(next(r for r in df.loc[df["run_name"] == name, "run"]))
            if ref_run is None:
                st.caption(f"{name}: not in the app's run folders")
            else:
                st.markdown(f"[Open it in the Knobs lab on {ref_run}]({link('knobs', run=ref_run, **params)})")
    shown = table.assign(non_dominated=front)[[*knobs, x, y, "non_dominated", "recordings"]]
    st.caption(f"{int(front.sum())} non-dominated of {len(table)} settings.")
    st.dataframe(shown.sort_values(["non_dominated", x], ascending=[False, True]), hide_index=True, key="sw_front")
    export.download_buttons(shown, f"{path.name}-pareto", key="sw_front_dl")

# ------------------------------------------------------------------------------------ heatmap
st.subheader("One metric over two knobs")
metrics = qsw.measured_metrics(df)
if len(knobs) < 2:
    st.info("The grid has one knob: the heatmap needs two.")
else:
    c1, c2, c3 = st.columns(3)
    kx = c1.selectbox("knob (x)", knobs, index=0, key="sw_kx")
    ky = c2.selectbox("knob (y)", [k for k in knobs if k != kx], key="sw_ky")
    metric = c3.selectbox("metric", metrics, key="sw_hm_metric")
    st.plotly_chart(charts_sweep.knob_heatmap(table, kx, ky, metric), key="sw_heatmap")
    cells = table.groupby([kx, ky], sort=False)[metric].mean().reset_index()
    export.download_buttons(cells, f"{path.name}-{metric}-by-{kx}-{ky}", key="sw_heatmap_dl")

# --------------------------------------------------------------------------- parallel coordinates
st.subheader("Every knob")
colour = st.selectbox("colour by", metrics, key="sw_pc_metric")
st.plotly_chart(charts_sweep.parallel(table, knobs, colour), key="sw_parallel")
export.download_buttons(table[[*knobs, colour]], f"{path.name}-parallel", key="sw_parallel_dl")
st.markdown("**Every cell** (each recording with each setting, as the sweep measured it)")
export.download_buttons(df, f"{path.name}-cells", key="sw_cells_dl")
