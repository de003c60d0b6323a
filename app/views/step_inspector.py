"""Step inspector page: the working context at one refocus step, and why each edit happened or not.

Shows the step's WC entries (node, LOD, span, cost, text preview, and the score after each pipeline
stage: raw, interpolated, shifted, final), every decision with its outcome, the base-model attention
over the entries (only on the steps that recorded it: the page says which, and jumps to the nearest)
and LensNet's cross-attention when the scorer was LensNet. "Compute the attention by head" recomputes,
in a background process with the run's own model, the step's attention by layer and head and LensNet's
by query, at any step (`app/attention.py`, cached per step). "Probe this step" measures, in a background
process with the run's own model, the true NLL change of moving each of the top-k candidates one level,
and plots it against the score the scorer gave (`app/probe.py`, cached per step). Data:
`app/queries_step.py`; charts: `app/charts_step.py`.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import attention, charts_step, export, jobs, probe, state, widgets
from app import queries as q
from app import queries_step as qs

ENTRY_COLUMNS = ["position", "node", "lod", "start", "end", "cost", "preview", *q.SCORE_COLUMNS, "node_id"]

st.title("Step inspector")
run, (path, ver) = widgets.require_run()
step = widgets.require_step(run, path, ver)
row = qs.step_row(path, ver, step)
if row:
    c = st.columns(5)
    c[0].metric("tokens read", f"{row['tokens_seen']:,}")
    c[1].metric("entries", row["n_entries"])
    c[2].metric("WC cost / w_max", f"{row['wc_cost']}/{row['w_max']}")
    c[3].metric("edits applied", row.get("n_applied", 0))
    c[4].metric("next-block NLL", "-" if row.get("nll") is None else f"{row['nll']:.3f}")

# ------------------------------------------------------------------------------------------ WC
ents = qs.step_entries(path, ver, step)
st.subheader("Working context")
if ents.empty:
    st.info(f"No WC recorded at step {step}: entries are recorded every `session.entries_every` steps.")
else:
    rounds = sorted(int(i) for i in ents["iteration"].unique())
    it = st.radio("scorer round", rounds, horizontal=True, key="si_round") if len(rounds) > 1 else rounds[0]
    wc = ents[ents["iteration"] == it]
    tau = float(run.knob("allocator.tau_expand", 0.2))
    tau_c = float(run.knob("allocator.tau_collapse", 0.2))
    st.plotly_chart(charts_step.score_stages(wc, tau_expand=tau, tau_collapse=tau_c), key="si_scores")
    st.dataframe(wc[[c for c in ENTRY_COLUMNS if c in wc.columns]], hide_index=True, key="si_entries")
    export.download_buttons(wc, f"{run.name}-wc-step{step}", key="si_wc")

# ----------------------------------------------------------------------------------- decisions
st.subheader("Decisions")
widgets.decision_table(qs.step_decisions(path, ver, step), key="si_dec", export_name=f"{run.name}-decisions-step{step}")


def _jump(to: int) -> None:
    state.set_param(state.STEP, to)


# ----------------------------------------------------------------------------------- attention
st.subheader("Base-model attention")
att_steps = qs.table_steps(path, ver, "attention")
if att_steps.size == 0:
    why, elsewhere = q.missing_attention(run.manifest, "attention")
    st.info(why)
    if elsewhere:
        widgets.nav_link(f"Open step {step} of {elsewhere}", "step", run=elsewhere, step=step)
else:
    att = qs.attention_at(path, ver, step) if step in set(att_steps.tolist()) else None
    if att is None or att.empty:
        near = qs.nearest(att_steps, step)
        shown = ", ".join(map(str, att_steps[:12].tolist())) + (" ..." if att_steps.size > 12 else "")
        st.info(f"No attention recorded at step {step}. It was recorded at {att_steps.size} steps: {shown}.")
        st.button(f"Jump to step {near}", on_click=_jump, args=(near,), key="si_jump_att")
    else:
        scale = st.radio("colour scale", charts_step.ATTENTION_SCALES, horizontal=True, key="si_att_scale",
                         help="log: mass on a log scale; rank: order of the entries within each layer; "
                              "linear: the mass itself (the newest entries take most of the range)")  # fmt: skip
        st.plotly_chart(charts_step.attention_heatmap(att, scale), key="si_attention")
        export.download_buttons(att, f"{run.name}-attention-step{step}", key="si_att")


st.markdown("**By layer and head** (recomputed at this step)")
st.caption("The recording keeps the base model's attention averaged over heads, on some steps only, and "
           "LensNet's summed over its queries. This rebuilds the step and re-runs the run's model and LensNet "
           "on it in the background (about 10 s for the default model on a 2-core CPU), at any step; the "
           "result is kept for the step.")  # fmt: skip
detail_status, detail = attention.detail_state(path, step)
detail_why_not = jobs.cannot_rerun(run.manifest)
if detail_status != "done":
    st.button("Compute the attention by head" if detail_status != "running" else "Computing ...",
              on_click=attention.start_detail, args=(path, step), key="si_detail_go",
              disabled=bool(detail_why_not) or detail_status == "running", help=detail_why_not)  # fmt: skip
if detail_why_not:
    st.info(f"Run `{run.name}` cannot be re-run: {detail_why_not}.")
elif detail_status == "running":
    widgets.wait_for_job(attention.detail_state, (path, step),
                         lambda stage: f"Computing the attention of step {step} in the background: "
                                       f"{stage or 'starting'} ...")  # fmt: skip
elif detail_status == "failed":
    st.warning(f"Computing the attention of step {step} failed: {detail}")
elif detail_status == "done":
    meta = detail.attrs.get("meta", {})
    bs = int(run.knob("tree.block_size", 32))
    heads = qs.attention_detail_rows(detail, "heads", bs)
    c_layer, c_head, c_scale = st.columns([1, 1, 2])
    layer = c_layer.selectbox("layer", [None, *range(int(meta.get("layers", 0)))], key="si_detail_layer",
                              format_func=lambda v: "every layer" if v is None else f"layer {v}")  # fmt: skip
    head = c_head.selectbox("head", [None, *range(int(meta.get("heads", 0)))], key="si_detail_head",
                            format_func=lambda v: "mean of the heads" if v is None else f"head {v}")  # fmt: skip
    d_scale = c_scale.radio("colour scale", charts_step.ATTENTION_SCALES, horizontal=True, key="si_detail_scale")
    shown, rows = qs.heads_view(heads, layer, head)
    st.plotly_chart(charts_step.attention_heatmap(shown, d_scale, rows=rows), key="si_detail_heads")
    export.download_buttons(shown, f"{run.name}-attention-heads-step{step}", key="si_detail_heads_dl")
    st.caption(f"The newest block's {meta.get('queries', '?')} queries on the WC after the step's edits; "
               f"{meta.get('seconds', '?')} s on {meta.get('device', '?')}.")  # fmt: skip

st.subheader("LensNet cross-attention")
lens_by_query = pd.DataFrame()
if detail_status == "done":
    lens_by_query = qs.attention_detail_rows(detail, "lens", int(run.knob("tree.block_size", 32)))
if not lens_by_query.empty:
    diff = detail.attrs["meta"].get("lens_max_abs_diff") or 0.0
    st.markdown("**By query** (recomputed at this step: where each of LensNet's queries looked, last layer, "
                "heads averaged)")  # fmt: skip
    l_scale = st.radio("colour scale", charts_step.ATTENTION_SCALES, horizontal=True, key="si_lens_scale")
    st.plotly_chart(charts_step.attention_heatmap(lens_by_query, l_scale, rows="query"), key="si_lens_queries")
    export.download_buttons(lens_by_query, f"{run.name}-lens-attention-queries-step{step}", key="si_lens_q_dl")
    st.caption(f"Queries: the newest gists, then the newest block's and the tail's tokens. LensNet's scores on "
               f"the rebuilt step differ from the recorded ones by at most {diff:.2g}.")  # fmt: skip
lens_steps = qs.table_steps(path, ver, "lens_attention")
if lens_steps.size == 0:
    why, elsewhere = q.missing_attention(run.manifest, "lens_attention")
    st.info(why)
    if elsewhere:
        widgets.nav_link(f"Open step {step} of {elsewhere}", "step", run=elsewhere, step=step)
else:
    lens = qs.lens_attention_at(path, ver, step)
    if lens.empty:
        near = qs.nearest(lens_steps, step)
        st.info(f"No LensNet attention recorded at step {step}.")
        st.button(f"Jump to step {near}", on_click=_jump, args=(near,), key="si_jump_lens")
    else:
        st.plotly_chart(charts_step.lens_attention_bars(lens), key="si_lens")
        export.download_buttons(lens, f"{run.name}-lens-attention-step{step}", key="si_lens_dl")


# --------------------------------------------------------------------------------------- probe
st.subheader("Probe: the scorer against the truth")
st.caption("For the top-k candidates (half the highest-scored, half the lowest), the base model's NLL of the "
           "next 32 tokens after moving each one level (a block collapsed to its gist, a gist expanded): "
           "the counterfactual LensNet is trained on. Runs the run's model in the background (about 30 s for "
           "the default model on a 2-core CPU); the result is kept for this step.")  # fmt: skip


def _start_probe(path: str, step: int) -> None:
    probe.start_probe(path, step, int(st.session_state.get("si_probe_k", probe.TOP_K)))


status, detail = probe.probe_state(path, step)
why_not = jobs.cannot_rerun(run.manifest)
c_k, c_go = st.columns([1, 3], vertical_alignment="bottom")
c_k.number_input("top-k", 2, 64, probe.TOP_K, step=2, key="si_probe_k", help="entries probed")
label = {"none": "Probe this step", "failed": "Probe this step", "running": "Probing ..."}.get(status, "Probe again")
c_go.button(label, on_click=_start_probe, args=(path, step), key="si_probe_go", disabled=bool(why_not) or
            status == "running", help=why_not)  # fmt: skip
if why_not:
    st.info(f"Run `{run.name}` cannot be probed: {why_not}.")
elif status == "running":
    widgets.wait_for_job(
        probe.probe_state,
        (path, step),
        lambda stage: f"Probing step {step} in the background: {stage or 'starting'} ...",
    )
elif status == "failed":
    st.warning(f"The probe of step {step} failed: {detail}")
elif status == "done":
    meta = detail.attrs.get("meta", {})
    names = {"raw_score": "raw (what LensNet predicts)", "score": "final (the allocator's input)"}
    which = st.radio("scorer's score", list(names), horizontal=True, key="si_probe_score", format_func=names.get)
    st.plotly_chart(charts_step.probe_scatter(detail, which), key="si_probe")
    st.caption(f"{len(detail)} of {meta.get('candidates', '?')} editable entries probed, horizon "
               f"{meta.get('horizon', '?')} tokens, {meta.get('seconds', '?')} s on {meta.get('device', '?')}; "
               f"unedited WC's NLL {detail['nll_base'].iloc[0]:.4f}.")  # fmt: skip
    table = detail.drop(columns=["step"])
    table.insert(0, "node", q.node_labels(table["node_id"], int(run.knob("tree.block_size", 32))))
    st.dataframe(table[[*table.columns.drop("node_id"), "node_id"]], hide_index=True, key="si_probe_table")
    export.download_buttons(detail, f"{run.name}-probe-step{step}", key="si_probe_dl")
