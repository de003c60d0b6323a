"""Command line of the training data: `python -m studio.train corpus [--out DIR] [--stdlib DIR]`.

  corpus     build the stdlib corpus folder (deterministic train/validation/test split)

GistNet and LensNet have their own commands (`python -m studio.train.gistnet_train`,
`python -m studio.train.lensnet_train`). Errors a user can cause print one line, `error: ...`, and
exit with 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m studio.train", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus", help="build the corpus folder")
    c.add_argument("--out", default="runs/train/corpus")
    c.add_argument("--stdlib", default="", help="standard-library folder (default: this Python's)")
    args = p.parse_args(argv)
    try:
        from studio.train.corpus import CorpusConfig, build_corpus

        m = build_corpus(CorpusConfig(stdlib=args.stdlib), Path(args.out))
        print(json.dumps({"out": args.out, "python": m["python"], "totals": m["totals"]}))
    except (ValueError, OSError) as err:
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
