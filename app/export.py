"""Download buttons for the DataFrame behind a chart or table, as CSV and as Parquet.

The file is made only when the button is clicked (streamlit calls `data` lazily), so a page with
several 250k-cell charts pays nothing for its export buttons on a rerun. This module converts and
offers files; it does not query runs or draw charts.
"""

from __future__ import annotations

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


def file_stem(*parts: object) -> str:
    """A safe file name from its parts: `run_a-timeline-step12`."""
    s = "-".join(str(p) for p in parts if p not in (None, ""))
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "export"


def download_buttons(df: pd.DataFrame, stem: str, *, key: str) -> None:
    """Two small buttons side by side: the DataFrame as CSV and as Parquet."""
    stem = file_stem(stem)
    a, b, _ = st.columns([1, 1, 6])
    with a:
        st.download_button(
            "CSV",
            lambda: to_csv(df),
            file_name=f"{stem}.csv",
            mime="text/csv",
            key=f"{key}_csv",
            icon=":material/download:",
        )
    with b:
        st.download_button(
            "Parquet",
            lambda: to_parquet(df),
            file_name=f"{stem}.parquet",
            mime="application/vnd.apache.parquet",
            key=f"{key}_parquet",
            icon=":material/download:",
        )
