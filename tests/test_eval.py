"""`engine eval` on the tiny model: the JSON contract, the sampled NLL steps, the table maths, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from contract import SCORER_NAMES, apply_overrides
from engine import build_engine
from studio import EvalConfig, across_documents, cli, eval_run_config, policy_table
from studio.eval import _StepNLL

SAMPLE = Path(__file__).resolve().parent / "data" / "sample.txt"
TEXT = SAMPLE.read_text()
SMALL = ["--model", "tiny", "--set", "wc.w_max=320", "--set", "session.max_tokens=1280", "--nll-every", "4",
         "--gist-samples", "8", "--gist-horizon", "16", "--quiet", "--device", "cpu"]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_eval_json_has_every_policy_and_the_gist_numbers(capsys):
    assert cli.main(["eval", "--input", str(SAMPLE), *SMALL]) == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    assert res["w_max"] == 320 and isinstance(res["w_max"], int)
    assert res["tokens"] == 1280 and isinstance(res["tokens"], int)
    assert set(SCORER_NAMES) <= set(res["policies"])
    assert {"full", "window"} <= set(res["policies"])  # the tiny model's context holds the whole history
    for name, row in res["policies"].items():
        assert isinstance(row["nll"], float) and 0 < row["nll"] < 20, name
    blocks = {res["policies"][p]["blocks"] for p in SCORER_NAMES}
    assert blocks == {len(range(0, 1280 // 32 - 1, 4))}  # every 4th step (none after the last), the same for all
    assert list(res["documents"]) == [str(SAMPLE)] and set(res["across_documents"]) >= set(SCORER_NAMES)
    assert set(res["gist"]) >= {"gist", "drop", "mean_pool"}
    assert all(isinstance(res["gist"][k], float) for k in ("gist", "drop", "mean_pool"))
    # An untrained GistNet is a mean-pool: the two must agree exactly.
    assert res["gist"]["gist"] == pytest.approx(res["gist"]["mean_pool"], abs=1e-5)
    assert res["weights"]["gistnet"] == "random-init"
    assert "policy" in cap.err and "lensnet" in cap.err and "gist quality" in cap.err


@pytest.mark.parametrize("scorer", ["recency", "attention"])
def test_nll_every_measures_only_every_nth_step(scorer):
    """`session.nll_every` measures the same steps whatever the policy (the attention scorer runs the
    model every step, but reports NLL only on the cadence)."""
    cfg = apply_overrides(eval_run_config(["wc.w_max=320"]), [f"scorer.name={scorer}", "session.baselines=true",
                                                              "session.nll_every=3"])  # fmt: skip
    eng = build_engine(cfg, "tiny", "cpu")
    sink = _StepNLL()
    eng.session(sink, "t").run([TEXT[:1600]])
    assert sink.tokens == 1600
    assert sorted(sink.rows) == [32 * (s + 1) for s in range(0, 1600 // 32 - 1, 3)]
    assert all(full is not None and win is not None for _, full, win in sink.rows.values())


def test_across_documents_spread_and_lensnet_differences():
    per_doc = {"a": {"lensnet": {"nll": 2.0}, "recency": {"nll": 2.5}},
               "b": {"lensnet": {"nll": 3.0}, "recency": {"nll": 3.1}},
               "c": {"lensnet": {"nll": 1.0}, "recency": {"nll": 0.9}}}  # fmt: skip
    out = across_documents(per_doc)
    assert out["across_documents"]["recency"]["mean"] == pytest.approx(6.5 / 3)
    assert out["across_documents"]["lensnet"]["std"] == pytest.approx(1.0)
    v = out["lensnet_vs"]["recency"]
    assert v["mean_diff"] == pytest.approx((-0.5 - 0.1 + 0.1) / 3) and v["lower_on"] == 2 and v["documents"] == 3
    assert v["std_diff"] == pytest.approx(float(np.std([-0.5, -0.1, 0.1], ddof=1)))
    assert "lensnet" not in out["lensnet_vs"]


def test_policy_table_weights_by_tokens_and_keeps_references_apart():
    # rows: (text, cursor, block tokens, nll, nll_full, nll_window)
    rows = {
        "recency": [("a", 32, 32, 2.0, None, None), ("a", 64, 16, 5.0, None, None)],
        "lensnet": [("a", 32, 32, 1.0, None, None), ("a", 64, 16, 4.0, None, None)],
    }
    base = [("a", 32, 32, 2.0, 1.5, 2.5), ("a", 64, 16, 5.0, None, 6.0)]
    t = policy_table(rows, base, w_max=64)
    assert t["recency"]["nll"] == pytest.approx((2 * 32 + 5 * 16) / 48)
    assert t["lensnet"]["delta_vs_recency"] == pytest.approx(-1.0)
    assert t["lensnet"]["nll_budget_bound"] == pytest.approx(4.0)  # only cursor >= w_max
    assert t["lensnet"]["nll_where_full_fits"] == pytest.approx(1.0)  # only where `full` was measured
    assert t["full"] == pytest.approx(
        {"nll": 1.5, "nll_where_full_fits": 1.5, "blocks": 1, "delta_vs_recency": 1.5 - 3.0}
    )
    assert t["window"]["nll"] == pytest.approx((2.5 * 32 + 6.0 * 16) / 48)


def test_eval_config_and_bad_inputs_fail_with_one_line(tmp_path, capsys):
    with pytest.raises(ValueError, match="policies"):
        EvalConfig(policies=("nope",))
    assert cli.main(["eval", "--input", str(tmp_path / "missing.txt"), *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: input file not found")
    assert cli.main(["eval", "--input", str(SAMPLE), *SMALL, "--policies", "recency,bogus"]) == 2
    assert capsys.readouterr().err.startswith("error: eval policies must be among")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny Hugging Face folder (Llama + a 300-token BPE) to put beside GistNet/LensNet files."""
    from tests.hf_fixtures import llama_folder

    return llama_folder(tmp_path_factory.mktemp("model"), [TEXT], vocab_size=300)


def test_corrupt_shipped_weights_give_one_error_line(model_folder, capsys):
    args = ["eval", "--input", str(SAMPLE), *SMALL[2:], "--model", str(model_folder)]
    for name, what in (("gistnet.safetensors", "GistNet"), ("lensnet.safetensors", "LensNet")):
        bad = model_folder / name
        bad.write_bytes(b"not a safetensors file")
        try:
            assert cli.main(args) == 2
            # (transformers may draw its weight-loading bar first; the error itself is one line)
            err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("error")]
            assert len(err) == 1 and err[0].startswith(f"error: {what} weights file") and "corrupt" in err[0]
        finally:
            bad.unlink()


def test_combine_unites_runs_and_refuses_different_texts(tmp_path, capsys):
    def run(policies, out, *extra):
        args = ["eval", "--input", str(SAMPLE), *SMALL, "--policies", policies, "--gist-samples", "0", *extra]
        assert cli.main(args) == 0
        out.write_text(capsys.readouterr().out)
        return json.loads(out.read_text())

    a = run("recency,sink,lensnet", tmp_path / "a.json")
    b = run("lensnet", tmp_path / "b.json", "--no-baselines")  # no reference pass: nothing to recompute
    assert "full" not in b["policies"] and "window" not in b["policies"] and "recency" not in b["policies"]
    # The blocks where the full history fits follow the session's rule without a baseline pass.
    assert b["policies"]["lensnet"] == {k: v for k, v in a["policies"]["lensnet"].items() if k != "delta_vs_recency"}
    assert cli.main(["eval", "--combine", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    both = json.loads(capsys.readouterr().out)
    assert set(both["policies"]) >= {"recency", "sink", "lensnet", "full", "window"}
    assert both["policies"]["lensnet"]["nll"] == b["policies"]["lensnet"]["nll"]
    assert both["lensnet_vs"]["recency"]["mean_diff"] == pytest.approx(
        b["policies"]["lensnet"]["nll"] - a["policies"]["recency"]["nll"], abs=1e-6
    )  # one document: its mean
    other = {**b, "tokens": b["tokens"] + 1}
    (tmp_path / "c.json").write_text(json.dumps(other))
    assert cli.main(["eval", "--combine", str(tmp_path / "a.json"), str(tmp_path / "c.json")]) == 2
    assert "different tokens" in capsys.readouterr().err
