"""`python -m engine attention`: the step is rebuilt exactly, so the base model's attention by head
averages to the attention the recorder kept, LensNet's scores are the recorded raw scores and its
attention by query sums to the recorded per-entry mass; any step works, not only the recorded ones;
what cannot be rebuilt is one line."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from studio.attention_detail import attention_detail, detail_meta
from telemetry import Run
from tests.cli_fixtures import SAMPLE, engine

TEXT = SAMPLE.read_text()[:4000]
EVERY = 5  # session.attention_every of the recording


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    d = tmp_path_factory.mktemp("attention_detail")
    (d / "input.txt").write_text(TEXT)
    # LensNet (random-initialised on the tiny model, seeded: the rebuild makes the same one) edits,
    # so the allocator state and the WC after the edits matter.
    r = engine("record", "--quiet", "--model", "tiny", "--input", str(d / "input.txt"), "--out", str(d / "rec"),
               "--scorer", "lensnet", "--set", "wc.w_max=600", "--set", f"session.attention_every={EVERY}",
               "--set", "session.compute_nll=false")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return d / "rec"


def _edited_step(run: Run) -> int:
    """A step that recorded attention and applied edits (its attention is on the WC after them)."""
    s = run.table("steps", columns=["step", "n_applied"]).to_pandas()
    hit = s[(s["n_applied"] > 0) & (s["step"] % EVERY == 0) & (s["step"] > 20)]
    assert not hit.empty
    return int(hit["step"].iloc[0])


def test_heads_average_to_the_recorded_attention_and_lensnet_is_the_recorded_one(recorded):
    run = Run(recorded)
    step = _edited_step(run)
    t = attention_detail(recorded, step, device="cpu")
    d, meta = t.to_pandas(), detail_meta(t)
    heads = d[d["kind"] == "heads"]
    assert heads["head"].nunique() == meta["heads"] and heads["layer"].nunique() == meta["layers"]
    mean = heads.groupby(["layer", "node_id"])["mass"].mean().reset_index()
    rec = run.table("attention", where=f"step = {step}").to_pandas()
    both = rec.merge(mean, on=["layer", "node_id"], how="outer", suffixes=("_rec", "_heads"))
    assert len(both) == len(rec) == len(mean)  # the same entries: the WC after the step's edits
    np.testing.assert_allclose(both["mass_heads"], both["mass_rec"], atol=1e-6)
    sums = heads.groupby(["layer", "head"])["mass"].sum()
    np.testing.assert_allclose(sums, 1.0, atol=1e-4)  # every head's attention, tail included
    # LensNet: the scores it gives the rebuilt view are the recorded ones; its queries' attention sums
    # (over the queries) to the mass the recorder kept for round 0.
    assert meta["lens_max_abs_diff"] is not None and meta["lens_max_abs_diff"] < 1e-5
    lens = d[d["kind"] == "lens"]
    per_query = lens.groupby("query")["mass"].sum()
    np.testing.assert_allclose(per_query, 1.0, atol=1e-4)
    got = lens.groupby("node_id")["mass"].sum()
    want = run.table("lens_attention", where=f"step = {step} AND iteration = 0").to_pandas().set_index("node_id")
    np.testing.assert_allclose(got.reindex(want.index), want["mass"], rtol=1e-4, atol=1e-6)
    labels = lens.drop_duplicates("query")["query_label"].tolist()
    seen = run.table("steps", where=f"step = {step}")["tokens_seen"][0].as_py()
    assert labels[-1].startswith(f"token {seen - 1}:")  # the last query is the newest token read


def test_any_step_works_and_the_cli_writes_the_file(recorded, tmp_path):
    run = Run(recorded)
    step = _edited_step(run) + 1  # a step the recorder kept no attention for
    assert run.table("attention", where=f"step = {step}").num_rows == 0
    out = tmp_path / "detail" / "att.parquet"
    r = engine("attention", str(recorded), "--step", str(step), "--out", str(out), "--quiet", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    t = pq.read_table(out)
    assert detail_meta(t)["step"] == step and json.loads(r.stdout)["rows"] == t.num_rows > 0
    assert not list(out.parent.glob("*.progress")) and not list(out.parent.glob("*.tmp"))

    r = engine("attention", str(recorded), "--step", "100000", "--quiet", "--device", "cpu")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "step 100000 has no recorded working context" in lines[0]
