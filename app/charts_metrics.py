"""Metric charts: per-step metric lines and the residency histogram.

Pure builders: the DataFrames of `app.queries.series` / `residency_lengths` in (already thinned to
what a screen shows), plotly Figures out. No streamlit, no I/O, no metric arithmetic: the numbers
come from `telemetry.metrics` unchanged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from app.charts import MARKER_COLOUR


def metric_lines(
    df: pd.DataFrame,
    columns: list[str] | tuple[str, ...],
    *,
    title: str | None = None,
    y_title: str | None = None,
    step: int | None = None,
    names: dict[str, str] | None = None,
    height: int = 260,
    connect: bool = False,
    pickable: bool = False,
    webgl: bool = False,
) -> go.Figure:
    """One line per column against `step`; nulls break the line (a step with no value is not zero),
    or with `connect` (a value measured at some steps only) the line joins the measured steps, each
    marked. A column with no value at all gets no line. `pickable`: every step gets a small marker,
    since a click selects a point, not a line. `webgl`: draw with WebGL, for series not thinned to a
    screen (the Knobs lab's, a point per step of the whole run)."""
    fig = go.Figure()
    for col in columns:
        if col in df.columns:
            x, y = df["step"].to_numpy(), pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
            if connect:
                x, y = x[~np.isnan(y)], y[~np.isnan(y)]
            if y.size == 0 or np.isnan(y).all():
                continue
            fig.add_trace(
                (go.Scattergl if webgl else go.Scatter)(
                    x=x,
                    y=y,
                    mode="lines+markers" if (connect and y.size <= 200) or pickable else "lines",
                    marker={"size": 6 if connect and y.size <= 200 else 3},
                    name=(names or {}).get(col, col),
                    connectgaps=False,
                )
            )
    if step is not None:
        fig.add_vline(x=step, line={"color": MARKER_COLOUR, "width": 1.5})
    fig.update_layout(
        title=title,
        height=height,
        margin={"l": 50, "r": 20, "t": 40 if title else 10, "b": 40},
        xaxis={"title": {"text": "refocus step"}},
        yaxis={"title": {"text": y_title or ""}},
        showlegend=len(columns) > 1,
        legend={"orientation": "h", "y": 1.15},
    )
    return fig


def residency_histogram(df: pd.DataFrame) -> go.Figure:
    """How many residency runs (a node kept at one LOD) lasted each number of steps."""
    fig = go.Figure()
    if len(df):
        fig.add_trace(go.Bar(x=df["length"].to_numpy(), y=df["runs"].to_numpy(), name="runs"))
    fig.update_layout(
        height=260,
        margin={"l": 50, "r": 20, "t": 10, "b": 40},
        xaxis={"title": {"text": "steps at one LOD"}},
        yaxis={"title": {"text": "runs"}, "type": "log"},
    )
    return fig
