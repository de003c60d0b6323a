"""A recording with the default model on this machine: wall time of `engine record`, as a user runs it.

Runs the real command line (`python -m engine record`, Parquet sink, progress bar off) on held-out
text from the corpus' test split: `--tokens` tokens at `wc.w_max` 1,024 with the base model's NLL
every 8th step (the issue's target: 16,384 tokens in at most 5 minutes on the 2-core CPU), then
the first `--every-step-tokens` tokens with NLL at every step, to report tokens/s for both. Each
run's wall time includes starting Python and loading the model, as a user would see it. Prints JSON.

    python bench/bench_record_default.py [--tokens 16384] [--every-step-tokens 4096] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TEXT = REPO / "runs" / "train" / "corpus" / "test" / "tarfile.py"  # test split: no net trained on it


def record(text: pathlib.Path, tokens: int, nll_every: int, out: pathlib.Path) -> dict:
    cmd = [sys.executable, "-m", "engine", "record", "--quiet", "--input", str(text), "--out", str(out),
           "--model", "default", "--device", "cpu", "--set", "wc.w_max=1024", "--set", f"session.nll_every={nll_every}",
           "--set", f"session.max_tokens={tokens}"]  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"error: engine record failed: {r.stderr.strip().splitlines()[-1:]}")
    m = json.loads((out / "manifest.json").read_text())
    return {"tokens": m["tokens"], "nll_every": nll_every, "wall_s": round(wall, 1),
            "tokens_per_s": round(m["tokens"] / wall, 1), "dtype": m["model"]["dtype"],
            "load_avg_1m": round(os.getloadavg()[0], 2)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--every-step-tokens", type=int, default=4096)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if not TEXT.is_file():
        sys.exit(f"error: {TEXT} is missing; build the corpus first: python -m studio.train corpus")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [record(TEXT, args.tokens, 8, pathlib.Path(tmp) / "every8"),
                record(TEXT, args.every_step_tokens, 1, pathlib.Path(tmp) / "every1")]  # fmt: skip
    out = {"input": str(TEXT.relative_to(REPO)), "runs": rows, "target_s": 300,
           "met": rows[0]["tokens"] >= args.tokens and rows[0]["wall_s"] <= 300}  # fmt: skip
    print(json.dumps(out, indent=1))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
