"""The app's list of runs: every run folder under the configured roots, one row each, with what the
Runs page shows and filters by (status, size, scorer, tokens, steps, parent, changed knobs, creation
time, duration, the config's knob values).

Listing reads manifests only (never part files) and is cached for a few seconds, so that runs
appearing, finishing or dying show up. Per-run queries are `app/queries.py`.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import paths
from contract import RunConfig
from telemetry.runs import RunReadError, list_runs, load_manifest


def _changed(manifest: dict, defaults: dict) -> str:
    ch = manifest.get("changed_knobs")
    if not ch:  # a first recording: what differs from the defaults
        flat = manifest.get("config_flat") or {}
        ch = {k: v for k, v in flat.items() if k in defaults and defaults[k] != v and not k.startswith("session.")}
    return ", ".join(f"{k}={v}" for k, v in sorted(ch.items()))


def runs_table() -> pd.DataFrame:
    """Every run folder under every run root (`app.paths.run_roots()`), one row each."""
    return _runs_table(tuple(str(r) for r in paths.run_roots()))


@st.cache_data(ttl=3, show_spinner=False)
def _runs_table(roots: tuple[str, ...]) -> pd.DataFrame:
    # A short TTL: the list changes as runs appear, finish or die; keyed by the roots themselves.
    defaults = RunConfig().flat()
    rows = []
    for root in roots:
        for info in list_runs(root):
            changed, knobs, duration = "", {}, None
            if info.status != "invalid":
                try:
                    m = load_manifest(info.path)
                    changed, knobs, duration = _changed(m, defaults), m.get("config_flat") or {}, _duration_s(m)
                except RunReadError:
                    pass
            rows.append(
                {
                    "ref": paths.run_ref(info.path),
                    "root": str(root),
                    "name": info.name,
                    "status": info.status,
                    "problem": info.problem or info.error or "",
                    "size_mb": round(info.size_bytes / 2**20, 2),
                    "scorer": info.scorer or "",
                    "tokens": info.tokens,
                    "steps": info.steps,
                    "parent": info.parent or "",
                    "changed_knobs": changed,
                    "created_at": info.created_at or "",
                    "duration_s": duration,
                    "path": str(info.path),
                    "knobs": knobs,
                }
            )
    return pd.DataFrame(rows, columns=list(_RUN_COLUMNS))


def _duration_s(manifest: dict) -> float | None:
    """Seconds from a run's creation to its last manifest write (its end, once it has finished)."""
    try:
        t0 = pd.Timestamp(manifest["created_at"])
        t1 = pd.Timestamp(manifest.get("updated_at") or manifest.get("heartbeat_at"))
        return round(float((t1 - t0).total_seconds()), 1)
    except (KeyError, TypeError, ValueError):
        return None


_RUN_COLUMNS = (
    "ref",
    "root",
    "name",
    "status",
    "problem",
    "size_mb",
    "scorer",
    "tokens",
    "steps",
    "parent",
    "changed_knobs",
    "created_at",
    "duration_s",
    "path",
    "knobs",  # {knob: value} of the run's config, for the columns a user picks
)
