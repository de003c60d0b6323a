"""Knobs lab page: move allocator knobs, re-plan the recorded session in memory, compare with the recording.

The run comes from the URL (`?run=`), the knobs too (`k.section.field=value`, see `app.state`), so a
lab view can be shared. Re-planning and metrics are `app.lab.replan` (fast mode: recorded scores);
this page only draws widgets, tables and charts, and saves a replay run on request. Beside the fast
re-plan, an exact one (`app.exact`: scorer and base model re-run in the background, into a run
folder) measures what the fast one cannot, the knobs' effect on NLL.
"""

from __future__ import annotations

import streamlit as st

from app import charts_metrics, exact, export, jobs, lab, paths, state, widgets
from app import queries as q
from app.charts import lod_heatmap
from app.lab import KnobWidget, knob_widget
from app.queries import grid_size
from app.widgets import link

CHART_W, CHART_H = 600, 400  # bins per LOD timeline, each side (grid_size keeps it under the cell budget)
PER_STEP = ("swap_rate", "ping_pongs", "locality", "utilization", "coherence")


# Cached by (path, version): a live recording gains parts and rewrites its manifest, which makes a new version.
@st.cache_resource(max_entries=4, show_spinner="Loading the recording...")
def _recording(path: str, ver: str):
    return lab.load(path)


@st.cache_resource(max_entries=4, show_spinner="Measuring the recording...")
def _recorded(path: str, ver: str):
    res = lab.recorded_side(q.get_run(path))
    return res, _extent(res)


def _extent(res: lab.LabResult) -> tuple[int, int]:
    return int(res.per_step["step"].max()) if len(res.per_step) else 0, int(res.per_step["tokens_seen"].max() or 0)


def _grid(rec) -> tuple[int, int]:
    n = int(rec.tokens_seen.shape[0])
    return grid_size(CHART_W, CHART_H, max(n, 1), int(rec.tokens_seen[-1]) if n else 1)


@st.cache_resource(max_entries=16, show_spinner="Re-planning...")
def _replanned(path: str, ver: str, sets: tuple[str, ...]):
    rec = _recording(path, ver)
    return lab.replan(rec, list(sets), grid=_grid(rec))  # the re-planned timeline is binned as it is measured


@st.cache_resource(max_entries=32, show_spinner=False)
def _cells(path: str, ver: str, sets: tuple[str, ...] | None, last_step: int, tokens: int):
    if sets is not None:  # binned while re-planning (studio.fast_replay), as the reader bins the recorded side
        return _replanned(path, ver, sets).cells
    w, h = grid_size(CHART_W, CHART_H, last_step + 1, tokens)
    return q.heatmap(path, ver, "lod", w, h, (0, last_step), (0, tokens), agg="min")


def _initial(kind: str, text: str | None, default: object) -> object:
    """Widget value from a URL knob string; None if it does not parse as the widget's type."""
    if text is None:
        return default
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        return text
    except ValueError:
        return None


def _within(w: KnobWidget, value: object) -> bool:
    """A number input refuses a value outside its bounds; a URL value there falls back like a bad one."""
    if w.kind == "pair":
        return True
    return (w.lo is None or value >= w.lo) and (w.hi is None or value <= w.hi)


def _knob_widgets(ref: str, cfg) -> tuple[dict, list[str]]:
    """Draw one input per lab knob (label = the knob's one name). Returns (values, URL-only overrides)."""
    if st.session_state.get("lab:run") != ref:  # another run: its own knobs, not the last run's
        for k in [k for k in st.session_state if str(k).startswith("lab:")]:
            del st.session_state[k]
        st.session_state["lab:run"] = ref
    url = dict(s.split("=", 1) for s in state.knob_overrides())
    recorded = lab.knob_values(cfg)
    values, cols = {}, st.columns(4)
    for i, name in enumerate(lab.LAB_KNOBS):
        w, key = knob_widget(name), f"lab:{name}"
        # The widget's type is the knob's (a float knob written as 0 in a manifest still gets a float input).
        default = {"pair": lab.format_value, "int": int, "float": float}[w.kind](recorded[name])
        if key not in st.session_state:
            init = _initial(w.kind, url.get(name), default)
            if init is None or not _within(w, init):
                st.error(f"URL knob {name}={url[name]!r} is not a valid {w.kind} within range; using the recorded one")
                init = default
            st.session_state[key] = init
        helptext = f"{w.help}. Recorded: {recorded[name]}"
        with cols[i % 4]:
            if w.kind == "pair":
                values[name] = st.text_input(name, key=key, help=helptext)
            else:
                step, fmt = (1, None) if w.kind == "int" else (0.05, "%.3f")
                values[name] = st.number_input(name, key=key, min_value=w.lo, max_value=w.hi, step=step, format=fmt,
                                               help=helptext)  # fmt: skip
    others = [f"{k}={v}" for k, v in url.items() if k not in values]  # knobs the page has no widget for
    return values, others


def _reset() -> None:
    for k in [k for k in st.session_state if str(k).startswith("lab:") and k != "lab:run"]:
        del st.session_state[k]
    state.set_knob_overrides({})


def _save(run, sets: list[str], changed: dict) -> None:
    base = lab.replay_name(run.name, changed) if changed else f"{run.name}-replay"
    try:
        out, k = paths.new_run_dir(base), 2
        while out.exists():
            out, k = paths.new_run_dir(f"{base}-{k}"), k + 1
        with st.spinner(f"Writing {paths.run_ref(out)}..."):
            info = lab.save_replay(run.path, out, sets)
    except (ValueError, OSError, q.RunReadError) as e:
        st.error(f"Could not save the replay run: {str(e).splitlines()[0]}")
        return
    ref = paths.run_ref(out)
    st.success(f"Saved replay run {ref} ({info['steps']} steps, {info['wall_s']} s); it is listed on the Runs page.")
    st.markdown(f"[Open it on the Runs page]({link('runs', run=ref)}) or [in the Knobs lab]({link('knobs', run=ref)})")


def _wait_for_exact(path: str, sets: tuple[str, ...], total: int) -> None:
    def say(done: int | None) -> tuple[str, float]:
        what = "loading the model" if done is None else f"{done:,} of {total:,} steps"
        return f"Exact re-plan in the background: {what}", (done or 0) / max(total, 1)

    widgets.wait_for_job(exact.exact_state, (path, list(sets)), say)


def _exact_section(run, ref: str, path: str, ver: str, overrides: tuple[str, ...], total: int) -> None:
    """Start, follow and show the exact re-plan of this run with the page's knobs."""
    st.subheader("Exact re-plan: the knobs' effect on NLL")
    st.caption("Re-runs the scorer and the base model over the run's text with these knobs, in the background "
               "(`python -m engine replay --exact`), into a new run folder listed on the Runs page. The fast "
               "re-plan above reuses the recorded scores and runs no model, so it cannot say what the knobs do "
               "to NLL; this can.")  # fmt: skip
    why_not = jobs.cannot_rerun(run.manifest)
    if why_not:
        st.info(f"Run `{run.name}` cannot be re-planned exactly: {why_not}.")
        return
    recorded_baselines = bool(run.knob("session.baselines", False))
    baselines = st.checkbox("with the NLL baselines (slower: full-context and recency forwards on every NLL step)",
                            value=False, key="lab_exact_baselines", disabled=not recorded_baselines,
                            help="The recorded run's baselines serve the comparison unless w_max changes.")  # fmt: skip
    sets = tuple(exact.exact_sets(list(overrides), baselines and recorded_baselines))
    status, detail = exact.exact_state(path, list(sets))
    if status != "done":
        label = "Re-planning ..." if status == "running" else "Start exact re-plan"
        st.button(label, key="lab_exact_go", disabled=status == "running", on_click=exact.start_exact,
                  args=(path, list(sets)))  # fmt: skip
    if status == "running":
        out = paths.run_ref(exact.exact_dir(path, list(sets)))
        st.markdown(f"[Follow it on the Live page]({link('live', run=out)})")
        _wait_for_exact(path, sets, total)
        return
    if status == "failed":
        st.warning(f"The exact re-plan failed: {detail}")
    if status != "done":
        return
    out_ref = paths.run_ref(detail)
    out_path, out_ver = q.key(q.get_run(detail))
    names = ("recorded", "exact re-plan")
    table = q.compare_table(q.summary(path, ver), q.summary(out_path, out_ver), names)
    # As the fast table reads: the metric's label first, and the NLL rows (what only this side has) on top.
    nll_first = table["metric"].map(lambda k: not getattr(q.METRIC.get(k), "nll", False))
    table = table.assign(_order=nll_first).sort_values("_order", kind="stable").drop(columns=["_order", "metric"])
    table = table.rename(columns={"label": "metric"})[["metric", *names, "delta", "better"]]
    st.markdown(f"Exact re-plan: run **{out_ref}** ({', '.join(sets) or 'the recorded knobs'}). "
                f"[Compare side by side]({link('compare', run=ref, run2=out_ref)}) · "
                f"[its Timeline]({link('timeline', run=out_ref)})")  # fmt: skip
    st.dataframe(table, hide_index=True, key="lab_exact_metrics")
    export.download_buttons(table, f"{run.name}-lab-exact-metrics", key="lab_exact_metrics_dl")
    nll = q.overlay_series([(names[0], path), (names[1], out_path)], q.LINES[0])
    if not any(n in nll.columns and nll[n].notna().any() for n in names):
        st.info("Neither side measured NLL (the run was recorded with `session.compute_nll=false`).")
        return
    step = state.int_param(state.STEP, 0, 0, 10**9)
    fig = charts_metrics.metric_lines(nll, list(names), title="NLL of the next block", y_title="nats per token",
                                      step=step, connect=True, pickable=True)  # fmt: skip
    widgets.step_picking_chart(fig, key="lab_exact_nll")
    export.download_buttons(nll, f"{run.name}-lab-exact-nll", key="lab_exact_nll_dl")


def main() -> None:
    st.title("Knobs lab")
    run, (path, ver) = widgets.require_run()
    ref = state.param(state.RUN)
    try:
        lab.check_size(run)  # before anything is loaded: the server's memory is everyone's
        rec = _recording(path, ver)
        recorded, (last_step, tokens) = _recorded(path, ver)
    except lab.LAB_ERRORS as e:
        st.error(f"Cannot re-plan {ref}: {str(e).splitlines()[0]}")
        return
    st.caption(f"Run **{ref}**: {last_step + 1} steps, {tokens:,} tokens, scorer {run.manifest.get('scorer')}. "
               "Re-planning reuses the recorded raw scores (fast replay).")  # fmt: skip

    if run.status == "recording":
        st.info("This run is still recording: the lab re-plans the steps recorded so far.")
    values, others = _knob_widgets(ref, rec.config)
    try:
        sets = lab.overrides_from(values, rec.config)
    except ValueError as e:
        st.error(str(e).splitlines()[0])
        return
    state.set_knob_overrides({**sets, **dict(o.split("=", 1) for o in others)})
    overrides = tuple(sorted([f"{k}={v}" for k, v in sets.items()] + others))
    if others:
        st.caption("Also from the URL: " + ", ".join(others))
    try:
        res = _replanned(path, ver, overrides)
    except ValueError as e:
        st.error(str(e).splitlines()[0])
        st.button("Reset to the recorded knobs", on_click=_reset)
        return

    c1, c2, c3 = st.columns([3, 1, 1])
    changed = ", ".join(f"{k}={lab.format_value(v)}" for k, v in res.changed.items()) or "none (the recorded knobs)"
    c1.markdown(f"Changed knobs: {changed}. Re-planned in {res.wall_s:.2f} s.")
    c2.button("Reset to the recorded knobs", on_click=_reset)
    if c3.button("Save as replay run"):
        _save(run, list(overrides), res.changed)
    if res.stats is not None and res.stats.approximate:
        st.warning(f"Approximate replay: {res.stats.approximate_lookups:,} entry scores were not recorded at their "
                   "step and were filled in (the node's latest earlier score, else its parent's or children's, "
                   "else 0).")  # fmt: skip

    st.subheader("Metrics")
    table = lab.compare_table(recorded.summary, res.summary).drop(columns="key")
    st.dataframe(
        table,
        hide_index=True,
        column_config={c: st.column_config.NumberColumn(format="%.4g") for c in ("recorded", "re-planned", "delta")},
    )
    export.download_buttons(table, f"{run.name}-lab-metrics", key="lab_metrics_dl")
    _exact_section(run, ref, path, ver, overrides, last_step + 1)

    step = widgets.step_scrubber(last_step + 1)
    max_lod = rec.config.tree.max_lod
    left, right = st.columns(2)
    with left:
        cells = _cells(path, ver, None, last_step, tokens)
        fig = lod_heatmap(cells, title="recorded", max_lod=max_lod, step=step, height=420, pickable=True)
        widgets.step_picking_chart(fig, key="lab_rec", axis="y", n_steps=last_step + 1)  # a click selects that step
        export.download_buttons(cells, f"{run.name}-lod-timeline-recorded", key="lab_rec_dl")
    with right:
        cells = _cells(path, ver, overrides, last_step, tokens)
        fig = lod_heatmap(cells, title="re-planned", max_lod=max_lod, step=step, height=420, pickable=True)
        widgets.step_picking_chart(fig, key="lab_new", axis="y", n_steps=last_step + 1)
        export.download_buttons(cells, f"{run.name}-lod-timeline-replanned", key="lab_new_dl")
    metric = st.selectbox("per-step metric", PER_STEP, key="lab_metric")
    both = recorded.per_step.merge(res.per_step, on="step", how="outer", suffixes=("_recorded", "_replanned"))
    sides = {f"{metric}_recorded": "recorded", f"{metric}_replanned": "re-planned"}
    fig = charts_metrics.metric_lines(both, list(sides), names=sides, y_title=metric, step=step, pickable=True,
                                      webgl=True)  # fmt: skip
    widgets.step_picking_chart(fig, key="lab_series", n_steps=last_step + 1)  # a click selects that step
    export.download_buttons(both, f"{run.name}-lab-per-step", key="lab_series_dl")


main()
