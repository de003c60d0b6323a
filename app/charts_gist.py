"""Chart builder for the Gist map: projected gists (pandas DataFrame) in, plotly figure out.

Pure: no streamlit, no I/O, no projection (the caller passes at most ~50k points, already
projected by `app.projection`).
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from app.charts import LOD_COLOURS  # the same LOD colours as the timeline


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
