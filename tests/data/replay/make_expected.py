"""Regenerate the fast-replay fixture: a small recording and what replaying it must give.

    .venv/bin/python tests/data/replay/make_expected.py [--record]

`rec/` is a real recording: the tiny model, the random scorer (it thrashes), two scorer rounds per
step, 2,400 tokens of tests/data/sample.txt, no NLL. `--record` makes it again; otherwise it is kept,
because every expected table depends on its scores. `expected/` holds what the replay gives for each
case of `CASES` (knob sets, with every recorded round or the first only, and with half the recorded
scores dropped so that lookups fall back): its steps, decisions and entries tables, plus the
per-entry metrics of one case (locality, residency runs, coherence) on the rows in recorded order,
shuffled and cut to a third.

These files were made by the code that matched, bit for bit, the pre-optimisation replay loop, sink
and metrics that tests/test_replay_fast.py used to keep verbatim. Run this script only when a change
to the allocator or the replay is meant to change decisions, and review the diff of the expected
tables it writes. tests/test_replay_fast.py reads the case list from here.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from contract import apply_overrides  # noqa: E402
from studio import (  # noqa: E402
    Recording,
    load_recording,  # noqa: E402
    replay_fast,
)
from telemetry import (  # noqa: E402
    LAB_ENTRIES,
    ArrowSink,
    metrics,  # noqa: E402
)

REC, EXPECTED = HERE / "rec", HERE / "expected"
TABLES = ("steps", "decisions", "entries")
KNOB_SETS = [
    [],
    ["allocator.cooldown_steps=4", "allocator.hysteresis_margin=0.2", "allocator.sharpen_gamma=2.0",
     "allocator.tau_expand=0.3"],
    ["wc.w_max=300", "allocator.iterations=1"],
    ["allocator.iterations=3", "allocator.interp_gate=0.5", "allocator.max_edits=8"],
    ["allocator.shift_kernel=(0.25,0.25)", "allocator.tau_collapse=0.1", "wc.w_max=520"],
]  # fmt: skip
# case name -> (knob set, which recorded scores the replay sees)
CASES = {f"k{i}-{rounds}": (k, rounds) for i, k in enumerate(KNOB_SETS) for rounds in ("recorded", "round0")}
CASES["k1-half"] = (KNOB_SETS[1], "half")
METRICS_CASE = "k1-recorded"


def scores_of(rec: Recording, rounds: str) -> Recording:
    """The recording as a case sees it: every round, the first round only, or half its rows (seeded)."""
    if rounds == "recorded":
        return rec
    keep = rec.iteration == 0 if rounds == "round0" else np.random.default_rng(0).random(rec.step.size) < 0.5
    return replace(rec, step=rec.step[keep], iteration=rec.iteration[keep], node_id=rec.node_id[keep],
                   raw_score=rec.raw_score[keep])  # fmt: skip


def replay_tables(rec: Recording, case: str, **sink_kw) -> tuple[dict[str, pa.Table], int]:
    """(steps/decisions/entries of the replay of `case`, approximate lookups); timings dropped."""
    knobs, rounds = CASES[case]
    r = scores_of(rec, rounds)
    sink = ArrowSink(TABLES, **sink_kw)
    stats = replay_fast(r, apply_overrides(r.config, knobs), sink)
    out = {t: sink.table(t) for t in TABLES}
    out["steps"] = out["steps"].drop(["t_allocator_ms"])  # a timing
    return out, stats.approximate_lookups


def entry_variants(entries: pa.Table) -> dict[str, pa.Table]:
    """The entry rows the metrics are pinned on: in recorded order, shuffled (seeded), the first third."""
    return {
        "ordered": entries,
        "shuffled": entries.take(np.random.default_rng(0).permutation(entries.num_rows)),
        "third": entries.slice(0, entries.num_rows // 3),
    }


def entry_metrics(entries: pa.Table, decisions: pa.Table, tau: float) -> dict[str, pa.Table]:
    return {
        "locality": metrics.locality(entries),
        "residency_runs": metrics.residency_runs(entries),
        "coherence": metrics.coherence(entries, decisions, tau),
    }


def record() -> None:
    shutil.rmtree(REC, ignore_errors=True)
    cmd = [sys.executable, "-m", "engine", "record", "--quiet", "--model", "tiny",
           "--input", str(REPO / "tests" / "data" / "sample.txt"), "--out", str(REC), "--scorer", "random",
           "--set", "wc.w_max=400", "--set", "allocator.iterations=2", "--set", "session.compute_nll=false",
           "--set", "session.max_tokens=2400", "--set", "session.record_gists=false"]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--record", action="store_true", help="record rec/ again (changes every expected table)")
    args = ap.parse_args()
    if args.record or not REC.is_dir():
        record()
    rec = load_recording(REC)
    shutil.rmtree(EXPECTED, ignore_errors=True)
    lookups = {}
    for case in CASES:
        tables, lookups[case] = replay_tables(rec, case)
        (EXPECTED / case).mkdir(parents=True)
        for t, data in tables.items():
            pq.write_table(data, EXPECTED / case / f"{t}.parquet", compression="zstd")
    pq.write_table(pa.table({"case": list(lookups), "approximate_lookups": list(lookups.values())}),
                   EXPECTED / "lookups.parquet")  # fmt: skip
    tables, _ = replay_tables(rec, METRICS_CASE, columns={"entries": LAB_ENTRIES})
    tau = apply_overrides(rec.config, CASES[METRICS_CASE][0]).allocator.tau_expand
    for variant, entries in entry_variants(tables["entries"]).items():
        for name, data in entry_metrics(entries, tables["decisions"], tau).items():
            pq.write_table(data, EXPECTED / f"metrics-{variant}-{name}.parquet")
    print(f"wrote {EXPECTED.relative_to(REPO)}: {len(CASES)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
