"""The widgets every page shares: the run guard, the step scrubber, links to other pages, the table
of one step's decisions (Timeline and Step inspector), and the line that follows a background job.

Each is bound to the URL state of `app/state.py` (run, second run, step), so that a page opened
from a link, the sidebar or another page shows the same view. This module draws; it computes
nothing about a run (that is `app/queries.py`).
"""

from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st
from streamlit.errors import StreamlitAPIException, StreamlitPageNotFoundError

from app import export, paths, state
from app import queries_step as qs
from app.queries import get_run, key, step_list
from telemetry.reader import Run
from telemetry.runs import RunReadError


def open_run(name: str = state.RUN) -> Run | None:
    """The run named by URL parameter `name`, or None (with a one-line error if it could not open)."""
    ref = state.param(name)
    if ref is None:
        return None
    try:
        return Run(paths.resolve_run(ref))
    except (paths.PathRefused, RunReadError) as e:
        st.error(f"Cannot open run {ref!r}: {e}")
        return None


def require_run(name: str = state.RUN, *, what: str = "a run") -> tuple[Run, tuple[str, str]]:
    """The run named by URL parameter `name` and its cache key; otherwise a one-line message and stop."""
    if state.param(name) is None:
        st.info(f"Pick {what} on the **Runs** page first (it sets `?{name}=` in the URL).")
        st.stop()
    run = open_run(name)  # a bad or refused reference: st.error already said why
    if run is None:
        st.stop()
    run = get_run(run.path)
    run.tables()  # checks every part's footer once (cached): bad parts are skipped, and named here
    if run.problems:
        more = f" (and {len(run.problems) - 1} more)" if len(run.problems) > 1 else ""
        st.warning(f"Skipped {len(run.problems)} unreadable part file(s) of `{run.name}`: {run.problems[0]}{more}")
    return run, key(run)


def _scrubbed(key: str) -> None:
    # Runs before the rerun the move asked for, with the slider's new value: the URL changes with it,
    # even if that rerun is cut short by the next key press, and the rerun knows the slider moved.
    step = int(st.session_state[key])
    st.session_state[f"{key}_moved"] = True
    state.set_param(state.STEP, step)


def step_scrubber(n_steps: int, *, label: str = "step", key: str = "step_scrubber", disabled: bool = False) -> int:
    """The shared step slider, bound to the URL's `step`. Returns the selected step (0 if no steps).

    The slider writes the URL from its change callback. In a run that the slider itself started, its
    value is left alone; in any other run (another page, a link, the player, a jump button) it is set
    from the URL. A value set by the script is sent back to the slider, so setting it in the slider's
    own runs would undo a key press made while the run was on its way: quick presses were lost, and
    left slider, URL and page out of step. `disabled` (the Timeline while it plays): shown, not movable."""
    if n_steps <= 0:
        return 0
    hi = n_steps - 1
    current = state.int_param(state.STEP, hi, 0, hi)
    if hi == 0:
        state.set_param(state.STEP, 0)
        return 0
    if not st.session_state.pop(f"{key}_moved", False) or key not in st.session_state:
        # Through the Session State API: passing `value=` too would log a warning on every move.
        st.session_state[key] = current
    elif not 0 <= int(st.session_state[key]) <= hi:
        st.session_state[key] = max(0, min(hi, int(st.session_state[key])))  # a run that shrank
    step = int(st.slider(label, 0, hi, key=key, on_change=_scrubbed, args=(key,), disabled=disabled))
    state.set_param(state.STEP, step)
    return step


def step_picking_chart(fig, *, key: str, axis: str = "x", n_steps: int | None = None, scope: str = "app",
                       **kwargs) -> None:  # fmt: skip
    """`st.plotly_chart` on which a click on a point selects that point's step (its `axis` value: x on
    per-step charts, y on the Timeline) into the URL, then reruns (`scope`). The chart keeps its
    selection over reruns, so a click is acted on once: the scrubber or the player can move the step
    afterwards."""
    event = st.plotly_chart(fig, key=key, on_select="rerun", selection_mode="points", **kwargs)
    points = event.selection.points if event and event.selection else []
    if not points or points[0].get(axis) is None:
        return
    step = int(round(float(points[0][axis])))
    if n_steps is not None:
        step = min(max(step, 0), n_steps - 1)
    if st.session_state.get(f"{key}_picked") == step:
        return
    st.session_state[f"{key}_picked"] = step
    state.set_param(state.STEP, step)
    st.rerun(scope=scope)


def step_links(ref: str | None, step: int) -> None:
    """One row: the selected step, and links that open it on the Timeline, the Step inspector and the
    Text page (under a chart whose click selected it)."""
    c_step, *c_links = st.columns(4)
    c_step.markdown(f"**Step {step}:**")
    for col, (label, page) in zip(c_links, [("Timeline", "timeline"), ("Step inspector", "step"), ("Text", "text")],
                                  strict=True):  # fmt: skip
        with col:
            nav_link(label, page, run=ref, step=step)


def require_step(run: Run, path: str, ver: str) -> int:
    """The step the shared scrubber selects in a run's recorded steps; with none, a one-line message
    and stop."""
    steps = step_list(path, ver)
    if steps.size == 0:
        st.info(f"Run `{run.name}` has no recorded steps yet.")
        st.stop()
    return step_scrubber(int(steps.max()) + 1)


@st.fragment(run_every=2.0)
def wait_for_job(state, args: tuple, say) -> None:
    """While the background job that `state(*args)` judges (`app.jobs.job_state`) runs: its line,
    `say(detail)` (text, or (text, fraction) for a progress bar), refreshed every 2 s; once it ends,
    the whole page reruns and shows what it made (or why it failed)."""
    status, detail = state(*args)
    if status != "running":
        st.rerun()
    said = say(detail)
    if isinstance(said, tuple):
        st.progress(min(max(said[1], 0.0), 1.0), text=said[0])
    else:
        st.info(said)


def link(page: str, **params: object) -> str:
    """A relative URL that opens `page` (its url_path, e.g. `timeline`) on the view named by `params`."""
    query = urlencode({k: v for k, v in params.items() if v is not None})
    page = "" if page == "runs" else page  # the default page's own address is the root (`/runs` is its alias)
    return f"./{page}?{query}" if query else f"./{page}"


# url_path (as declared in app/streamlit_app.py) -> page file, relative to the entry point
PAGE_FILES = {
    "runs": "views/runs.py",
    "timeline": "views/timeline.py",
    "step": "views/step_inspector.py",
    "text": "views/text.py",
    "metrics": "views/metrics.py",
    "compare": "views/compare.py",
    "live": "views/live.py",
}


def nav_link(label: str, page: str, **params: object) -> None:
    """A link to another page on the view named by `params` (run, step, ...).

    Under the app's navigation this is `st.page_link` with query parameters: the page switches in
    place and keeps them (a plain markdown link to `./timeline?...` is handled as a page switch by
    the front end and loses its query). A page run on its own (tests, `streamlit run` of one file)
    has no such page registered, so it gets the plain link, which a person can still copy.
    """
    query = {k: str(v) for k, v in params.items() if v is not None}
    try:
        st.page_link(PAGE_FILES[page], label=label, query_params=query)
    except (StreamlitAPIException, StreamlitPageNotFoundError):
        st.markdown(f"[{label}]({link(page, **params)})")


def _filter(label: str, options: list[str], key: str) -> list[str]:
    """A multiselect filter that survives a change of step: everything picked stays everything (the
    options differ from step to step), a narrowed choice keeps the values this step has."""
    seen = st.session_state.get(f"{key}_options")
    if key in st.session_state:
        was = list(st.session_state[key])
        everything = seen is not None and set(was) >= set(seen)
        st.session_state[key] = list(options) if everything else [v for v in was if v in options]
    st.session_state[f"{key}_options"] = list(options)
    default = None if key in st.session_state else list(options)
    return st.multiselect(label, options, default=default, key=key)


def decision_table(dec, *, key: str, export_name: str) -> None:
    """One step's decisions (`queries_step.step_decisions`): a summary line, filters by action and
    outcome, the applied edits first, the structurally impossible candidates hidden (and counted)
    unless asked for; CSV and Parquet of the rows shown."""
    if dec.empty:
        st.info("No decisions at this step: no candidate passed the thresholds and nothing was forced.")
        return
    n_applied, n_impossible = int((dec["outcome"] == "applied").sum()), int(dec["impossible"].sum())
    hidden = f"; {n_impossible} impossible (expanding LOD0, collapsing the top level)" if n_impossible else ""
    st.markdown(f"{len(dec)} candidates, {n_applied} applied{hidden}")
    c1, c2, c3 = st.columns([2, 3, 2], vertical_alignment="bottom")
    actions = sorted(dec["action"].unique())
    outcomes = list(dict.fromkeys(dec["outcome"]))
    with c1:
        picked_a = _filter("action", actions, f"{key}_action")
    with c2:
        picked_o = _filter("outcome", outcomes, f"{key}_outcome")
    show = c3.toggle("show impossible", value=False, key=f"{key}_impossible", disabled=n_impossible == 0,
                     help="candidates no allocator could apply, logged as illegal")  # fmt: skip
    view = qs.decision_view(dec, picked_a, picked_o, impossible=show)
    st.dataframe(view, hide_index=True, key=f"{key}_table")
    export.download_buttons(dec.loc[view.index], export_name, key=f"{key}_dl")
