"""The passkey scenario: cases are built as asked, the fact's span is right, and the eval reports every policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from contract import SCORER_NAMES
from engine import ByteTokenizer, PasskeyConfig, WorkingContext, passkey_cases
from studio import cli, fact_lod
from studio.train import tokenize_text

SAMPLE = Path(__file__).resolve().parent / "data" / "sample.txt"
TEXT = SAMPLE.read_text()
TOK = ByteTokenizer()


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_cases_have_the_asked_length_depth_and_fact_span():
    cfg = PasskeyConfig(lengths=(2000, 4000), depths=(0.0, 0.5, 1.0), seed=3)
    cases = passkey_cases(TEXT, TOK.encode, TOK.decode, cfg)
    assert [(c.length, c.depth) for c in cases] == [(n, d) for n in (2000, 4000) for d in (0.0, 0.5, 1.0)]
    for c in cases:
        ids = tokenize_text(c.text, TOK.encode)
        assert c.n_tokens == len(ids) and abs(c.n_tokens - c.length) <= 8
        fact = TOK.decode(ids[c.fact_start : c.fact_end].tolist())
        assert fact.count(c.passkey) == 2 and "passkey" in fact
        assert c.text.rstrip().endswith("the passkey is") and c.answer == " " + c.passkey
        assert len(c.passkey) == 5 and c.passkey[0] != "0"
        assert c.passkey not in c.text.replace(fact, "")  # the answer is only in the fact
    for n in (2000, 4000):
        starts = [c.fact_start for c in cases if c.length == n]
        assert starts == sorted(starts) and starts[0] <= 2 and starts[-1] > 0.6 * n  # depth is within the filler
    again = passkey_cases(TEXT, TOK.encode, TOK.decode, cfg)
    assert [c.text for c in again] == [c.text for c in cases]  # seeded
    assert len({c.passkey for c in cases}) == len(cases)


def test_short_filler_is_repeated_and_bad_configs_are_refused():
    c = passkey_cases("just a little filler text.\n", TOK.encode, TOK.decode, PasskeyConfig(lengths=(900,)))[0]
    assert abs(c.n_tokens - 900) <= 8
    with pytest.raises(ValueError, match="depths"):
        PasskeyConfig(depths=(1.5,))
    with pytest.raises(ValueError, match="lengths"):
        PasskeyConfig(lengths=(10,))
    with pytest.raises(ValueError, match="filler"):
        passkey_cases("   ", TOK.encode, TOK.decode, PasskeyConfig())


def test_fact_lod_reads_the_entries_over_the_fact():
    from engine import PasskeyCase

    case = PasskeyCase("", "", "1", 0, 0.0, 0, fact_start=40, fact_end=70)
    # blocks of 32: [0,32) LOD1, [32,64) LOD0, [64,96) LOD1, tail 96..100
    wc = WorkingContext(32, 2, 100, 0, np.array([1, 0, 1], np.int8), np.array([0, 1, 2], np.int64))
    assert fact_lod(wc, case) == 1
    wc0 = WorkingContext(32, 2, 100, 0, np.array([1, 0, 0], np.int8), np.array([0, 1, 2], np.int64))
    assert fact_lod(wc0, case) == 0
    evicted = WorkingContext(32, 2, 100, 64, np.array([1], np.int8), np.array([2], np.int64))
    assert fact_lod(evicted, case) == -1


def test_passkey_eval_reports_every_policy(capsys):
    argv = ["eval", "--scenario", "passkey", "--input", str(SAMPLE), "--model", "tiny", "--device", "cpu",
            "--set", "wc.w_max=640", "--lengths", "600,2000", "--depths", "0.05", "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    assert res["scenario"] == "passkey" and res["w_max"] == 640 and len(res["cases"]) == 2
    assert set(SCORER_NAMES) | {"window", "oracle", "full"} <= set(res["policies"])
    for row in res["policies"].values():
        assert 0 <= row["recovered"] <= 1 and 0 <= row["at_lod0"] <= 1 and row["nll"] > 0
    short, long = res["cases"]
    # 600 tokens fit the budget: recency keeps everything raw. At 2,000 an early fact is out of its window.
    assert short["results"]["recency"]["at_lod0"] and short["results"]["window"]["at_lod0"]
    assert not long["results"]["recency"]["at_lod0"] and long["results"]["recency"]["fact_lod"] >= 1
    assert "passkey recall" in cap.err
