"""Text page (AppTest): the document at a step is the recorded block texts laid over the recorded WC,
shaded by LOD, with the step's applied edits and a scenario's needle marked, text escaped, the data
downloadable, and a run without its text says how to get it."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from contract import DecisionsRecorded, EntriesRecorded, TextRecorded
from tests.app_fixtures import capture_downloads, clean, downloads, event_at, open_page, point_app_at, run_roots, texts
from tests.telemetry_fixtures import events, record


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    r = run_roots(tmp_path_factory.mktemp("app_text"))
    evs = events(4)
    record(r["samples"] / "no-text", [e for e in evs if not isinstance(e, TextRecorded)])
    hostile = [TextRecorded(e.step, e.node_id, e.start, e.end, [f"<script>alert({i})</script> & co\n" for i in
                                                                 e.node_id.tolist()]) if isinstance(e, TextRecorded)
               else e for e in evs]  # fmt: skip
    record(r["samples"] / "hostile", hostile)
    return r


@pytest.fixture(autouse=True)
def _env(monkeypatch, roots):
    point_app_at(monkeypatch, roots)


def _doc(at) -> str:
    """The rendered document: the page's largest HTML block."""
    return max((h.proto.body for h in at.get("html")), key=len)


def _block_text(i: int) -> str:
    return f"the whole text of block {i} é\n"  # what tests/telemetry_fixtures.py records for block i


def test_the_document_at_a_step_is_the_recorded_text_over_the_recorded_wc(roots, monkeypatch):
    files = capture_downloads(monkeypatch)
    at = open_page("text", run="samples/scenario", step=4)
    clean(at)
    e = event_at(roots["events"], EntriesRecorded, 4)
    dec = event_at(roots["events"], DecisionsRecorded, 4).decisions
    (csv, parquet, _), *more = downloads(at, files)
    assert not more
    pd.testing.assert_frame_equal(csv, parquet.replace("", np.nan), check_dtype=False)  # CSV: "" reads as missing
    assert parquet["node_id"].tolist() == e.node_id.tolist() and parquet["lod"].tolist() == e.lod.tolist()
    np.testing.assert_allclose(parquet["score"].to_numpy(), e.score, rtol=1e-6)
    bs = 32
    want = ["".join(_block_text(b) for b in range(s // bs, t // bs)) for s, t in zip(e.start, e.end, strict=True)]
    assert parquet["text"].tolist() == want
    # Applied edits: an expand names its gist, a collapse the gist its children fold into.
    applied = {(("expand", "collapse", "evict")[a], int(n)) for a, n, o in zip(dec.action, dec.node_id, dec.outcome,
                                                                               strict=True) if o == 0}  # fmt: skip
    assert applied and len(parquet[parquet["edit"] != ""]) >= len(applied)
    assert set(parquet.loc[parquet["edit"] != "", "edit"]) == {a for a, _ in applied}
    # The needle (tokens 64-80 in the fixture's manifest) lies in block 2, at full detail here.
    assert parquet.loc[parquet["needle"], "start"].tolist() == [64]
    tiles = {m.label: m.value for m in at.metric}
    detail = int(((e.end - e.start) * (e.lod == 0)).sum())
    assert tiles["tokens in full detail"] == f"{detail:,}" and tiles["entries"] == str(e.node_id.size)
    assert tiles["entries edited"] == str(int((parquet["edit"] != "").sum()))
    doc = _doc(at)
    spans = re.findall(r'<span title="([^"]*)" style="([^"]*)">', doc)
    assert len(spans) == e.node_id.size
    for (title, style), lod, edit, needle in zip(spans, e.lod, parquet["edit"], parquet["needle"], strict=True):
        assert ("rgba(244,162,89," in style) == (lod == 0)  # LOD0's Timeline colour, gists another
        assert ("outline:2px dashed #ff3fa4" in style) == bool(needle)
        assert ("outline:2px solid #e4572e" in style) == bool(edit and not needle)
        assert (edit in title) if edit else True
    for lod, text in zip(e.lod, want, strict=True):  # detail in full; a gist as its first line, marked
        if lod == 0:
            assert text in doc
        else:
            assert f"<i>{text.strip()} [32 tokens as one gist]</i>" in doc
    assert "Edited this step" in texts(at.markdown) and "passkey" in texts(at.caption)


def test_whole_text_mode_shows_every_gist_span_in_full(roots):
    at = open_page("text", run="samples/small", step=4)
    at.radio(key="tx_gists").set_value("whole text").run()
    clean(at)
    doc = _doc(at)
    assert "as one gist" not in doc
    e = event_at(roots["events"], EntriesRecorded, 4)
    for s in e.start.tolist():
        assert _block_text(s // 32) in doc


def test_folded_mode_keeps_detail_edits_and_needle_and_folds_the_other_gists(roots):
    at = open_page("text", run="samples/scenario", step=4)
    at.radio(key="tx_gists").set_value("folded").run()
    clean(at)
    doc = _doc(at)
    e = event_at(roots["events"], EntriesRecorded, 4)
    n_spans = len(re.findall(r"<span title=", doc))
    folds = re.findall(r"⋯ (\d+) gists?, tokens ([\d,]+)-([\d,]+)", doc)
    edited = set(re.findall(r"L\d #(\d+), tokens \d+-\d+, score [-\d.]+, (?:expand|collapse)", doc))
    plain_gists = [i for i, lod in enumerate(e.lod) if lod > 0 and str(i) not in edited]
    assert folds and sum(int(n) for n, _, _ in folds) == len(plain_gists)
    assert n_spans == e.node_id.size - len(plain_gists)
    assert "as one gist" not in doc or edited  # only an edited gist is still shown as its line


def test_text_is_escaped(roots):
    at = open_page("text", run="samples/hostile", step=2)
    clean(at)
    doc = _doc(at)
    assert "<script>" not in doc and "&lt;script&gt;alert(" in doc and "&amp; co" in doc


def test_a_run_without_its_text_says_how_to_get_it(roots):
    at = open_page("text", run="samples/no-text", step=1)
    clean(at)
    assert not at.get("html")
    msg = texts(at.info)
    assert "did not record its text" in msg and "python -m engine add-text" in msg and "no-text" in msg
