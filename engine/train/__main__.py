"""Command line of the training scripts: `python -m engine.train COMMAND ...`.

  corpus     build the stdlib corpus folder (deterministic train/validation/test split)
  tokenizer  train the byte-level BPE on the corpus' train split and save it as a HF tokenizer folder
  base       train (or resume) the base LM and export it as a HF model folder
  eval-base  mean NLL (nats/token) of a HF model folder on corpus splits (JSON on stdout)

`base` takes a preset (`default`, or `tiny` for tests) and `--set field=value` for any field of
`BaseLMConfig`. Errors a user can cause print one line, `error: ...`, and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PRESETS = {
    # ~5M parameters; sized for a shared 2-core CPU and a ~40-minute budget (see models/README.md).
    "default": dict(
        hidden=256,
        layers=4,
        heads=4,
        kv_heads=2,
        intermediate=704,
        batch_size=2,  # 2 x 1024 tokens: on a shared CPU, more small steps beat fewer big ones
        micro_batch=2,
        eval_every=40,
        eval_tokens=16_384,
        final_eval_tokens=131_072,  # the first 128 windows of each split: minutes, not half an hour
        max_seconds=2700.0,
    ),
    # Seconds on any CPU: for tests and smoke runs.
    "tiny": dict(
        hidden=32,
        layers=2,
        heads=4,
        kv_heads=2,
        intermediate=64,
        seq_len=64,
        short_seq_len=32,
        batch_size=4,
        micro_batch=2,
        lr=1e-2,
        eval_every=5,
        eval_tokens=256,
        final_eval_tokens=512,
        log_every=5,
        bf16=False,
        threads=1,  # tiny matrices: a second thread only adds synchronisation
        max_steps=20,
    ),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.train", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus", help="build the corpus folder")
    c.add_argument("--out", default="runs/train/corpus")
    c.add_argument("--stdlib", default="", help="standard-library folder (default: this Python's)")
    t = sub.add_parser("tokenizer", help="train the BPE tokenizer")
    t.add_argument("--corpus", default="runs/train/corpus")
    t.add_argument("--out", default="runs/train/tokenizer")
    t.add_argument("--vocab-size", type=int, default=8192)
    b = sub.add_parser("base", help="train or resume the base LM")
    b.add_argument("--corpus", default="runs/train/corpus")
    b.add_argument("--tokenizer", default="runs/train/tokenizer", help="folder holding tokenizer.json")
    b.add_argument("--run-dir", default="runs/train/base", help="checkpoints and token cache (resumable)")
    b.add_argument("--out", default="models/default", help="where the finished HF folder goes")
    b.add_argument("--preset", default="default", choices=sorted(PRESETS))
    b.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    e = sub.add_parser("eval-base", help="NLL of a model folder on corpus splits")
    e.add_argument("--model", default="models/default")
    e.add_argument("--corpus", default="runs/train/corpus")
    e.add_argument("--run-dir", default="runs/train/base", help="where the token cache lives")
    e.add_argument("--splits", default="validation,test")
    e.add_argument("--max-tokens", type=int, default=0, help="first N tokens of each split; 0 = all")
    args = p.parse_args(argv)
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from engine.model import ModelLoadError
    from engine.train.common import CheckpointError

    try:
        if args.cmd == "corpus":
            from engine.train.corpus import CorpusConfig, build_corpus

            m = build_corpus(CorpusConfig(stdlib=args.stdlib), Path(args.out))
            print(json.dumps({"out": args.out, "python": m["python"], "totals": m["totals"]}))
        elif args.cmd == "tokenizer":
            from engine.train.corpus import read_split
            from engine.train.tokenizer import TokenizerConfig, save_tokenizer, train_tokenizer

            cfg = TokenizerConfig(vocab_size=args.vocab_size)
            tok = train_tokenizer((text for _, text in read_split(Path(args.corpus), "train")), cfg)
            save_tokenizer(tok, Path(args.out))
            print(json.dumps({"out": args.out, "vocab_size": tok.get_vocab_size()}))
        elif args.cmd == "base":
            from engine.train.base_lm import BaseLMConfig, train_base_lm
            from engine.train.knob_sets import apply_sets

            cfg = apply_sets(BaseLMConfig(**PRESETS[args.preset]), args.set)
            log = train_base_lm(cfg, Path(args.corpus), Path(args.tokenizer), Path(args.run_dir), Path(args.out))
            print(json.dumps({"out": args.out, "final_eval": log.get("final_eval"), "training": log.get("training")}))
        elif args.cmd == "eval-base":
            from engine.train.base_lm import evaluate_folder

            splits = [s for s in args.splits.split(",") if s]
            res = evaluate_folder(Path(args.model), Path(args.corpus), Path(args.run_dir), splits, args.max_tokens)
            print(json.dumps(res))
    except (CheckpointError, ModelLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
