"""Command line over recorded runs: `python -m telemetry COMMAND ...` (scriptable, JSON or files out).

  metrics RUN_DIR                  headline metrics of a run (DESIGN section 4) as one JSON object
  export RUN_DIR --table NAME      one table, optionally projected and filtered, to CSV or Parquet
  list ROOT                        one JSON line per run folder under ROOT

Errors a user can cause (no such folder, not a run, a newer schema version, an unknown table or
column, a bad SQL filter, an unwritable output, a bad argument) print one line `error: ...` on
stderr and exit with 2. A part file the reader skips (unreadable, truncated, from another run, a
copy, a symbolic link: see `telemetry.reader.Run.parts`) is reported as a `warning: skipped ...`
line on stderr (and, for `metrics`, under the `problems` key), and `metrics` and `export` then exit
with 3: the output is written, but from part of the run.

This module only parses arguments and formats output: reading is `telemetry.reader` (a folder of
runs: `telemetry.runs`), the numbers are `telemetry.run_metrics`. Like the rest of `telemetry/` it
never imports torch, so it starts fast.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from telemetry import run_metrics
from telemetry.reader import Run
from telemetry.runs import RunReadError, list_runs
from telemetry.schema import TABLES, SchemaError
from telemetry.writer import MANIFEST

FORMATS = ("csv", "parquet")
SKIPPED = 3  # exit status: done, but the reader skipped part files (each named on stderr)
_CSV_BATCH = 65_536  # rows per CSV write: keeps the text buffer small on tables of millions of rows


class UsageError(Exception):
    """A bad command line; reported like every other user error (one line, exit 2)."""


class _Parser(argparse.ArgumentParser):
    # argparse prints the usage block and then the error; the contract is one line, so only the error
    # is printed (with a pointer to --help, which still prints the whole usage).
    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def _jsonable(x: object) -> object:
    """Plain JSON values: NaN and infinities become null (json.dumps would write invalid `NaN`)."""
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, pa.Table):
        return _jsonable(x.to_pylist())
    if hasattr(x, "item") and hasattr(x, "dtype"):  # a numpy scalar (numpy itself is not imported here)
        return _jsonable(x.item())
    return x


def _warn(run: Run) -> None:
    for p in run.problems:
        print(f"warning: skipped {p}", file=sys.stderr)


# ------------------------------------------------------------------------------------ commands


def cmd_metrics(args) -> int:
    if args.osc_window < 1:
        raise UsageError(f"--osc-window must be >= 1, got {args.osc_window}")
    run = Run(args.run_dir)
    summary = run_metrics.summary(run, osc_window=args.osc_window)
    summary["problems"] = list(run.problems)
    _warn(run)
    print(json.dumps(_jsonable(summary), indent=args.indent))
    return SKIPPED if run.problems else 0


def _columns(spec: str | None) -> list[str] | None:
    if spec is None:
        return None
    cols = [c.strip() for c in spec.split(",") if c.strip()]
    if not cols:
        raise UsageError("--columns names no column")
    dup = sorted({c for c in cols if cols.count(c) > 1})
    if dup:
        raise UsageError(f"--columns names {dup[0]!r} twice")
    return cols


def _format(args) -> str:
    if args.format:
        fmt = args.format
    else:  # from the file name: .parquet / .pq mean Parquet, anything else (and stdout) CSV
        fmt = "parquet" if Path(args.out).suffix.lower() in (".parquet", ".pq") else "csv"
    if fmt == "parquet" and args.out == "-":
        raise UsageError("--out - writes CSV only; give a file name for --format parquet")
    return fmt


def _write_csv(data: pa.Table, sink) -> None:
    with pacsv.CSVWriter(sink, data.schema) as w:
        for batch in data.to_batches(max_chunksize=_CSV_BATCH):
            w.write_batch(batch)


def _write_file(data: pa.Table, out: Path, fmt: str) -> None:
    """Write to a temporary file beside `out`, then move it in: a failed export leaves no half file."""
    if not out.parent.is_dir():  # checked first, so the message names the user's path, not the temporary one
        raise OSError(f"{out}: cannot write, no such directory {out.parent}")
    if out.is_dir():
        raise OSError(f"{out}: is a directory; give a file name")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        if fmt == "parquet":
            pq.write_table(data, tmp, compression="zstd")
        else:
            _write_csv(data, str(tmp))
        os.replace(tmp, out)
    except OSError as e:  # pyarrow's messages name the temporary file: name the user's instead
        raise OSError(f"{out}: cannot write ({_one_line(e)})") from None
    finally:
        tmp.unlink(missing_ok=True)


def cmd_export(args) -> int:
    if args.table not in TABLES:
        raise UsageError(f"unknown table {args.table!r}; known: {', '.join(TABLES)}")
    columns, fmt = _columns(args.columns), _format(args)
    run = Run(args.run_dir)
    data = run.table(args.table, columns, where=args.where)
    _warn(run)
    if args.out == "-":
        sys.stdout.flush()  # anything printed before must come first
        _write_csv(data, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        _write_file(data, Path(args.out), fmt)
    if args.verbose:
        print(f"{data.num_rows} rows -> {args.out}", file=sys.stderr)
    return SKIPPED if run.problems else 0


def cmd_list(args) -> int:
    root = Path(args.root)
    if not root.is_dir():
        raise RunReadError(f"{root}: no such directory")
    if (root / MANIFEST).is_file():
        # Its table folders would each be listed as an invalid run: say what to pass instead.
        raise RunReadError(f"{root}: is a run folder; list the folder that holds runs ({root.parent})")
    for info in list_runs(root):
        row = {
            "name": info.name,
            "status": info.status,
            "tokens": info.tokens,
            "steps": info.steps,
            "size_bytes": info.size_bytes,
            "scorer": info.scorer,
            "created_at": info.created_at,
            "parent": info.parent,
            "error": info.error,
            "problem": info.problem,
            "path": str(info.path),
        }
        print(json.dumps(_jsonable(row)))
    return 0


# -------------------------------------------------------------------------------------- parser


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m telemetry", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("metrics", help="headline metrics of a run as JSON on stdout")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--osc-window", type=int, default=5, help="steps within which a LOD return is a ping-pong")
    p.add_argument("--indent", type=int, default=None, help="pretty-print the JSON (default: one line)")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("export", help="write one table (projected, filtered) as CSV or Parquet")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--table", required=True, help=f"one of {', '.join(TABLES)}")
    p.add_argument("--columns", default=None, help="comma-separated columns, in output order (default: all)")
    p.add_argument("--where", default=None, help='SQL predicate over the columns, e.g. "step >= 10"')
    p.add_argument("--format", choices=FORMATS, default=None, help="default: from --out's suffix, else csv")
    p.add_argument("--out", required=True, help="output file, or - for CSV on stdout")
    p.add_argument("--verbose", action="store_true", help="say how many rows were written (stderr)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("list", help="one JSON line per run folder under ROOT")
    p.add_argument("root", metavar="ROOT")
    p.set_defaults(func=cmd_list)
    return ap


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        return args.func(args)
    except (UsageError, RunReadError, SchemaError, ValueError, OSError) as e:
        if isinstance(e, BrokenPipeError):  # `... --out - | head`: the reader left; not an error
            _silence_stdout()
            return 0
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    # Python flushes stdout again at exit, which would raise BrokenPipeError a second time.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
