"""Timeline charts: the LOD heatmap (x = token position, y = refocus step) and its score overlay.

Pure builders: a DataFrame of binned cells (as `app.queries.heatmap` returns, with the bin extent in
`attrs["extent"]`) in, a plotly Figure out. No streamlit, no I/O, no binning: the cells arrive
already screen-sized, and each becomes exactly one z value (a typed float32 array, so a 250k-cell
chart is a megabyte of base64, not ten of JSON). The step-inspector and metric charts are in
`app/charts_step.py` and `app/charts_metrics.py`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import plotly.graph_objects as go

# Detail is warm, gists cool and dark: the eye finds where the model is reading closely.
LOD_COLOURS = ("#f4a259", "#5b8e7d", "#2b3a67", "#141b2d", "#0b0e17")
SCORE_SCALE = "RdBu"  # diverging: red = wants less detail (collapse), blue = wants more (expand)
MARKER_COLOUR = "#e4572e"
MARK_COLOUR = "#ff3fa4"  # a scenario's needle: magenta, apart from the step marker and the LOD colours
# Streamlit reports clicks on scatter points only: the heatmap carries a layer of invisible points, one per
# row and column group, so that a click anywhere selects that row's step. At most this many points.
PICK_POINTS = 12_000


def grid(cells: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z float32[h, w] with NaN where no entry covers, token start of each x bin, first step of each y bin)."""
    ext = cells.attrs.get("extent") or {}
    w, h = int(ext.get("w", 0)), int(ext.get("h", 0))
    z = np.full((h, w), np.nan, np.float32)
    if w == 0 or h == 0:
        return z, np.zeros(0, np.int64), np.zeros(0, np.int64)
    if len(cells):
        z[cells["y_bin"].to_numpy(np.int64), cells["x_bin"].to_numpy(np.int64)] = cells["value"].to_numpy(np.float32)
    t0, span = int(ext["t0"]), int(ext["t1"]) - int(ext["t0"])
    s0, n = int(ext["s0"]), int(ext["s1"]) - int(ext["s0"]) + 1
    # The same bin edges as the reader's SQL: bin b starts at ceil(b * span / w).
    x = t0 + (np.arange(w, dtype=np.int64) * span + w - 1) // w
    y = s0 + (np.arange(h, dtype=np.int64) * n + h - 1) // h
    return z, x, y


def _lod_scale(max_lod: int) -> list[list]:
    top = max(1, max_lod)
    return [[lv / top, LOD_COLOURS[min(lv, len(LOD_COLOURS) - 1)]] for lv in range(top + 1)]


def lod_heatmap(
    cells: pd.DataFrame,
    *,
    max_lod: int = 2,
    step: int | None = None,
    overlay: pd.DataFrame | None = None,
    overlay_name: str = "score",
    title: str | None = None,
    height: int = 520,
    marks: list[tuple[int, int, str]] | None = None,
    pickable: bool = False,
) -> go.Figure:
    """The LOD timeline: one heatmap cell per (token bin, step bin), colour = LOD (mean in the cell).

    `step` draws a line at that step; `overlay` (score cells on the same axes) is drawn on top, half
    transparent, with its own diverging colour bar; `marks` are token spans (start, end, label), e.g.
    a scenario's needle, outlined across all steps. `pickable` adds the click layer (`pick_layer`), for
    a chart drawn by `app.widgets.step_picking_chart`.
    """
    z, x, y = grid(cells)
    fig = go.Figure()
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=x,
            y=y,
            zmin=0,
            zmax=max(1, max_lod),
            colorscale=_lod_scale(max_lod),
            colorbar={
                "title": {"text": "LOD"},
                "tickvals": list(range(max_lod + 1)),
                "ticktext": ["0 raw"] + [f"{lv} gist" for lv in range(1, max_lod + 1)],
                "x": 1.0,
            },
            hovertemplate="tokens from %{x}<br>step %{y}<br>LOD %{z:.2f}<extra></extra>",
            name="LOD",
        )
    )
    if overlay is not None and len(overlay):
        oz, ox, oy = grid(overlay)
        fig.add_trace(
            go.Heatmap(
                z=oz,
                x=ox,
                y=oy,
                zmin=-1,
                zmax=1,
                colorscale=SCORE_SCALE,
                opacity=0.55,
                colorbar={"title": {"text": overlay_name}, "x": 1.08},
                hovertemplate=f"tokens from %{{x}}<br>step %{{y}}<br>{overlay_name} %{{z:.3f}}<extra></extra>",
                name=overlay_name,
            )
        )
    if pickable and z.size:
        over_z = grid(overlay)[0] if overlay is not None and len(overlay) else None
        fig.add_trace(pick_layer(z, x, y, overlay=None if over_z is None else (over_z, overlay_name)))
        fig.update_layout(clickmode="event+select")
    if step is not None:
        fig.add_hline(y=step, line={"color": MARKER_COLOUR, "width": 2}, annotation_text=f"step {step}")
    for start, end, label in marks or []:
        fig.add_vrect(x0=start, x1=max(end, start + 1), line={"color": MARK_COLOUR, "width": 2}, fillcolor=MARK_COLOUR,
                      opacity=0.25, annotation_text=label, annotation_position="top left")  # fmt: skip
    fig.update_layout(
        title=title,
        height=height,
        margin={"l": 60, "r": 30, "t": 40 if title else 10, "b": 40},
        xaxis={"title": {"text": "token position"}},
        yaxis={"title": {"text": "refocus step"}, "autorange": "reversed"},  # time runs down the page
    )
    return fig


def _group_means(z: np.ndarray, cols: np.ndarray, stride: int) -> np.ndarray:
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN group (no entry there) stays NaN
        return np.stack([np.nanmean(z[:, c : c + stride], axis=1) for c in cols], axis=1)  # [h, len(cols)]


def pick_layer(z: np.ndarray, x: np.ndarray, y: np.ndarray, max_points: int = PICK_POINTS, *,
               overlay: tuple[np.ndarray, str] | None = None) -> go.Scatter:  # fmt: skip
    """Invisible points over the heatmap `z` [h, w] (x: token start per column, y: first step per row):
    one per row and group of adjacent columns (at most `max_points`), each at its group's first column.
    They take the hover (the heatmap's own label would be hidden under them), so each says what its
    group shows: the tokens it spans, the row's step, the mean LOD there and, given `overlay` (its z on
    the same grid, its name), the overlay's mean; a click selects the step."""
    h, w = z.shape
    stride = max(1, -(-(h * w) // max_points))
    cols = np.arange(0, w, stride)
    ends = np.append(x[cols[1:]], x[-1] + (x[-1] - x[-2] if w > 1 else 1))
    columns = [np.broadcast_to(ends.astype(np.float32), (h, cols.size)), _group_means(z, cols, stride)]
    hover = "tokens %{x}-%{customdata[0]}<br>step %{y} (click: select it)<br>LOD %{customdata[1]:.2f}"
    if overlay is not None and overlay[0].shape == z.shape:
        columns.append(_group_means(overlay[0], cols, stride))
        hover += f"<br>{overlay[1]} %{{customdata[2]:.3f}}"
    yy, xx = np.meshgrid(y.astype(np.int32), x[cols].astype(np.int32), indexing="ij")
    return go.Scatter(
        x=xx.ravel(),
        y=yy.ravel(),
        mode="markers",
        marker={"size": 12, "opacity": 0},
        customdata=np.stack([c.astype(np.float32).ravel() for c in columns], axis=1),
        hovertemplate=hover + "<extra></extra>",
        showlegend=False,
        name="pick",
    )


def lod_strip(entries: pd.DataFrame, *, max_lod: int = 2, title: str | None = None) -> go.Figure:
    """The WC of one step as a strip: one bar per entry over its token span, coloured by LOD."""
    fig = go.Figure()
    if len(entries):
        width = (entries["end"] - entries["start"]).to_numpy()
        fig.add_trace(
            go.Bar(
                x=(entries["start"] + width / 2).to_numpy(),
                y=np.ones(len(entries)),
                width=width,
                marker={
                    "color": entries["lod"].to_numpy(np.float32),
                    "colorscale": _lod_scale(max_lod),
                    "cmin": 0,
                    "cmax": max(1, max_lod),
                },
                customdata=np.stack([entries["node"], entries["start"], entries["end"]], axis=1),
                hovertemplate="%{customdata[0]} [%{customdata[1]}, %{customdata[2]})<extra></extra>",
            )
        )
    fig.update_layout(
        title=title,
        height=110,
        bargap=0,
        margin={"l": 60, "r": 30, "t": 30 if title else 5, "b": 30},
        yaxis={"visible": False},
        xaxis={"title": {"text": "token position"}},
        showlegend=False,
    )
    return fig
