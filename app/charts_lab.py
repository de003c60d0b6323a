"""Chart builders for the Knobs lab and the Gist map: pandas DataFrame in, plotly figure out.

Pure: no streamlit, no I/O, no binning or projection (the callers pass data already reduced to
what a screen can show, e.g. at most ~50k projected points). The LOD timeline itself is
`app.charts.lod_heatmap`, shared with the Timeline page.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from app.charts import LOD_COLOURS  # the same LOD colours as the timeline


def metric_over_steps(recorded: pd.DataFrame, replanned: pd.DataFrame, column: str, *, step: int | None = None,
                      pickable: bool = False):  # fmt: skip
    """One per-step metric, recorded vs re-planned, as two lines over the refocus step. `pickable`:
    every step gets a small marker, since a click selects a point, not a line."""
    fig = go.Figure()
    mode = "lines+markers" if pickable else "lines"
    for df, name, dash in ((recorded, "recorded", "solid"), (replanned, "re-planned", "dot")):
        if column in df.columns:
            fig.add_trace(go.Scattergl(x=df["step"], y=df[column], mode=mode, name=name, line={"dash": dash},
                                       marker={"size": 3}))  # fmt: skip
    if step is not None:
        fig.add_vline(x=step, line={"color": "#d62728", "width": 1})
    fig.update_layout(
        xaxis_title="refocus step", yaxis_title=column, height=280, margin={"l": 40, "r": 10, "t": 20, "b": 40}
    )
    return fig


def gist_scatter(points: pd.DataFrame, *, colour: str, title: str, axes: tuple[str, str] | None = None) -> go.Figure:
    """2-D gist projection (columns x, y, node_id, lod, start, end, preview and `colour`), one marker per
    gist, with its node, span and text in the hover; `axes` names the two projection axes.

    LOD is categorical (one trace per level, so the legend toggles levels); other colourings are
    continuous. Points with no value for the colour (e.g. never expanded) are drawn grey. Each point's
    customdata starts with its node id, so a selection names the gist.
    """
    fig = go.Figure()
    hover = "L%{customdata[1]}, tokens %{customdata[2]}-%{customdata[3]}<br>%{customdata[4]}<extra></extra>"

    def data(p: pd.DataFrame) -> np.ndarray:
        text = p["preview"].astype(str).str.slice(0, 80).str.replace("\n", " ", regex=False).map(html.escape)
        return np.column_stack([p["node_id"], p["lod"], p["start"], p["end"], text]).astype(object)

    if colour == "lod":
        for lvl in sorted(points["lod"].unique()):
            p = points[points["lod"] == lvl]
            fig.add_trace(
                go.Scattergl(
                    x=p["x"], y=p["y"], mode="markers", name=f"LOD{lvl}",
                    marker={"size": 5, "color": LOD_COLOURS[min(int(lvl), len(LOD_COLOURS) - 1)]},
                    customdata=data(p), hovertemplate=hover,
                )
            )  # fmt: skip
    else:
        has = points[colour].notna()
        if (~has).any():
            p = points[~has]
            fig.add_trace(
                go.Scattergl(
                    x=p["x"], y=p["y"], mode="markers", name=f"no {colour}", marker={"size": 4, "color": "#bbbbbb"},
                    customdata=data(p), hovertemplate=hover,
                )
            )  # fmt: skip
        p = points[has]
        fig.add_trace(
            go.Scattergl(
                x=p["x"], y=p["y"], mode="markers", name=colour,
                marker={"size": 5, "color": p[colour], "colorscale": "Viridis", "showscale": True,
                        "colorbar": {"title": colour}},
                customdata=data(p), hovertemplate=hover,
            )
        )  # fmt: skip
    # No equal aspect: the first component's spread is often many times the second's, which drew a
    # thin band. Ticks and titles say what the axes are.
    fig.update_layout(title=title, height=520, margin={"l": 60, "r": 10, "t": 40, "b": 50}, legend={"orientation": "h"},
                      clickmode="event+select")  # fmt: skip
    axes = axes or (f"{title} 1", f"{title} 2")
    fig.update_xaxes(title={"text": axes[0]}, zeroline=False)
    fig.update_yaxes(title={"text": axes[1]}, zeroline=False)
    return fig
