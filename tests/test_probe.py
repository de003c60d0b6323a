"""`python -m engine probe`: the state a step recorded is rebuilt exactly (the unedited WC's NLL is the
recorded one), each probed edit's utility is LensNet's label, the candidates are the ranking's two
ends, and what cannot be probed is one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from studio.probe import probe_meta, probe_step, spearman
from telemetry import Run
from tests.cli_fixtures import SAMPLE, engine

TEXT = SAMPLE.read_text()[:4000]
# A budget the first ~60 steps fit in and thresholds no recency score passes: those steps edit nothing
# (their recorded NLL was measured after the very WC a probe rebuilds); later ones collapse, so gists exist.
RECORD_SETS = ("--set", "wc.w_max=2000", "--set", "allocator.tau_expand=0.99", "--set", "allocator.tau_collapse=0.99",
               "--set", "session.nll_every=1")  # fmt: skip


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe")
    (d / "input.txt").write_text(TEXT)
    r = engine("record", "--quiet", "--model", "tiny", "--input", str(d / "input.txt"), "--out", str(d / "rec"),
               "--scorer", "recency", *RECORD_SETS)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return d / "rec"


def _quiet_step(run: Run) -> int:
    """A step with no applied edit: its recorded NLL was measured after the very WC the probe rebuilds."""
    s = run.table("steps", columns=["step", "n_applied", "nll"]).to_pandas()
    quiet = s[(s["n_applied"] == 0) & s["nll"].notna() & (s["step"] > 40)]
    assert not quiet.empty
    return int(quiet["step"].iloc[0])


def test_probe_rebuilds_the_recorded_state_exactly(recorded):
    run = Run(recorded)
    step = _quiet_step(run)
    rows = probe_step(recorded, step, top_k=4, horizon=32, device="cpu").to_pandas()
    recorded_nll = run.table("steps", columns=["nll"], where=f"step = {step}")["nll"][0].as_py()
    assert rows["nll_base"].iloc[0] == pytest.approx(recorded_nll, rel=2e-4)  # the same WC, tree and tokens


def test_each_probed_edit_is_measured_as_lensnets_label(recorded):
    run, step = Run(recorded), 110
    t = probe_step(recorded, step, top_k=6, horizon=16, device="cpu")
    rows = t.to_pandas()
    assert len(rows) == 6 and rows["step"].eq(step).all() and {"expand", "collapse"} <= set(rows["edit"])
    bs = 32
    for r in rows.itertuples():
        finer = r.edit == "expand"
        assert finer == (r.lod > 0)  # LOD0 collapses, gists expand
        coarse, fine = (r.nll_base, r.nll_edited) if finer else (r.nll_edited, r.nll_base)
        assert r.utility == pytest.approx((coarse - fine) / (bs - 1), rel=1e-4, abs=1e-7)
        assert r.delta_nll == pytest.approx(r.nll_edited - r.nll_base, abs=1e-6)
    # The candidates are the two ends of the recorded ranking among the entries the allocator may edit.
    e = run.table("entries", columns=["node_id", "score", "end"], where=f"step = {step} AND iteration = 0").to_pandas()
    meta = probe_meta(t)
    editable = e.sort_values("end").iloc[: meta["candidates"]]
    ranked = editable.sort_values("score", ascending=False, kind="stable")["node_id"].tolist()
    assert set(rows["node_id"]) == set(ranked[:3]) | set(ranked[-3:])
    assert meta["horizon"] == 16 and meta["step"] == step and meta["model"].startswith("tiny")
    want = spearman(rows["raw_score"].to_numpy(np.float64), rows["utility"].to_numpy(np.float64))
    assert meta["spearman_raw"] == pytest.approx(want)


def test_probe_cli_writes_its_file_and_says_what_cannot_be_probed(recorded, tmp_path):
    out = tmp_path / "probe" / "step.parquet"
    r = engine("probe", str(recorded), "--step", "50", "--top-k", "4", "--out", str(out), "--quiet", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    t = pq.read_table(out)
    assert t.num_rows == 4 and probe_meta(t)["step"] == 50 and json.loads(r.stdout)["rows"] == 4
    assert not list(out.parent.glob("*.progress")) and not list(out.parent.glob("*.tmp"))

    last = Run(recorded).n_steps() - 1
    missing_model = tmp_path / "no-model"
    shutil.copytree(recorded, missing_model)
    m = json.loads((missing_model / "manifest.json").read_text())
    m["model"]["id"] = str(tmp_path / "gone-model")
    (missing_model / "manifest.json").write_text(json.dumps(m))
    for args, message in [
        ((str(recorded), "--step", str(last)), f"step {last} is the last one"),
        ((str(recorded), "--step", "100000"), "step 100000 has no recorded working context"),
        ((str(missing_model), "--step", "50"), f"model folder {tmp_path / 'gone-model'} does not exist"),
        ((str(recorded), "--step", "50", "--top-k", "0"), "top_k and horizon must be >= 1"),
    ]:
        r = engine("probe", *args, "--quiet", "--device", "cpu")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (
            r.stderr
        )


def test_spearman_is_the_rank_correlation_with_ties():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    # ties share their mean rank: ranks (0, 1.5, 1.5, 3) against (0, 1, 2, 3)
    a, b = np.array([0.0, 1.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.0, 3.0])
    ra = np.array([0, 1.5, 1.5, 3])
    assert spearman(a, b) == pytest.approx(np.corrcoef(ra, np.arange(4))[0, 1])
    assert spearman(np.ones(4), b) is None and spearman(x[:2], x[:2]) is None
    assert spearman(np.array([1.0, np.nan, 2.0, 3.0]), np.array([1.0, 5.0, 2.0, 3.0])) == pytest.approx(1.0)
