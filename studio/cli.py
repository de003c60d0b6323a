"""Command line of the engine: `python -m engine COMMAND ...`.

  record  stream a text through the engine and record every step to a run folder (Parquet)
  replay  re-plan a recorded run with other knobs into a new run folder (fast or --exact)
  add-text  backfill the text table of runs recorded before recorders wrote it (from their input)
  probe   the true NLL change of one-level edits at one step, against the scorer's scores
  attention  the attention at one step by layer and head, and LensNet's by query (recomputed)
  sweep   every recording x every setting of a knob grid, re-planned and measured on Ray (resumable)
  run     stream a text through the engine and print a JSON summary (nothing recorded)
  eval    compare every policy at one budget (and the gists) on texts; JSON on stdout, a table on stderr
  knobs   every knob: one name, default, what it allows, meaning (from its declaration; --json)

Every knob is reachable with `--set section.field=value` (repeatable), the same names as the
manifest and the app. Exit status: 0 done; 2 an error a user can cause (one line, `error: ...`, on
stderr); 3 (replay) done, but part files of the source run were unreadable and skipped (one line
each, `warning: skipped ...`, on stderr; the replay's manifest lists them as `source_problems`);
128+N stopped by signal N.
Threads: OpenMP workers sleep rather than spin while waiting, and torch's thread count follows
the cores other processes leave free (engine/threads.py); MCS_THREADS=fixed turns both off.

This module is the entry: the parser, the process's signals and the exit status. The commands
themselves are `studio/cli_record.py` (record, run, replay) and `studio/cli_eval.py` (eval, knobs).
"""

from __future__ import annotations

import argparse
import signal
import sys

from contract.config import SCORER_NAMES
from contract.events import interrupt_reason
from engine.textio import InputError
from engine.threads import configure_process
from studio.cli_eval import cmd_eval, cmd_knobs, cmd_sweep
from studio.cli_record import cmd_add_text, cmd_attention, cmd_probe, cmd_record, cmd_replay, cmd_run


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="'default' (SmolLM2-135M with its trained nets), 'tiny' (a random test model) or a local "
                        "Hugging Face model folder")  # fmt: skip
    p.add_argument("--scorer", default=None, help="shorthand for --set scorer.name=NAME")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="set any knob (repeatable)")


def _add_step_job(p: argparse.ArgumentParser, step_help: str) -> None:
    """The arguments of a command that rebuilds one recorded step and re-runs its model (probe, attention)."""
    p.add_argument("run_dir", metavar="RUN", help="the recorded run (its input file and model must be here)")
    p.add_argument("--step", type=int, required=True, help=step_help)
    p.add_argument("--out", default=None, help="write the rows to this Parquet file (progress beside it)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m engine", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("knobs", help="list every knob: name, default, what it allows, meaning")
    p.add_argument("--json", action="store_true", help="one JSON object per knob instead of a table")
    p.set_defaults(func=cmd_knobs)

    p = sub.add_parser("run", help="stream a text through the engine and print a JSON summary")
    p.add_argument("--input", required=True, help="text file, or - for stdin")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _add_common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("record", help="stream a text and record every focus decision to a run folder")
    p.add_argument("--input", required=True, help="text file, or - for stdin")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.add_argument("--flush-rows", type=int, default=50_000, help="buffered rows that trigger a flush")
    p.add_argument("--flush-seconds", type=float, default=5.0, help="seconds between flushes")
    p.add_argument("--scenario", default=None, choices=("passkey",),
                   help="record a recall scenario: the input is filler, a passkey is planted at --depth and asked "
                        "for at the end; the manifest names the needle's tokens and, at the end, whether it was "
                        "recovered")  # fmt: skip
    p.add_argument("--length", type=int, default=16384, help="scenario: tokens of the case")
    p.add_argument("--depth", type=float, default=0.5, help="scenario: where the needle sits, 0 = start, 1 = end")
    p.add_argument("--seed", type=int, default=0, help="scenario: the passkey is drawn from this seed")
    _add_common(p)
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("eval", help="compare every policy at one budget, and the gists (JSON on stdout)")
    p.add_argument("--input", nargs="+", help="text files (long ones: 16k+ tokens)")
    p.add_argument(
        "--combine",
        nargs="+",
        metavar="RESULT.json",
        help="unite earlier results over the same texts (e.g. one policy re-run) instead of evaluating",
    )
    p.add_argument("--scenario", default=None, choices=("passkey",), help="a recall scenario on the inputs as filler")
    p.add_argument("--policies", default=",".join(SCORER_NAMES), help="comma-separated scorers to compare")
    p.add_argument("--nll-every", type=int, default=1, help="measure the next block's NLL every N refocus steps")
    p.add_argument("--gist-samples", type=int, default=64, help="blocks for the gist-quality numbers (0 = skip)")
    p.add_argument("--gist-horizon", type=int, default=64, help="H of the gist's ΔNLL@H")
    p.add_argument("--lengths", default="8192,16384", help="scenario: comma-separated case lengths in tokens")
    p.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9", help="scenario: comma-separated fact depths in [0, 1]")
    p.add_argument("--seed", type=int, default=0, help="gist windows and passkeys are drawn from this seed")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr (the table still prints)")
    p.add_argument(
        "--no-baselines",
        action="store_true",
        help="skip the full-context and window references (to --combine with a run that has them)",
    )
    _add_common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("replay", help="re-plan a recorded run with other knobs into a new run folder",
                       epilog="exit status: 0 done; 2 error; 3 done, but unreadable part files of the source run "
                              "were skipped (each named in a `warning: skipped ...` line)")  # fmt: skip
    p.add_argument("run_dir", help="the recorded run")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--exact", action="store_true", help="re-run scorer and model instead of reusing scores")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="knob to change (repeatable)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("add-text", help="give runs recorded without their text (the text view's) a text table, "
                                        "re-read from their input and checked against what they recorded")  # fmt: skip
    p.add_argument("run_dirs", nargs="+", metavar="RUN", help="run folders")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    p.set_defaults(func=cmd_add_text)

    p = sub.add_parser("probe", help="the true NLL change of moving each top-k candidate entry of one step "
                                     "one level, against the scorer's score (JSON; --out: a Parquet file)")  # fmt: skip
    _add_step_job(p, "the refocus step to probe")
    p.add_argument("--top-k", type=int, default=16, help="entries probed: half the highest-scored, half the lowest")
    p.add_argument("--horizon", type=int, default=32, help="next tokens whose NLL an edit changes")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("attention", help="the base model's attention at one step by layer and head, and LensNet's "
                                         "by query, recomputed on the rebuilt step (--out: Parquet)")  # fmt: skip
    _add_step_job(p, "the refocus step")
    p.set_defaults(func=cmd_attention)

    p = sub.add_parser("sweep", help="re-plan and measure every recording with every setting of a knob grid, "
                                     "on Ray; results in one Parquet table (resumable)")  # fmt: skip
    p.add_argument("--runs", nargs="+", required=True, metavar="GLOB",
                   help="run folders (globs; or URIs pyarrow reads: s3://..., gs://..., file://...)")  # fmt: skip
    p.add_argument("--grid", action="append", required=True, metavar="SECTION.KNOB=V1,V2,...",
                   help="a knob and its values (repeatable: the settings are every combination; a pair knob's "
                        "values are separated by ';')")  # fmt: skip
    p.add_argument("--out", required=True, help="the sweep's folder (a re-run skips the cells already there)")
    p.add_argument("--exact", action="store_true", help="re-run the scorer and the base model (one GPU per task "
                                                        "where the cluster has GPUs)")  # fmt: skip
    p.add_argument("--ray", default="local", metavar="local|auto|ADDRESS|none",
                   help="local: an embedded Ray on this machine (default); auto or ADDRESS: join a cluster; "
                        "none: run the cells here, one after another")  # fmt: skip
    p.add_argument("--workers", type=int, default=None, help="Ray workers (default: the cores, or the cluster's)")
    p.add_argument("--flush-cells", type=int, default=16, help="finished cells per results part (what a kill loses)")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="exact, without GPUs")
    p.set_defaults(func=cmd_sweep)
    return ap


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the process is, so that recorders flush and say why (as SIGINT)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _raise_stopped(signum, frame) -> None:
    raise Stopped(signum)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if argv is None:  # the command line, not a test calling main(): own the process's signals
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _raise_stopped)
    try:
        configure_process()  # before torch loads (nothing above imports it); a no-op once it has
        return args.func(args)
    except KeyboardInterrupt as e:
        print(f"error: {interrupt_reason(e)}", file=sys.stderr)
        return 128 + (e.signum if isinstance(e, Stopped) else signal.SIGINT)
    except Exception as e:  # user-caused errors have one-line messages by contract
        user_errors: tuple[type, ...] = (ValueError, InputError, OSError)
        if "telemetry.runs" in sys.modules:
            user_errors += (sys.modules["telemetry.runs"].RunReadError,)
        if "engine.model_loader" in sys.modules:  # only loaded once the input passed; importing it costs seconds
            user_errors += (sys.modules["engine.model_loader"].ModelLoadError,)
        if isinstance(e, user_errors):
            print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
            return 2
        raise
