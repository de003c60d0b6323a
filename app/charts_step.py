"""Step-inspector charts: the score pipeline over the WC, base-model attention, LensNet cross-attention.

Pure builders: the DataFrames of `app.queries.step_entries`, `attention_at` and `lens_attention_at`
in, plotly Figures out. No streamlit, no I/O. One step's WC is a few hundred entries, so nothing
here needs binning.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

STAGES = (
    ("raw_score", "raw (scorer)"),
    ("score_interp", "after interpolation"),
    ("score_shift", "after shift"),
    ("score", "final (sharpened)"),
)


def score_stages(entries: pd.DataFrame, *, tau_expand: float | None = None, tau_collapse: float | None = None):
    """Each pipeline stage's score of every entry, in WC order (x = WC position)."""
    fig = go.Figure()
    if len(entries):
        x = entries["position"].to_numpy()
        text = entries["node"].to_numpy()
        for col, label in STAGES:
            if col in entries.columns:
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=entries[col].to_numpy(np.float32),
                        mode="lines+markers",
                        name=label,
                        text=text,
                        hovertemplate="%{text}<br>" + label + " %{y:.3f}<extra></extra>",
                    )
                )
    for tau, name in ((tau_expand, "expand"), (-tau_collapse if tau_collapse else None, "collapse")):
        if tau is not None:
            fig.add_hline(y=tau, line={"dash": "dot", "width": 1}, annotation_text=f"{name} threshold")
    fig.update_layout(
        height=320,
        margin={"l": 50, "r": 20, "t": 10, "b": 40},
        xaxis={"title": {"text": "WC position"}},
        yaxis={"title": {"text": "score"}, "range": [-1.05, 1.05]},
        legend={"orientation": "h", "y": 1.12},
    )
    return fig


def attention_heatmap(att: pd.DataFrame) -> go.Figure:
    """Attention mass from the newest block's queries: rows = layers, columns = WC entries (and the tail)."""
    fig = go.Figure()
    if len(att):
        pos = np.sort(att["position"].unique())
        layers = np.sort(att["layer"].unique())
        z = np.full((layers.size, pos.size), np.nan, np.float32)
        z[np.searchsorted(layers, att["layer"]), np.searchsorted(pos, att["position"])] = att["mass"].to_numpy()
        labels = att.drop_duplicates("position").set_index("position")["node"].reindex(pos).fillna("?").to_numpy()
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=pos,
                y=layers,
                colorscale="Viridis",
                customdata=np.broadcast_to(labels, z.shape),
                colorbar={"title": {"text": "mass"}},
                hovertemplate="layer %{y}<br>%{customdata} (WC position %{x})<br>mass %{z:.4f}<extra></extra>",
            )
        )
    fig.update_layout(
        height=120 + 28 * max(1, att["layer"].nunique() if len(att) else 1),
        margin={"l": 50, "r": 20, "t": 10, "b": 40},
        xaxis={"title": {"text": "WC position"}},
        yaxis={"title": {"text": "layer"}, "dtick": 1},
    )
    return fig


def lens_attention_bars(lens: pd.DataFrame) -> go.Figure:
    """LensNet cross-attention mass per WC entry, one bar group per scorer round."""
    fig = go.Figure()
    for it, g in lens.groupby("iteration") if len(lens) else ():
        fig.add_trace(
            go.Bar(
                x=g["position"].to_numpy(),
                y=g["mass"].to_numpy(np.float32),
                name=f"round {it}",
                text=g["node"].to_numpy(),
                hovertemplate="%{text}<br>mass %{y:.4f}<extra></extra>",
            )
        )
    fig.update_layout(
        height=260,
        barmode="group",
        margin={"l": 50, "r": 20, "t": 10, "b": 40},
        xaxis={"title": {"text": "WC position"}},
        yaxis={"title": {"text": "cross-attention mass"}},
    )
    return fig
