"""Record page: start a recording of a text (file path, pasted text or upload) in the background.

The page collects the input, model, scorer and knobs, hands them to `app.recorder.start` (every
check and the process itself live there) and shows the recordings started from the app, with their
progress while they record and a link to follow each on the Live page.
"""

from __future__ import annotations

import datetime as dt

import streamlit as st

from app import paths, recorder
from app.lab import choices, defaults, knob_widget
from app.widgets import link

SOURCES = ("file path", "paste text", "upload a file")
# Knobs offered as inputs (one name each); any other goes in the free-form box.
# (knob, value the page starts with): a budget the default model was trained and measured at, and the
# base model's NLL every 8th step (scoring and focus never need it), so that a CPU records quickly.
QUICK_KNOBS = (("wc.w_max", 1024), ("session.nll_every", 8), ("session.refocus_every", 32), ("session.max_tokens", 0))


def _status_line(info: dict) -> None:
    state, name = info["state"], info["name"]
    live = f"[Follow it on the Live page]({link('live', run=info['ref'])})"
    counts = f"step {info['steps']:,}, {info['tokens']:,} tokens"
    if info["error"] and not info["running"] and state != "complete":
        st.error(f"{name}: {info['error']}")
    elif state == "complete":
        st.success(f"{name}: complete, {counts}. [Open it on the Runs page]({link('runs', run=info['ref'])})")
    elif state in ("starting", "recording"):
        st.info(f"{name}: {state}, {counts}. {live}")
        if info["last_line"]:
            st.caption(info["last_line"])
    else:
        st.warning(f"{name}: {state}, {counts}")


@st.fragment(run_every=2.0)
def _progress() -> None:
    names = recorder.jobs()[:10]
    if not names:
        st.caption("No recordings started from the app yet.")
        return
    for name in names:
        _status_line(recorder.job_status(name))


def _inputs() -> dict:
    c1, c2 = st.columns(2)
    if "rec:name" not in st.session_state:  # once: a default that changed every second would reset the input
        st.session_state["rec:name"] = f"rec-{dt.datetime.now():%Y%m%d-%H%M%S}"
    name = c1.text_input("run name", key="rec:name", help=f"a new folder under {paths.runs_dir()}")
    source = c2.radio("input", SOURCES, horizontal=True, key="rec:source")
    got: dict = {"name": name, "source": source}
    if source == SOURCES[0]:
        got["path"] = st.text_input("input file", key="rec:path",
                                    help="inside: " + ", ".join(map(str, paths.input_roots())))  # fmt: skip
    elif source == SOURCES[1]:
        got["text"] = st.text_area("text to record", key="rec:text", height=200)
    else:
        got["upload"] = st.file_uploader("text file", key="rec:upload")
    c1, c2, c3 = st.columns(3)
    model = c1.selectbox("model", ("default", "tiny", "local folder"), key="rec:model",
                         help="default: SmolLM2-135M with its trained GistNet and LensNet; tiny: a random "
                              "2-layer test model whose focus decisions are noise")  # fmt: skip
    if model == "local folder":
        model = c1.text_input("model folder", key="rec:model_path")
    got["model"] = model
    scorers, default = choices("scorer.name"), defaults()
    got["scorer"] = c2.selectbox("scorer.name", scorers, index=scorers.index(default["scorer.name"]), key="rec:scorer")
    got["device"] = c3.selectbox("device", ("auto", "cpu", "cuda"), key="rec:device")
    sets = []
    cols = st.columns(len(QUICK_KNOBS))
    for col, (knob, start) in zip(cols, QUICK_KNOBS, strict=True):
        w = knob_widget(knob)  # bounds and help from the knob's declaration
        v = col.number_input(knob, value=start, min_value=w.lo, max_value=w.hi, step=1, key=f"rec:{knob}", help=w.help)
        if v != default[knob]:
            sets.append(f"{knob}={int(v)}")
    # The NLL baselines (full context, recency window) make ΔNLL on the Metrics page; they cost a model
    # forward each per measured step, so they are a choice, not the default.
    base = st.toggle("session.baselines", value=bool(default["session.baselines"]), key="rec:baselines",
                     help=knob_widget("session.baselines").help)  # fmt: skip
    if base != default["session.baselines"]:
        sets.append(f"session.baselines={str(base).lower()}")
    extra = st.text_area("more knobs, one `section.field=value` a line", key="rec:sets", height=80)
    got["sets"] = sets + [ln.strip() for ln in extra.splitlines() if ln.strip()]
    return got


def _start(got: dict) -> None:
    name = got["name"].strip()
    try:
        recorder.check_name(name)  # name and knobs before writing any pasted text or upload to disk
        recorder.check_knobs(got["scorer"], got["sets"])
        if got["source"] == SOURCES[0]:
            inp = recorder.input_from_path(got.get("path", ""))
        elif got["source"] == SOURCES[1]:
            inp = recorder.input_from_text(name, got.get("text", ""))
        else:
            up = got.get("upload")
            if up is None:
                raise recorder.RecordError("no file uploaded")
            inp = recorder.input_from_upload(name, up.name, up.getvalue())
        job = recorder.start(name, inp, got["model"], got["scorer"], got["sets"], got["device"])
    except (recorder.RecordError, paths.PathRefused, OSError) as e:
        st.error(str(e).splitlines()[0])
        return
    ref = paths.run_ref(job.out)
    live = link("live", run=ref)
    st.success(f"Started recording {ref} (pid {job.pid}); log: {job.log}. [Follow it on the Live page]({live})")


def main() -> None:
    st.title("Record")
    st.caption("Stream a text through the engine and record every focus decision. "
               "The recording runs in the background; you can leave this page.")  # fmt: skip
    got = _inputs()
    if st.button("Start recording", key="rec:start", type="primary"):
        _start(got)
    st.subheader("Recordings started here")
    _progress()


main()
