"""The text view's rendering: one step's entries (`app.queries_text.step_text`) as HTML, each span
shaded by its LOD (the Timeline's colours), underlined by its score (the score overlay's scale: blue
wants detail, red wants less), the step's applied edits and a scenario's needle outlined. Pure:
DataFrame in, HTML string out; all text is escaped.
"""

from __future__ import annotations

import html
from typing import NamedTuple

import numpy as np
import pandas as pd

from app.charts import LOD_COLOURS, MARK_COLOUR, MARKER_COLOUR

# How a gist entry's span is shown: its first line; all the text it covers (dimmed); or, folded, each run
# of gists that were neither edited nor hold the needle as one line (to read the detail only).
GIST_MODES = ("one line", "whole text", "folded")
ALPHA = (0.45, 0.22, 0.12, 0.1, 0.1)  # background opacity per LOD: detail stands out, gists recede
EDIT_MARK = {"expand": "▲ expand", "collapse": "▼ collapse", "evict": "✕ evict"}
MAX_CHARS = 400_000  # beyond this a page is slow to lay out; whole-text gists are cut to their first line
_RED, _WHITE, _BLUE = np.array([178, 24, 43]), np.array([247, 247, 247]), np.array([33, 102, 172])


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def score_colour(score: float, scale: float) -> str:
    """RdBu at `score / scale` clipped to [-1, 1]: red (wants less detail), white (0), blue (wants more)."""
    if not np.isfinite(score) or scale <= 0:
        return "transparent"
    x = float(np.clip(score / scale, -1.0, 1.0))
    rgb = _WHITE + (_BLUE - _WHITE) * x if x >= 0 else _WHITE + (_RED - _WHITE) * -x
    return "rgb({},{},{})".format(*rgb.round().astype(int))


def _one_line(text: str, width: int = 90) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:width] + ("…" if len(line) > width else "")


def legend_html(max_lod: int) -> str:
    pad = "padding:1px 6px;margin-right:10px"
    items = [f'<span style="background:{_rgba(LOD_COLOURS[lv], ALPHA[lv])};{pad}">'
             f"LOD{lv}{' (tokens)' if lv == 0 else ' gist'}</span>" for lv in range(max_lod + 1)]  # fmt: skip
    items.append(
        f'<span style="border-bottom:3px solid {score_colour(1, 1)};margin-right:10px">score: wants detail</span>'
    )
    items.append(f'<span style="border-bottom:3px solid {score_colour(-1, 1)};margin-right:10px">wants less</span>')
    items.append(f'<span style="outline:2px solid {MARKER_COLOUR};{pad}">edited this step</span>')
    items.append(f'<span style="outline:2px dashed {MARK_COLOUR};{pad}">needle</span>')
    return f'<div style="font-size:13px;margin:4px 0 8px 0;line-height:2">{"".join(items)}</div>'


class _Fold(NamedTuple):
    n: int  # consecutive plain gists folded into one line
    start: int
    end: int


def _folded(df: pd.DataFrame) -> list:
    """Rows of `df`, each run of plain gists (not edited, no needle) replaced by one `_Fold`."""
    out, run = [], []
    for r in df.itertuples(index=False):
        if int(r.lod) > 0 and not r.edit and not r.needle:
            run.append(r)
            continue
        if run:
            out.append(_Fold(len(run), run[0].start, run[-1].end))
            run = []
        out.append(r)
    if run:
        out.append(_Fold(len(run), run[0].start, run[-1].end))
    return out


def _span(r, scale: float, whole: bool) -> str:
    lod = int(r.lod)
    text = r.text if (lod == 0 or whole) else _one_line(r.text)
    body = html.escape(text) if text else f"[no text recorded for tokens {r.start}-{r.end}]"
    if lod > 0 and not whole:
        body = f"<i>{body} [{r.end - r.start:,} tokens as one gist]</i>\n"
    style = [f"background:{_rgba(LOD_COLOURS[min(lod, len(LOD_COLOURS) - 1)], ALPHA[min(lod, len(ALPHA) - 1)])}",
             f"border-bottom:3px solid {score_colour(float(r.score), scale)}"]  # fmt: skip
    if lod > 0:
        style.append("color:#777")
    if r.needle:  # the needle's outline wins over an edit's: the edit still has its badge
        style.append(f"outline:2px dashed {MARK_COLOUR}")
    elif r.edit:
        style.append(f"outline:2px solid {MARKER_COLOUR}")
    if r.edit:
        body = f'<b style="color:{MARKER_COLOUR}">{EDIT_MARK.get(r.edit, r.edit)} </b>' + body
    title = f"{r.node}, tokens {r.start}-{r.end}, score {float(r.score):.3f}" + (f", {r.edit}" if r.edit else "")
    title += ", needle" if r.needle else ""
    return f'<span title="{html.escape(title)}" style="{";".join(style)}">{body}</span>'


def _note(text: str) -> str:
    return f'<div style="color:#888;font-style:italic">{text}</div>'


def text_html(df: pd.DataFrame, *, gists: str = GIST_MODES[0], evicted_upto: int = 0, tail: int = 0) -> str:
    """The spans of `df` (columns of `queries_text.TEXT_COLUMNS`) in token order as one HTML block:
    a `<span>` per entry (a folded run of gists is one note line instead)."""
    if gists not in GIST_MODES:
        raise ValueError(f"gists must be one of {GIST_MODES}, got {gists!r}")
    scores = df["score"].to_numpy(dtype=float) if len(df) else np.zeros(0)
    finite = np.abs(scores[np.isfinite(scores)])
    scale = float(np.percentile(finite, 95)) if finite.size else 0.0
    whole = gists == "whole text" and int(df["text"].str.len().sum() if len(df) else 0) <= MAX_CHARS
    parts = [_note(f"⋯ tokens 0-{evicted_upto:,} evicted: no longer in the working context")] if evicted_upto else []
    for r in _folded(df) if gists == "folded" else df.itertuples(index=False):
        if isinstance(r, _Fold):
            parts.append(_note(f"⋯ {r.n} gist{'s' if r.n > 1 else ''}, tokens {r.start:,}-{r.end:,}"))
        else:
            parts.append(_span(r, scale, whole))
    if tail > 0:
        parts.append(_note(f"+ {tail:,} tokens in the tail (raw, not yet a block)"))
    return ('<div style="font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px;'
            'white-space:pre-wrap;line-height:1.6">' + "".join(parts) + "</div>")  # fmt: skip
