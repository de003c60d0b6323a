"""Sweep charts: the Pareto view of two metrics, a heatmap of one metric over two knobs, parallel
coordinates over every knob. Pure builders: DataFrames of `app.queries_sweep` in, plotly Figures out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from telemetry.registry import METRIC

FRONT, REST = "#d62728", "#9aa5b1"


def _title(key: str) -> str:
    m = METRIC.get(key)
    if m is None:
        return key
    return f"{m.title}, {m.better} is better" if m.better else m.title


def ordered(values) -> list:
    """Knob values (strings as written) in numeric order where they are numbers."""
    return sorted(set(values), key=lambda v: (pd.to_numeric(v, errors="coerce"), str(v)))


def setting_label(row: pd.Series, knobs: list[str]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in knobs)


def pareto_chart(df: pd.DataFrame, x: str, y: str, front: np.ndarray, knobs: list[str]) -> go.Figure:
    """Each setting a point (x, y); the non-dominated ones in red, joined in x order; a hover names
    the setting. `customdata` holds each point's row index in `df` (a click selects that setting)."""
    fig = go.Figure()
    labels = np.array([setting_label(r, knobs) for _, r in df.iterrows()], dtype=object)
    idx = np.arange(len(df))
    hover = "%{text}<br>x %{x:.4g}<br>y %{y:.4g}<extra></extra>"
    for mask, name, colour, size in ((~front, "dominated", REST, 7), (front, "non-dominated", FRONT, 10)):
        fig.add_trace(go.Scatter(x=df[x].to_numpy()[mask], y=df[y].to_numpy()[mask], mode="markers", name=name,
                                 marker={"color": colour, "size": size}, customdata=idx[mask],
                                 text=labels[mask], hovertemplate=hover))  # fmt: skip
    if front.any():
        f = df[front].sort_values(x)
        fig.add_trace(go.Scatter(x=f[x], y=f[y], mode="lines", line={"color": FRONT, "width": 1, "dash": "dot"},
                                 hoverinfo="skip", showlegend=False))  # fmt: skip
    fig.update_layout(height=460, margin={"l": 60, "r": 20, "t": 30, "b": 50}, legend={"orientation": "h", "y": 1.08},
                      xaxis={"title": {"text": _title(x)}}, yaxis={"title": {"text": _title(y)}})  # fmt: skip
    return fig


def knob_heatmap(df: pd.DataFrame, kx: str, ky: str, metric: str) -> go.Figure:
    """`metric` over two knobs (the mean over every other knob's values), knob values in numeric order."""
    g = df.groupby([kx, ky], sort=False)[metric].mean().reset_index()
    xs, ys = ordered(g[kx]), ordered(g[ky])
    z = g.pivot(index=ky, columns=kx, values=metric).reindex(index=ys, columns=xs).to_numpy(np.float64)
    label = METRIC[metric].label if metric in METRIC else metric
    hover = f"{kx}=%{{x}}<br>{ky}=%{{y}}<br>{label} %{{z:.4g}}<extra></extra>"
    fig = go.Figure(go.Heatmap(z=z, x=[str(v) for v in xs], y=[str(v) for v in ys], colorscale="Viridis",
                               colorbar={"title": {"text": label}}, hovertemplate=hover))  # fmt: skip
    fig.update_layout(height=420, margin={"l": 70, "r": 20, "t": 20, "b": 50},
                      xaxis={"title": {"text": kx}, "type": "category"},
                      yaxis={"title": {"text": ky}, "type": "category"})  # fmt: skip
    return fig


def parallel(df: pd.DataFrame, knobs: list[str], metric: str) -> go.Figure:
    """Parallel coordinates: one axis per knob (its values in numeric order), then `metric`, which
    colours the lines."""
    dims = []
    for k in knobs:
        vals = ordered(df[k])
        code = {v: i for i, v in enumerate(vals)}
        dims.append({"label": k.split(".")[-1], "values": df[k].map(code).to_numpy(),
                     "tickvals": list(range(len(vals))), "ticktext": [str(v) for v in vals]})  # fmt: skip
    v = df[metric].to_numpy(np.float64)
    dims.append({"label": METRIC[metric].label if metric in METRIC else metric, "values": v})
    fig = go.Figure(go.Parcoords(line={"color": v, "colorscale": "Viridis", "showscale": True}, dimensions=dims))
    fig.update_layout(height=420, margin={"l": 60, "r": 60, "t": 50, "b": 30})
    return fig
