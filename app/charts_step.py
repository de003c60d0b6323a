"""Step-inspector charts: the score pipeline over the WC, base-model attention, LensNet cross-attention,
and the probe's scores against measured utility.

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


ATTENTION_SCALES = ("log", "rank", "linear")  # colour scales of the attention heatmap; log first
LOG_FLOOR = 1e-6  # attention mass below this is drawn at this (log10 of 0 is -inf)


def attention_colour(z: np.ndarray, scale: str) -> np.ndarray:
    """The colour value of each cell of a layers x positions mass matrix: log10 of the mass (floored
    at LOG_FLOOR), its rank within its layer (0 = least, 1 = most mass), or the mass itself.

    A linear scale spends the whole colour range on the few entries holding most of the mass (the
    newest ones, the sink), so every other column looks the same; log and rank show their order."""
    if scale == "log":
        return np.log10(np.maximum(z, LOG_FLOOR))
    if scale == "rank":
        out = np.full(z.shape, np.nan, np.float64)
        for i, row in enumerate(z):
            ok = ~np.isnan(row)
            if ok.sum() > 1:
                ranks = pd.Series(row[ok]).rank(method="average").to_numpy()
                out[i, ok] = (ranks - 1) / (ok.sum() - 1)
            elif ok.any():
                out[i, ok] = 1.0
        return out
    if scale == "linear":
        return z.astype(np.float64)
    raise ValueError(f"attention scale must be one of {', '.join(ATTENTION_SCALES)}, got {scale!r}")


ROW_TITLES = {"layer": "layer", "head": "head", "query": "LensNet query"}


def attention_heatmap(att: pd.DataFrame, scale: str = "log", *, rows: str = "layer") -> go.Figure:
    """Attention mass onto the WC entries (and the tail): columns = WC positions, one row per value of
    `rows` (`layer`: the newest block's queries per layer; `head`: per head of one layer; `query`:
    per LensNet query, labelled by its `query_label`), coloured on `scale` (`attention_colour`, whose
    rank is within a row); the hover always gives the mass itself."""
    fig = go.Figure()
    keys = np.sort(att[rows].unique()) if len(att) else np.zeros(0)
    if len(att):
        pos = np.sort(att["position"].unique())
        z = np.full((keys.size, pos.size), np.nan, np.float32)
        z[np.searchsorted(keys, att[rows]), np.searchsorted(pos, att["position"])] = att["mass"].to_numpy()
        labels = att.drop_duplicates("position").set_index("position")["node"].reindex(pos).fillna("?").to_numpy()
        y = keys
        if rows == "query":  # the query's own label (a gist, or a token and its text), top to bottom in order
            y = att.drop_duplicates("query").set_index("query")["query_label"].reindex(keys).to_numpy()
        colour = attention_colour(z, scale)
        bar = {"title": {"text": {"log": "mass (log)", "rank": "rank in row", "linear": "mass"}[scale]}}
        if scale == "log":  # ticks in mass, not in its logarithm
            lo, hi = np.nanmin(colour), np.nanmax(colour)
            ticks = np.arange(np.floor(lo), np.ceil(hi) + 1)
            bar.update(tickvals=ticks, ticktext=[f"{10**t:g}" for t in ticks])
        fig.add_trace(
            go.Heatmap(
                z=colour,
                x=pos,
                y=y,
                colorscale="Viridis",
                customdata=np.stack([np.broadcast_to(labels, z.shape), z.astype(np.float64)], axis=-1),
                colorbar=bar,
                hovertemplate=f"{ROW_TITLES[rows]} %{{y}}<br>%{{customdata[0]}} (WC position %{{x}})"
                "<br>mass %{customdata[1]:.4g}<extra></extra>",
            )
        )
    per_row = 16 if rows == "query" else 28
    yaxis = {"title": {"text": ROW_TITLES[rows]}}
    if rows == "query":
        yaxis.update(autorange="reversed", type="category", tickfont={"size": 10})
    else:
        yaxis["dtick"] = 1
    fig.update_layout(
        height=120 + per_row * max(1, keys.size),
        margin={"l": 50 if rows != "query" else 220, "r": 20, "t": 10, "b": 40},
        xaxis={"title": {"text": "WC position"}},
        yaxis=yaxis,
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


PROBE_COLOURS = {"expand": "#2166ac", "collapse": "#b2182b"}  # the score scale's ends: wants more / less detail


def probe_scatter(probe: pd.DataFrame, score: str = "raw_score") -> go.Figure:
    """The probe of one step (`app.probe.read_probe`): x = the scorer's `score` of each probed entry,
    y = the measured utility of its finer level (LensNet's label); one colour per edit kind. A scorer
    that ranks well puts the points on a rising line; the title gives the rank correlation."""
    meta = probe.attrs.get("meta", {})
    rho = meta.get("spearman_raw" if score == "raw_score" else "spearman_score")
    fig = go.Figure()
    for edit, colour in PROBE_COLOURS.items():
        part = probe[probe["edit"] == edit]
        if part.empty:
            continue
        label = [f"L{int(lod)} tokens {s}-{e}, {edit}: ΔNLL {d:+.4f}" for lod, s, e, d in
                 zip(part["lod"], part["start"], part["end"], part["delta_nll"], strict=True)]  # fmt: skip
        hover = "%{text}<br>score %{x:.4f}<br>utility %{y:.2e}<extra></extra>"
        fig.add_trace(go.Scatter(x=part[score].to_numpy(np.float64), y=part["utility"].to_numpy(np.float64),
                                 mode="markers", name=f"{edit} ({len(part)})", text=label,
                                 marker={"color": colour, "size": 9}, hovertemplate=hover))  # fmt: skip
    fig.add_hline(y=0, line={"color": "#999", "width": 1, "dash": "dot"})
    corr = "n/a (too few distinct points)" if rho is None else f"{rho:+.2f}"
    fig.update_layout(
        title=f"Scorer's {score.replace('_', ' ')} against the true utility: Spearman {corr}",
        xaxis_title=f"{score.replace('_', ' ')} (the scorer's)",
        yaxis_title="utility of detail (ΔNLL per position, measured)",
        height=420,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    return fig
