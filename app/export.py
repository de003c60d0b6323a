"""Download buttons for the DataFrame behind a chart or table, as CSV and as Parquet.

The files are made when the page runs, not when the button is clicked: streamlit gives a lazily
made file a new id at every rerun and forgets the old one, so a click that came after any rerun
(a timer, the player, another widget) fetched nothing and failed silently (about 1 click in 15).
A file made now keeps an id derived from its content, which a rerun does not revoke. The bytes are
cached by an exact digest of the frame's content (`_digest`), so a rerun that shows the same data
converts nothing. This module converts and offers files; it does not query runs or draw charts.
"""

from __future__ import annotations

import hashlib
import io
import re

import pandas as pd
import streamlit as st


def to_csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode("utf-8")


def to_parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    # attrs (e.g. a heatmap's extent) are not columns: keep them out of the file's pandas metadata.
    clean = df.copy(deep=False)
    clean.attrs = {}
    clean.to_parquet(buf, index=False, engine="pyarrow", compression="zstd")
    return buf.getvalue()


def _digest(df: pd.DataFrame) -> str:
    """An exact fingerprint of a frame's columns and values (streamlit's own cache key samples the rows
    of a large frame, so two timelines differing in one cell could share a file)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr([(c, str(t)) for c, t in df.dtypes.items()]).encode())
    try:
        h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    except TypeError:  # unhashable cells (lists, dicts): the CSV text is the content
        h.update(to_csv(df))
    return h.hexdigest()


@st.cache_data(max_entries=64, show_spinner=False)
def _files(digest: str, _df: pd.DataFrame) -> tuple[bytes, bytes]:
    """(CSV, Parquet) of `_df`, cached under its content `digest` (the frame itself is not hashed)."""
    return to_csv(_df), to_parquet(_df)


def file_stem(*parts: object) -> str:
    """A safe file name from its parts: `run_a-timeline-step12`."""
    s = "-".join(str(p) for p in parts if p not in (None, ""))
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "export"


def download_buttons(df: pd.DataFrame, stem: str, *, key: str) -> None:
    """Two small buttons side by side: the DataFrame as CSV and as Parquet."""
    stem = file_stem(stem)
    csv, parquet = _files(_digest(df), df)
    a, b, _ = st.columns([1, 1, 2])  # wide enough for the labels under a half-width chart too
    with a:
        st.download_button(
            "CSV",
            csv,
            file_name=f"{stem}.csv",
            mime="text/csv",
            key=f"{key}_csv",
            icon=":material/download:",
            on_click="ignore",  # a download changes nothing on the page: no rerun
        )
    with b:
        st.download_button(
            "Parquet",
            parquet,
            file_name=f"{stem}.parquet",
            mime="application/vnd.apache.parquet",
            key=f"{key}_parquet",
            icon=":material/download:",
            on_click="ignore",
        )
