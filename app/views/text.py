"""Text view: the document itself at one refocus step, read as the model's working context holds it.

Every WC entry's span of text is shaded by its LOD (the Timeline's colours; full detail stands out,
gists recede and are shown as their first line unless asked for whole), underlined by its score,
with the step's applied edits badged and outlined and a scenario's needle outlined. The evicted
prefix and the tail are named. Data: `app/queries_text.py`; rendering: `app/charts_text.py`.
"""

from __future__ import annotations

import streamlit as st

from app import charts_text, export, queries_text, state, widgets
from app import queries as q

st.title("Text")
run, (path, ver) = widgets.require_run()
step = widgets.require_step(run, path, ver)
df = queries_text.step_text(path, ver, step)
if not df.attrs.get("has_text", False):
    st.info(f"Run `{run.name}` did not record its text (recorded before recorders kept it). "
            f"`python -m engine add-text {run.path}` reads it back from the run's input.")  # fmt: skip
    st.stop()
if df.empty:
    st.info(f"No working context recorded at step {step}: entries are recorded every `session.entries_every` steps.")
    st.stop()

detail = df["lod"] == 0
edits = df[df["edit"] != ""]
c = st.columns(4)
c[0].metric("tokens in full detail", f"{int((df['end'] - df['start'])[detail].sum()):,}")
c[1].metric("tokens behind gists", f"{int((df['end'] - df['start'])[~detail].sum()):,}")
c[2].metric("entries", len(df))
c[3].metric("entries edited", len(edits))
caption = q.scenario_caption(run.manifest)
if caption:
    st.caption(caption)
c1, c2 = st.columns([3, 2], vertical_alignment="bottom")
gists = c1.radio("gists shown as", charts_text.GIST_MODES, horizontal=True, key="tx_gists",
                 help="one line: each gist's first line and how many tokens it stands for; whole text: all the "
                      "text it covers, dimmed; folded: each run of gists that were not edited as one line, to "
                      "read the detail only")  # fmt: skip
with c2:
    widgets.nav_link(f"Step {step} in the Step inspector", "step", run=state.param(state.RUN), step=step)
if not edits.empty:
    st.markdown("Edited this step: " + "; ".join(f"**{r.edit}** {r.node}" for r in edits.itertuples()))
st.html(charts_text.legend_html(int(run.knob("tree.max_lod", 2))))
with st.container(height=800, key="tx_doc"):
    st.html(charts_text.text_html(df, gists=gists, evicted_upto=df.attrs["evicted_upto"], tail=df.attrs["tail"]))
export.download_buttons(df, f"{run.name}-text-step{step}", key="tx_dl")
