"""Regenerate `sample_runs/`: the recordings a new user browses first, made by the default models.

    .venv/bin/python scripts/make_sample_runs.py [--model default] [--out sample_runs] [--only NAME ...]

Every run is a real `python -m engine record` (or `replay`) over real text, so the shipped runs are
what a user's own recordings look like. Inputs are written under `<out>/_inputs/` (folders starting
with `_` are not listed as runs) so that an exact replay can re-read them. Each run must stay under
10 MB; the script says so and fails if one does not. Deterministic given the model: the texts come
from the standard library of the running Python and the passkey from a fixed seed.

The runs (the default model, SmolLM2-135M with its trained GistNet and LensNet; w_max 1,024; the
next block's NLL every 4th step, with the full-context and recency baselines on those steps so that
the Metrics page shows ΔNLL against both):
- `code-<module>`: a long standard-library module (its first 16k tokens), lensnet;
- `passkey-16k`: the passkey recall scenario (`engine record --scenario passkey`: a fact planted at
  depth 0.3, asked for at the end; the manifest names the needle, which the Timeline marks), lensnet;
- `topics`: several documents on different topics concatenated (topic switches), lensnet;
- `compare-lensnet` and `compare-recency`: one text under both policies, for the Compare page;
- `_sweeps/samples-budget`: a knob sweep (`engine sweep`) of every run above over w_max x tau_expand x
  sharpen_gamma, for the Sweep page;
- `compare-lensnet-w768`: a fast replay of `compare-lensnet` at a smaller budget with a longer
  cooldown. (Hysteresis and sharpening alone change nothing on the default model's recordings: the
  shipped LensNet's scores stay under the thresholds, so every applied edit is a forced collapse;
  models/README.md.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MAX_MB = 10.0
STDLIB = Path(sysconfig.get_paths()["stdlib"])
# Every text is from the corpus's held-out test split (models/README.md), so the default models never
# trained on what the sample runs show.
CODE_MODULE = "tarfile.py"  # a long module, read end to end
TOPIC_FILES = ("asyncio/base_events.py", "pydoc:specialnames", "email/feedparser.py", "pydoc:specialnames@40000",
               "wsgiref/handlers.py")  # code, reference prose, code, prose, code  # fmt: skip
COMPARE_MODULE = "nntplib.py"
PASSKEY_FILLER = ("test/test_itertools.py", "idlelib/pyshell.py")
COMMON = ["--set", "wc.w_max=1024", "--set", "session.nll_every=4", "--set", "session.attention_every=16",
          "--set", "session.max_tokens=16384"]  # fmt: skip
BASELINES = ["--set", "session.baselines=true"]
REPLAY_KNOBS = ["wc.w_max=768", "allocator.cooldown_steps=6"]
SWEEP = "samples-budget"
SWEEP_GRID = ["wc.w_max=512,640,768,896,1024", "allocator.tau_expand=0.1,0.2,0.4", "allocator.sharpen_gamma=0.5,1,2"]


def _read(rel: str, limit_chars: int) -> str:
    """A stdlib file's text, or `pydoc:TOPIC[@offset]`: a documentation topic from `pydoc_data`."""
    if rel.startswith("pydoc:"):
        from pydoc_data.topics import topics

        name, _, offset = rel.removeprefix("pydoc:").partition("@")
        start = int(offset or 0)
        return topics[name][start : start + limit_chars]
    path = STDLIB / rel
    if not path.is_file():  # a Python without this file (zipfile became a package in 3.12)
        path = STDLIB / rel.replace("/__init__", "")
    return path.read_text(encoding="utf-8")[:limit_chars]


def inputs(out: Path) -> dict[str, Path]:
    """Write every input text under out/_inputs and return them by run name."""
    d = out / "_inputs"
    d.mkdir(parents=True, exist_ok=True)
    texts = {
        f"code-{CODE_MODULE.removesuffix('.py')}": _read(CODE_MODULE, 240_000),
        "topics": "".join(f"\n\n# ===== {rel} =====\n\n" + _read(rel, 16_000) for rel in TOPIC_FILES),
        "compare": _read(COMPARE_MODULE, 40_000),
        "passkey-filler": "".join(_read(rel, 100_000) for rel in PASSKEY_FILLER),
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = d / f"{name}.txt"
        paths[name].write_text(text, encoding="utf-8")
    return paths


def _engine(*args: str) -> None:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: engine {' '.join(args[:1])} failed: {r.stderr.strip().splitlines()[-1:]}")
    print(f"  {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def record(name: str, src: Path, out: Path, model: str, scorer: str, *extra: str) -> None:
    print(f"recording {name} ({scorer})", file=sys.stderr)
    _engine("record", "--quiet", "--overwrite", "--input", str(src), "--out", str(out / name), "--model", model,
            "--scorer", scorer, "--device", "cpu", *COMMON, *extra)  # fmt: skip
    relative_paths(out / name)


def relative_paths(run: Path) -> None:
    """Manifests name their input file and parent run by absolute path; shipped runs name them
    relative to the repository root, so that a clone anywhere finds them (exact replay, parent)."""
    m_path = run / "manifest.json"
    m = json.loads(m_path.read_text())
    changed = False
    # (a scenario run's input is its own scenario-input.txt; its filler is named in "scenario")
    for d, key in ((m, "input"), (m, "parent"), (m.get("scenario") or {}, "filler")):
        v = d.get(key)
        if isinstance(v, str) and Path(v).is_absolute() and Path(v).resolve().is_relative_to(REPO):
            d[key] = str(Path(v).resolve().relative_to(REPO))
            changed = True
    if changed:
        tmp = m_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(m, indent=2) + "\n")
        tmp.replace(m_path)


def mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default=str(REPO / "sample_runs"))
    ap.add_argument("--only", nargs="*", default=None, help="run names to regenerate (default: all)")
    ap.add_argument("--max-tokens", type=int, default=0, help="stop every recording after this many tokens (checks)")
    args = ap.parse_args()
    if args.max_tokens:
        COMMON.extend(["--set", f"session.max_tokens={args.max_tokens}"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = inputs(out)
    code = f"code-{CODE_MODULE.removesuffix('.py')}"
    passkey = ["--scenario", "passkey", "--length", "16384", "--depth", "0.3"]
    plan = {
        code: lambda: record(code, src[code], out, args.model, "lensnet", *BASELINES),
        "passkey-16k": lambda: record("passkey-16k", src["passkey-filler"], out, args.model, "lensnet", *passkey),
        "topics": lambda: record("topics", src["topics"], out, args.model, "lensnet", *BASELINES),
        "compare-lensnet": lambda: record("compare-lensnet", src["compare"], out, args.model, "lensnet", *BASELINES),
        "compare-recency": lambda: record("compare-recency", src["compare"], out, args.model, "recency", *BASELINES),
    }
    for name, make in plan.items():
        if args.only is None or name in args.only:
            make()
    replay = "compare-lensnet-w768"
    if args.only is None or replay in args.only:
        print(f"replaying {replay}", file=sys.stderr)
        shutil.rmtree(out / replay, ignore_errors=True)
        _engine("replay", str(out / "compare-lensnet"), "--out", str(out / replay),
                *[a for k in REPLAY_KNOBS for a in ("--set", k)])  # fmt: skip
    if args.only is None or SWEEP in args.only:  # the Sweep page's sample: every run above x a small grid
        print(f"sweeping {SWEEP}", file=sys.stderr)
        shutil.rmtree(out / "_sweeps" / SWEEP, ignore_errors=True)
        _engine("sweep", "--runs", str(out / "*"), "--out", str(out / "_sweeps" / SWEEP), "--quiet",
                *[a for g in SWEEP_GRID for a in ("--grid", g)])  # fmt: skip
    too_big = []
    for run in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("_")):
        relative_paths(run)
        size = mb(run)
        print(f"{run.name}: {size:.2f} MB", file=sys.stderr)
        if size > MAX_MB:
            too_big.append(f"{run.name} ({size:.1f} MB)")
    if too_big:
        sys.exit(f"error: sample runs over {MAX_MB:.0f} MB: {', '.join(too_big)}")


if __name__ == "__main__":
    main()
