"""Step inspector page (AppTest): the WC table and score stages are the recorded entries, decisions
are the recorded ones, attention maps show the recorded mass, and steps or runs without them say so."""

from __future__ import annotations

import numpy as np
import pytest

from contract import OUTCOMES, AttentionRecorded, DecisionsRecorded, EntriesRecorded, LensAttention
from tests.app_fixtures import (
    charts,
    clean,
    decode,
    event_at,
    frame_with,
    open_page,
    point_app_at,
    run_roots,
    shown_rows,
    texts,
)
from tests.telemetry_fixtures import events, record


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    r = run_roots(tmp_path_factory.mktemp("app_step"))
    plain = [e for e in events(4) if not isinstance(e, AttentionRecorded | LensAttention)]
    record(r["samples"] / "plain", plain)
    return r


@pytest.fixture(autouse=True)
def _env(monkeypatch, roots):
    point_app_at(monkeypatch, roots)


def test_wc_table_and_score_stages_are_the_recorded_entries(roots):
    at = open_page("step_inspector", run="samples/small", step=2)
    clean(at)
    e = event_at(roots["events"], EntriesRecorded, 2)
    wc = frame_with(at, "preview", "raw_score")
    assert wc["node_id"].tolist() == e.node_id.tolist()
    assert wc["lod"].tolist() == e.lod.tolist() and wc["start"].tolist() == e.start.tolist()
    assert wc["cost"].tolist() == e.cost.tolist()
    for col in ("raw_score", "score_interp", "score_shift", "score"):
        np.testing.assert_allclose(wc[col].to_numpy(), getattr(e, col), rtol=1e-6)
    assert wc["preview"].tolist() == [f"block {i} é" for i in range(e.lod.size)]  # from the nodes table
    tiles = {m.label: m.value for m in at.metric}
    assert tiles["tokens read"] == "197" and tiles["entries"] == "6" and tiles["WC cost / w_max"] == "104/2048"
    stages = charts(at)[0]
    assert [t["name"] for t in stages["data"]] == [
        "raw (scorer)",
        "after interpolation",
        "after shift",
        "final (sharpened)",
    ]
    np.testing.assert_allclose(decode(stages["data"][0]["y"]), e.raw_score, rtol=1e-6)
    np.testing.assert_allclose(decode(stages["data"][3]["y"]), e.score, rtol=1e-6)


def test_decisions_of_the_step_with_their_reasons(roots):
    at = open_page("step_inspector", run="samples/small", step=4)
    clean(at)
    d = event_at(roots["events"], DecisionsRecorded, 4).decisions
    rows = shown_rows(d)
    table = frame_with(at, "outcome", "change")
    assert table["node_id"].tolist() == d.node_id[rows].tolist()
    assert table["outcome"].tolist() == [OUTCOMES[d.outcome[k]] for k in rows]
    assert "budget" in table["outcome"].tolist()  # the refused candidate keeps its reason


def test_attention_heatmap_on_a_recorded_step(roots):
    at = open_page("step_inspector", run="samples/small", step=2)
    clean(at)
    a = event_at(roots["events"], AttentionRecorded, 2)
    n = event_at(roots["events"], EntriesRecorded, 2).lod.size
    mass = np.stack([np.arange(n + 1) / 1000 + layer for layer in (0, 1)])  # layer + position / 1000
    assert a.mass.size == mass.size

    def heat():
        f = next(f for f in charts(at) if f["data"] and f["data"][0]["type"] == "heatmap")
        return decode(f["data"][0]["z"]), f["data"][0]

    # Log by default: the mass spans four decades here, and a linear scale would paint all but the
    # largest columns one colour. The hover keeps the mass itself.
    assert at.radio(key="si_att_scale").value == "log"
    z, trace = heat()
    assert z.shape == (2, n + 1)  # two layers; every entry and the raw tail
    np.testing.assert_allclose(z, np.log10(np.maximum(mass, 1e-6)), rtol=1e-6, atol=1e-6)  # float32 mass
    np.testing.assert_allclose(np.asarray(trace["customdata"])[..., 1].astype(float), mass, rtol=1e-6)
    at.radio(key="si_att_scale").set_value("rank").run()
    z, _ = heat()
    np.testing.assert_allclose(z, np.stack([np.linspace(0, 1, n + 1)] * 2), rtol=1e-6)  # mass grows with position
    at.radio(key="si_att_scale").set_value("linear").run()
    np.testing.assert_allclose(heat()[0], mass, rtol=1e-6)


def test_step_without_attention_names_the_steps_that_have_it_and_jumps(roots):
    at = open_page("step_inspector", run="samples/small", step=3)
    clean(at)
    assert "recorded at 4 steps: 0, 2, 4, 6" in texts(at.info)
    jump = at.button(key="si_jump_att")
    assert jump.label == "Jump to step 2"  # 2 and 4 are as near: the earlier one
    jump.click().run()
    clean(at)
    assert at.query_params["step"] == "2" and at.slider(key="step_scrubber").value == 2
    assert not any("No attention recorded" in i.value for i in at.info)


def test_run_without_attention_tables_says_so(roots):
    at = open_page("step_inspector", run="samples/plain", step=1)
    clean(at)
    info = texts(at.info)
    assert "This run recorded no base-model attention (record with `session.attention_every` above 0)." in info
    assert "No LensNet cross-attention in this run: its scorer is `recency`, and only `lensnet` has one." in info
    assert len(frame_with(at, "preview", "raw_score")) == event_at(events(4), EntriesRecorded, 1).lod.size


def test_decisions_read_applied_first_filter_and_hide_the_impossible(roots):
    """A step with two applied edits recorded after a refused one, and two candidates no allocator
    could apply (expand LOD0, collapse into LOD3 of a 2-level tree): the table opens on the applied
    edits in their order, hides the impossible two (and says how many), and filters by outcome."""
    import dataclasses

    from contract import make_decisions, nodes

    l1, l2 = int(nodes.node_id(1, 1)), int(nodes.node_id(2, 0))
    dec = make_decisions({
        "node_id": [int(nodes.node_id(0, 5)), l1, int(nodes.node_id(1, 3)), l2, int(nodes.node_id(3, 0))],
        "lod_from": [0, 1, 1, 1, 2], "lod_to": [-1, 0, 0, 2, 3], "action": [0, 0, 0, 1, 1],
        "score": [0.9, 0.8, 0.5, -0.7, -0.9], "outcome": [3, 0, 5, 0, 3], "forced": [False] * 5,
        "seq": [-1, 1, -1, 0, -1],
    })  # fmt: skip
    evs = [dataclasses.replace(e, decisions=dec) if isinstance(e, DecisionsRecorded) and e.step == 1 else e
           for e in events(3)]  # fmt: skip
    record(roots["samples"] / "edits", evs)
    at = open_page("step_inspector", run="samples/edits", step=1)
    clean(at)
    table = frame_with(at, "outcome", "change")
    assert table["node"].tolist() == ["L2 #0, tokens 0-1024", "L1 #1, tokens 32-64", "L1 #3, tokens 96-128"]
    assert table["outcome"].tolist() == ["applied", "applied", "budget"]
    assert "5 candidates, 2 applied; 2 impossible" in texts(at.markdown)
    at.toggle(key="si_dec_impossible").set_value(True).run()
    assert len(frame_with(at, "outcome", "change")) == 5
    at.multiselect(key="si_dec_outcome").set_value(["budget"]).run()
    assert frame_with(at, "outcome", "change")["node"].tolist() == ["L1 #3, tokens 96-128"]


def test_decision_filters_follow_the_step(roots):
    """All picked stays all on a step with other actions and outcomes (it showed an empty table when
    the first step's choices were kept); a narrowed choice keeps what the new step has."""
    at = open_page("step_inspector", run="samples/small", step=0)
    clean(at)
    for step in range(1, 8):
        at.slider(key="step_scrubber").set_value(step).run()
        clean(at)
        d = next(e.decisions for e in roots["events"] if isinstance(e, DecisionsRecorded) and e.step == step)
        want = {OUTCOMES[o] for o in d.outcome[shown_rows(d)]}
        assert set(at.multiselect(key="si_dec_outcome").value) == {OUTCOMES[o] for o in d.outcome}
        assert set(frame_with(at, "outcome", "change")["outcome"]) == want, step
    at.multiselect(key="si_dec_outcome").set_value(["applied"]).run()
    at.slider(key="step_scrubber").set_value(3).run()
    assert at.multiselect(key="si_dec_outcome").value == ["applied"]
    assert set(frame_with(at, "outcome", "change")["outcome"]) == {"applied"}


def test_a_replay_says_it_runs_no_model_and_links_to_the_run_it_replays(roots):
    """A replay re-plans with recorded scores: no attention of either kind, and the page says why and
    links to the same step of the run it replays (not "only lensnet records it" for a lensnet run)."""
    import json

    plain = roots["samples"] / "plain"
    replay = roots["samples"] / "plain_replay"
    record(replay, [e for e in events(4) if not isinstance(e, AttentionRecorded | LensAttention)])
    m = json.loads((replay / "manifest.json").read_text())
    (replay / "manifest.json").write_text(json.dumps({**m, "parent": str(plain)}))
    at = open_page("step_inspector", run="samples/plain_replay", step=1)
    clean(at)
    info = texts(at.info)
    for what in ("base-model attention", "LensNet cross-attention"):
        assert f"No {what} in this replay: it re-plans with the recorded scores and runs no model" in info
    assert "the run it replays, `samples/plain`, has what was recorded." in info
    assert "./step?run=samples%2Fplain&step=1" in texts(at.markdown) or any(
        link.proto.page == "step" for link in at.page_link
    )
