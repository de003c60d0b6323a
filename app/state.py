"""The view's state, kept in the URL so that a view can be shared: run, second run, step, knobs.

Query parameters (the contract every page uses):
- `run`, `run2`: run references (`<root folder>/<run name>`, see `app.paths.run_ref`);
- `step`: the selected refocus step, shared by every page's scrubber;
- `k.<section>.<field>`: a knob override for the Knobs lab, in `--set` syntax (`k.allocator.cooldown_steps=4`).
The page itself is the URL path (`st.navigation`).

Navigation carries the view: `run`, `run2` and `step` are remembered for the browser session as pages
set them, and `carry_view` (run by the entry point before every page) puts them back into a URL that
lacks them, as after a click in the sidebar, whose links are bare page paths.

Pages call these helpers instead of touching `st.query_params` directly. This module holds no data
and draws nothing: the widgets bound to this state are `app/widgets.py`.
"""

from __future__ import annotations

import streamlit as st

RUN, RUN2, STEP, KNOB_PREFIX = "run", "run2", "step", "k."
VIEW = (RUN, RUN2, STEP)  # what every page link and the sidebar carry from page to page
_MEMORY = "state:view"  # session_state key: {parameter: value} last seen or set in this browser session


def param(name: str, default: str | None = None) -> str | None:
    v = st.query_params.get(name)
    return default if v in (None, "") else str(v)


def set_param(name: str, value: object | None) -> None:
    """Set (or with None, remove) one query parameter; unchanged values are not rewritten. A view
    parameter (run, run2, step) is remembered for the session too, or forgotten with None."""
    memory = st.session_state.setdefault(_MEMORY, {})
    if value is None or value == "":
        if name in st.query_params:
            del st.query_params[name]
        memory.pop(name, None)
        return
    if st.query_params.get(name) != str(value):
        st.query_params[name] = str(value)
    if name in VIEW:
        memory[name] = str(value)


def carry_view() -> None:
    """Keep the view across pages: a view parameter in the URL is remembered, a missing one restored.

    Called by the entry point before the page runs. A sidebar link opens the bare page path (`/step`),
    so without this every page switch would lose the run; a shared link still wins, since what the URL
    names is kept and remembered.
    """
    memory = st.session_state.setdefault(_MEMORY, {})
    for name in VIEW:
        value = st.query_params.get(name)
        if value not in (None, ""):
            memory[name] = str(value)
        elif name in memory:
            st.query_params[name] = memory[name]


def int_param(name: str, default: int, lo: int, hi: int) -> int:
    """An integer parameter brought into [lo, hi]; a garbled value falls back to `default`."""
    try:
        v = int(param(name, str(default)))
    except ValueError:
        v = default
    return max(lo, min(hi, v))


def knob_overrides() -> list[str]:
    """The Knobs lab's overrides from the URL, as `section.field=value` strings (sorted)."""
    return sorted(f"{k[len(KNOB_PREFIX) :]}={v}" for k, v in st.query_params.items() if k.startswith(KNOB_PREFIX))


def set_knob_overrides(sets: dict[str, object]) -> None:
    """Replace every `k.` parameter with `sets` ({"section.field": value}); None values are dropped."""
    for k in [k for k in st.query_params if k.startswith(KNOB_PREFIX)]:
        if k[len(KNOB_PREFIX) :] not in sets:
            del st.query_params[k]
    for name, v in sets.items():
        set_param(KNOB_PREFIX + name, v)
