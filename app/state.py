"""The view's state, kept in the URL so that a view can be shared: run, second run, step, knobs.

Query parameters (the contract every page uses):
- `run`, `run2`: run references (`<root folder>/<run name>`, see `app.paths.run_ref`);
- `step`: the selected refocus step, shared by every page's scrubber;
- `k.<section>.<field>`: a knob override for the Knobs lab, in `--set` syntax (`k.allocator.cooldown_steps=4`).
The page itself is the URL path (`st.navigation`).

Pages call these helpers instead of touching `st.query_params` directly. This module holds no data
and draws nothing: the widgets bound to this state are `app/widgets.py`.
"""

from __future__ import annotations

import streamlit as st

RUN, RUN2, STEP, KNOB_PREFIX = "run", "run2", "step", "k."


def param(name: str, default: str | None = None) -> str | None:
    v = st.query_params.get(name)
    return default if v in (None, "") else str(v)


def set_param(name: str, value: object | None) -> None:
    """Set (or with None, remove) one query parameter; unchanged values are not rewritten."""
    if value is None or value == "":
        if name in st.query_params:
            del st.query_params[name]
    elif st.query_params.get(name) != str(value):
        st.query_params[name] = str(value)


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
