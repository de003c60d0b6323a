"""Gist map page: the run's gists in 2-D, coloured by level, position, score or step of last expansion.

PCA is drawn at once. A point's hover gives its node, token span and text; a click on it opens the
Timeline at the step it was last expanded (else made) at. UMAP runs in a background process
(`app.projection.start_umap`) the first time the page opens a run without a cached one; while it
runs, a fragment polls every few seconds and reruns the page once the cache is there. A cache made
from fewer gists (the run was still recording) is shown as stale, with a button to recompute. Data
and projections: `app.projection`; figure: `app.charts_gist.gist_scatter`.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import export, projection, state, widgets
from app import queries as q
from app.charts_gist import gist_scatter

COLOURS = {"level": "lod", "position": "start", "score": "score", "step of last expansion": "last_expand"}


@st.cache_resource(max_entries=4, show_spinner="Reading gists...")
def _points(path: str, ver: str):
    """(points DataFrame with x, y = PCA and every colour column, gists in the run) or None."""
    run = q.get_run(path)
    g = projection.load_gists(run)
    if g is None:
        return None
    df = projection.gist_colours(run, g.node_id)
    xy = projection.pca_2d(g.vectors)
    df["x"], df["y"] = xy[:, 0], xy[:, 1]
    return df, g.total


@st.fragment(run_every=3.0)
def _wait_for_umap(path: str) -> None:
    if projection.read_umap(path) is not None and not projection.umap_running(path):
        st.rerun()  # ready: draw it, and stop polling
    err = projection.umap_error(path)
    if err and not projection.umap_running(path):
        st.error(f"UMAP failed: {err}")
        if st.button("Retry UMAP", key="gist_umap_retry"):
            projection.start_umap(path)
            st.rerun(scope="fragment")
        return
    st.info("UMAP is being computed in the background; it appears here when ready (this checks every 3 s).")
    st.button("Refresh", key="gist_umap_refresh")


def _jump_on_click(points, fig, key: str) -> None:
    """Draw the scatter; a click on a gist opens the Timeline at its step (`projection.jump_step`),
    keeping the run, the step in the URL."""
    event = st.plotly_chart(fig, key=key, on_select="rerun", selection_mode="points")
    picked = event.selection.points if event and event.selection else []
    if not picked:
        return
    pt = picked[0]
    node_id = int(fig.data[pt["curve_number"]].customdata[pt["point_index"]][0])
    gist = points.loc[points["node_id"] == node_id].iloc[0]
    state.set_param(state.STEP, projection.jump_step(gist))
    st.switch_page(widgets.PAGE_FILES["timeline"])


def _umap(path: str, points, total: int, colour: str) -> None:
    um = projection.read_umap(path)
    if um is None:
        if not projection.umap_running(path) and not projection.umap_error(path):
            projection.start_umap(path)
        _wait_for_umap(path)
        return
    df = points.drop(columns=["x", "y"]).merge(um, on="node_id", how="inner")
    _jump_on_click(df, gist_scatter(df, colour=colour, title="UMAP"), "gist_umap")
    export.download_buttons(df, f"{Path(path).name}-gists-umap", key="gist_umap_dl")
    made = um.attrs.get("meta", {})
    if made.get("total") != total:
        st.warning(f"This UMAP was made from {made.get('total', '?')} gists; the run now has {total:,}.")
    if projection.umap_running(path):
        st.caption("A new UMAP is being computed.")
    elif st.button("Recompute UMAP", key="gist_umap_redo"):
        projection.start_umap(path)
        st.rerun()


def main() -> None:
    st.title("Gist map")
    run, (path, ver) = widgets.require_run()
    try:
        got = _points(path, ver)
    except (q.RunReadError, ValueError, OSError) as e:
        st.error(f"Cannot read the gists of {run.name}: {str(e).splitlines()[0]}")
        return
    if got is None:
        st.info(
            "This run has no recorded gists; record it again with `--set session.record_gists=true` "
            "(the default) to see its gist map."
        )
        return
    points, total = got
    shown = f"{len(points):,} of {total:,} gists (a seeded sample)" if len(points) < total else f"{total:,} gists"
    st.caption(f"Run **{run.name}**: {shown}, in the base model's embedding space.")
    label = st.radio("colour by", list(COLOURS), horizontal=True, key="gist_colour")
    colour = COLOURS[label]
    left, right = st.columns(2)
    with left:
        _jump_on_click(points, gist_scatter(points, colour=colour, title="PCA", axes=("PC1", "PC2")), "gist_pca")
        export.download_buttons(points, f"{run.name}-gists-pca", key="gist_pca_dl")
    with right:
        _umap(path, points, total, colour)


main()
