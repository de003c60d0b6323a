"""MegaContext Studio, the web app: `streamlit run app/streamlit_app.py`.

The entry point only declares the pages (`st.navigation`); each page is a thin module under
`app/views/` over `telemetry.reader` queries (`app/queries.py`) and pure chart builders
(`app/charts*.py`). State that a shared link must carry lives in the URL (`app/state.py`), and the
sidebar carries it from page to page (`state.carry_view`).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run app/streamlit_app.py` puts app/ on sys.path, not the repository root.
_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import streamlit as st  # noqa: E402

from app import state  # noqa: E402

# Not `pages/`: Streamlit treats a `pages/` folder beside the entry point as its own multipage app,
# so a shared deep link (/timeline?run=...) would open the bare page file and skip this entry point.
_PAGES = Path(__file__).parent / "views"

st.set_page_config(page_title="MegaContext Studio", layout="wide")

pages = [
    # The default page is served at the root; `/runs` (what a person types, and old links) is the same
    # page under a hidden entry, since Streamlit answers a default page's own path with "Page not found".
    st.Page(_PAGES / "runs.py", title="Runs", url_path="home", default=True),
    st.Page(_PAGES / "runs.py", title="Runs", url_path="runs", visibility="hidden"),
    st.Page(_PAGES / "timeline.py", title="Timeline", url_path="timeline"),
    st.Page(_PAGES / "step_inspector.py", title="Step inspector", url_path="step"),
    st.Page(_PAGES / "text.py", title="Text", url_path="text"),
    st.Page(_PAGES / "metrics.py", title="Metrics", url_path="metrics"),
    st.Page(_PAGES / "knobs_lab.py", title="Knobs lab", url_path="knobs"),
    st.Page(_PAGES / "compare.py", title="Compare", url_path="compare"),
    st.Page(_PAGES / "gist_map.py", title="Gist map", url_path="gists"),
    st.Page(_PAGES / "sweep.py", title="Sweep", url_path="sweep"),
    st.Page(_PAGES / "live.py", title="Live", url_path="live"),
    st.Page(_PAGES / "record.py", title="Record", url_path="record"),
]
page = st.navigation(pages)
state.carry_view()  # the sidebar's links are bare paths: the run and step come along from the session
page.run()
