"""Timeline page: the LOD heatmap of a run (x = token position, y = refocus step, colour = LOD).

A shared step scrubber (URL `step`) with play/pause, at a chosen speed in steps per second, or a click
on the heatmap (any cell: its row's step) selects a step: it is marked on the heatmap, its WC is drawn
as a strip, and its decisions are listed with their outcomes. The heatmap is binned by the reader in
DuckDB to at most `queries.MAX_CELLS` cells; an optional score overlay shares that budget. Playing
redraws only the part of the page that follows the step (one fragment, which the browser asks for
again once it has drawn the last), on a quarter of the cells, with the scrubber disabled until Pause.
Queries live in `app/queries.py`, figures in `app/charts.py`; this page only wires them.
"""

from __future__ import annotations

import time

import streamlit as st

from app import charts, export, state, widgets
from app import queries as q
from app import queries_step as qs

SPEEDS = (1, 2, 5, 10, 25, 50, 100)  # playback speeds, steps per second
PLAY_CELLS_DIVISOR = 4
TICK_S = 0.5  # at most two moves a second while playing (each redraws the page): faster speeds jump steps
RESOLUTIONS = {"standard (1000 x 250)": (1000, 250), "wide (2000 x 125)": (2000, 125), "tall (500 x 500)": (500, 500)}
OVERLAYS = {"none": None, "final score": "score", "raw score": "raw_score"}
AGGS = {"mean LOD": "mean", "finest present": "min", "coarsest present": "max"}

st.title("Timeline")
run, (path, ver) = widgets.require_run()
ov = q.overview(path, ver)
if ov["n_steps"] == 0 or ov["s1"] < ov["s0"]:
    live = " It is still recording: the **Live** page follows it." if run.status == "recording" else ""
    st.info(f"Run `{run.name}` has no working context recorded yet.{live}")
    st.stop()

n_steps = int(q.step_list(path, ver).max()) + 1


def _toggle_play() -> None:
    playing = not st.session_state.get("tl_playing", False)
    st.session_state["tl_playing"] = playing
    cur = state.int_param(state.STEP, n_steps - 1, 0, n_steps - 1)
    if playing and cur >= n_steps - 1:
        cur = 0  # Play at the last step (where the page opens) starts from the first
        state.set_param(state.STEP, cur)
    st.session_state["tl_play_from"] = (cur, time.monotonic(), st.session_state.get("tl_speed", 10))


playing = bool(st.session_state.get("tl_playing", False))
c_play, c_speed, c_res, c_agg, c_over = st.columns([1, 1, 2, 2, 2], vertical_alignment="bottom")
with c_play:
    icon = ":material/pause:" if playing else ":material/play_arrow:"
    st.button("Pause" if playing else "Play", on_click=_toggle_play, key="tl_play_btn", icon=icon)
with c_speed:
    speed = st.selectbox("steps / s", SPEEDS, index=SPEEDS.index(10), key="tl_speed")
with c_res:
    res = st.selectbox("resolution", list(RESOLUTIONS), key="tl_res")
with c_agg:
    agg = st.selectbox("cell colour", list(AGGS), key="tl_agg")
with c_over:
    overlay_name = st.selectbox("score overlay", list(OVERLAYS), key="tl_overlay")
overlay_col = OVERLAYS[overlay_name]

s_rng = t_rng = None
# Keyed by run and extent: another run, or a live run that grew, starts unzoomed rather than
# keeping a range that may not fit it.
zoom_key = f"{path}:{ov['s1']}:{ov['t1']}"
with st.expander("Zoom"):
    if ov["s1"] > ov["s0"]:
        s_rng = st.slider("steps", ov["s0"], ov["s1"], (ov["s0"], ov["s1"]), key=f"tl_steps:{zoom_key}")
    if ov["t1"] > ov["t0"]:
        t_rng = st.slider("tokens", ov["t0"], ov["t1"], (ov["t0"], ov["t1"]), key=f"tl_tokens:{zoom_key}")
s_rng = s_rng if s_rng and s_rng[1] >= s_rng[0] else (ov["s0"], ov["s1"])
t_rng = t_rng if t_rng and t_rng[1] > t_rng[0] else (ov["t0"], ov["t1"])

width, height = RESOLUTIONS[res]
budget = q.MAX_CELLS // (2 if overlay_col else 1)  # the overlay shares the page's cell budget
if playing:  # each move redraws the heatmap: a quarter of the cells keeps the browser up with the player
    budget //= PLAY_CELLS_DIVISOR
w, h = q.grid_size(width, height, s_rng[1] - s_rng[0] + 1, t_rng[1] - t_rng[0], budget)
cells = q.heatmap(path, ver, "lod", w, h, tuple(s_rng), tuple(t_rng), AGGS[agg])
over = q.heatmap(path, ver, overlay_col, w, h, tuple(s_rng), tuple(t_rng), "mean") if overlay_col else None
marks = q.scenario_marks(run.manifest)


def _play_step() -> int:
    """While playing: the step the clock says is due (the step playing started from, plus speed x time
    since: a player that keeps to the clock, like a video dropping frames), put in the URL. The player
    owns the step until paused (the scrubber is disabled meanwhile): the step a fragment run arrives
    with may be the browser's URL from before the previous move, which would send play back."""
    now = time.monotonic()
    start, t0, was = st.session_state.get("tl_play_from", (None, now, speed))
    if start is None or was != speed:  # first tick, or a new speed: go on from the step reached
        start = state.int_param(state.STEP, n_steps - 1, 0, n_steps - 1) if start is None else \
            min(start + int((now - t0) * was), n_steps - 1)  # fmt: skip
        st.session_state["tl_play_from"] = (start, now, speed)
        t0 = now
    target = min(start + int((now - t0) * speed), n_steps - 1)
    state.set_param(state.STEP, target)
    return target


@st.fragment(run_every=max(TICK_S, 1.0 / speed) if playing else None)
def _view() -> None:
    # Everything that follows the step, as one fragment: while playing, the browser asks for its next
    # run only once the last one has been drawn, so a slow redraw slows the player instead of piling
    # up (full-page reruns driven from a timer got ahead of the browser until it stopped following).
    at_end = False
    if st.session_state.get("tl_playing"):
        at_end = _play_step() >= n_steps - 1
    live = bool(st.session_state.get("tl_playing"))
    step = widgets.step_scrubber(n_steps, disabled=live)
    fig = charts.lod_heatmap(cells, max_lod=ov["max_lod"], step=step, overlay=over, overlay_name=overlay_name,
                             marks=marks, pickable=not live)  # fmt: skip
    widgets.step_picking_chart(fig, key="tl_heatmap", axis="y", n_steps=n_steps, scope="fragment",
                               config={"displaylogo": False})  # fmt: skip
    ext = cells.attrs["extent"]
    st.caption(
        f"{ext['w']} x {ext['h']} cells: {(ext['t1'] - ext['t0']) / max(ext['w'], 1):.0f} tokens x "
        f"{(ext['s1'] - ext['s0'] + 1) / max(ext['h'], 1):.1f} steps per cell."
        + ("" if live else " Click a row to select its step.")
    )
    export.download_buttons(cells, f"{run.name}-lod-timeline", key="tl_cells")
    if marks:
        st.caption(q.scenario_caption(run.manifest))
    st.subheader(f"Step {step}")
    row = qs.step_row(path, ver, step)
    if row:
        nll = "-" if row.get("nll") is None else f"{row['nll']:.3f}"
        st.caption(
            f"{row['tokens_seen']:,} tokens read, {row['n_entries']} entries, cost {row['wc_cost']} / "
            f"{row['w_max']}, {row.get('n_applied', 0)} edits applied ({row.get('n_forced', 0)} forced), "
            f"next-block NLL {nll}"
        )
    ents = qs.step_entries(path, ver, step)
    if len(ents):
        first = ents[ents["iteration"] == 0]
        st.plotly_chart(charts.lod_strip(first, max_lod=ov["max_lod"]), key="tl_strip", config={"displaylogo": False})
    else:
        st.caption("No WC recorded at this step (entries are recorded every `session.entries_every` steps).")
    st.markdown("**Decisions**")
    widgets.decision_table(qs.step_decisions(path, ver, step), key="tl_dec",
                           export_name=f"{run.name}-decisions-step{step}")  # fmt: skip
    if at_end:
        st.session_state["tl_playing"] = False  # the end: stop there; Play starts again from step 0
        st.rerun()  # the whole page: the button reads Play again, and the timer stops


_view()
