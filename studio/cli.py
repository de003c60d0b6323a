"""Command line of the engine: `python -m engine COMMAND ...`.

  record  stream a text through the engine and record every step to a run folder (Parquet)
  replay  re-plan a recorded run with other knobs into a new run folder (fast or --exact)
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
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import sys
from collections import Counter

import numpy as np

from contract.config import SCORER_NAMES, RunConfig, apply_overrides, knob_spec
from contract.decisions import OUTCOMES
from contract.events import DecisionsRecorded, RunFinished, StepRecorded, interrupt_reason
from engine.textio import InputError
from engine.threads import configure_process


class SummarySink:
    """Aggregates a run into a few headline numbers and shows progress on stderr."""

    def __init__(self, progress: bool = True):
        self.progress, self.steps, self.nll, self.timings = progress, 0, [], Counter()
        self.outcomes: Counter = Counter()
        self.tokens, self.status = 0, "recording"

    def emit(self, e) -> None:
        if isinstance(e, StepRecorded):
            self.steps += 1
            self.tokens = e.tokens_seen
            if e.nll is not None:
                self.nll.append(e.nll)
            for k in ("t_tree_ms", "t_scorer_ms", "t_allocator_ms", "t_model_ms"):
                self.timings[k] += getattr(e, k)
            if self.progress and self.steps % 50 == 0:
                print(f"\rstep {e.step}  tokens {e.tokens_seen}  wc {e.wc_cost}/{e.w_max}", end="", file=sys.stderr)
        elif isinstance(e, DecisionsRecorded):
            self.outcomes.update(OUTCOMES[o] for o in e.decisions.outcome.tolist())
        elif isinstance(e, RunFinished):
            self.status, self.tokens = e.status, e.tokens
            if self.progress:
                print("", file=sys.stderr)

    def summary(self) -> dict:
        n = max(self.steps, 1)
        return {
            "status": self.status,
            "tokens": self.tokens,
            "steps": self.steps,
            "mean_nll": float(np.mean(self.nll)) if self.nll else None,
            "decisions": dict(self.outcomes),
            "mean_ms": {k: round(v / n, 3) for k, v in self.timings.items()},
        }


def _config(args) -> RunConfig:
    sets = list(args.set or [])
    if getattr(args, "scorer", None):
        sets.append(f"scorer.name={args.scorer}")
    return apply_overrides(RunConfig(), sets)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="'default' (SmolLM2-135M with its trained nets), 'tiny' (a random test model) or a local "
                        "Hugging Face model folder")  # fmt: skip
    p.add_argument("--scorer", default=None, help="shorthand for --set scorer.name=NAME")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="set any knob (repeatable)")


def _open_input(path: str):
    """Read the first chunk now, so bad input fails before any model loads."""
    from engine.textio import read_text

    texts = read_text(path)  # a generator: nothing is read until next()
    first = next(texts, None)
    return itertools.chain([first] if first is not None else [], texts)


def cmd_run(args) -> int:
    cfg = _config(args)
    texts = CountingText(_open_input(args.input))
    from engine.runtime import build_engine  # torch and transformers load only once the input is known good

    engine = build_engine(cfg, args.model, args.device)
    sink = SummarySink(progress=False)
    bar = ProgressBar(not args.quiet, _input_bytes(args.input), texts, cfg.session.max_tokens)
    bar.watch(engine.session(Tee(sink, bar), args.input)).run(texts)
    out = sink.summary() | {"model": engine.model.model_id, "scorer": cfg.scorer.name, "weights": engine.weights}
    print(json.dumps(out, indent=2))
    return 0


class Tee:
    """Send every event to several sinks (the recorder and the progress summary)."""

    def __init__(self, *sinks):
        self.sinks = sinks

    def emit(self, e) -> None:
        for s in self.sinks:
            s.emit(e)


class CountingText:
    """A text iterator that counts the UTF-8 bytes it has handed on (for the progress estimate)."""

    def __init__(self, texts):
        self.texts, self.bytes = texts, 0

    def __iter__(self):
        for text in self.texts:
            self.bytes += len(text.encode("utf-8"))
            yield text


def _input_bytes(path: str) -> int | None:
    """Size of a file input in bytes; None for stdin or anything whose size is not known."""
    if path == "-":
        return None
    try:
        return os.path.getsize(path) or None
    except OSError:
        return None


def estimate_total_tokens(tokens_read: int, bytes_read: int, total_bytes: int | None, max_tokens: int = 0,
                          done: int = 0) -> int | None:  # fmt: skip
    """Tokens the whole input will give: the tokens per byte so far times the file's size, capped by
    `session.max_tokens` (0 = none), never below `done`. None while unknown (stdin, nothing read)."""
    if total_bytes is None or bytes_read <= 0 or tokens_read <= 0:
        return None
    est = round(tokens_read * max(total_bytes, bytes_read) / bytes_read)
    if max_tokens:
        est = min(est, max_tokens)
    return max(est, done)


class ProgressBar:
    """A tqdm bar on stderr counting tokens, with tokens/s and, for a file, the time left.

    The total in tokens is estimated as the run goes (`estimate_total_tokens`): tokens the session
    has tokenised per byte of text read so far, times the file's size. Without a size (stdin)
    the bar shows the count and the rate only. `watch(session)` connects it to the session's
    tokeniser count; until then (or without `counter`) there is no total either.
    """

    def __init__(self, enabled: bool, total_bytes: int | None = None, counter: CountingText | None = None,
                 max_tokens: int = 0):  # fmt: skip
        from tqdm import tqdm

        self.bar = tqdm(unit="tok", unit_scale=True, disable=not enabled, file=sys.stderr, dynamic_ncols=True)
        self.tokens = 0
        self.total_bytes, self.counter, self.max_tokens = total_bytes, counter, max_tokens
        self.session = None

    def watch(self, session):
        """Read the session's `tokens_read` for the estimate; returns the session."""
        self.session = session
        return session

    def emit(self, e) -> None:
        if isinstance(e, StepRecorded):
            self.bar.update(e.tokens_seen - self.tokens)
            self.tokens = e.tokens_seen
            if self.session is not None and self.counter is not None:
                total = estimate_total_tokens(self.session.tokens_read, self.counter.bytes, self.total_bytes,
                                              self.max_tokens, self.tokens)  # fmt: skip
                if total is not None:
                    self.bar.total = total
            self.bar.set_postfix(step=e.step, wc=f"{e.wc_cost}/{e.w_max}", refresh=False)
        elif isinstance(e, RunFinished):
            if self.bar.total is not None:
                self.bar.total = self.bar.n  # the estimate is done with: the bar ends full
            self.bar.close()


def cmd_record(args) -> int:
    cfg = _config(args)
    texts = CountingText(_open_input(args.input))
    from telemetry.writer import ParquetSink, RunExistsError

    try:
        sink = ParquetSink(args.out, overwrite=args.overwrite, flush_rows=args.flush_rows,
                           flush_seconds=args.flush_seconds)  # fmt: skip
    except RunExistsError as e:
        raise ValueError(str(e)) from None
    from engine.runtime import build_engine

    try:
        engine = build_engine(cfg, args.model, args.device)
        summary = SummarySink(progress=False)
        name = args.input if args.input == "-" else os.path.abspath(args.input)
        total = _input_bytes(args.input)
        case = None
        if args.scenario:
            case, name = _passkey_case(args, engine, "".join(texts), sink)
            texts, total = CountingText(iter([case.text])), len(case.text.encode())
        bar = ProgressBar(not args.quiet, total, texts, cfg.session.max_tokens)
        session = bar.watch(engine.session(Tee(sink, summary, bar), name))
        session.run(texts)
        if case is not None:
            from studio.eval_scenario import ask

            sink.annotate("scenario", {**sink.manifest["scenario"], "result": ask(engine.model, session, case)})
    except KeyboardInterrupt as e:  # SIGINT, SIGTERM, SIGHUP: flush what was recorded, say why
        sink.close("failed", interrupt_reason(e))
        raise
    finally:
        sink.close("failed", "recorder stopped before the end of the input")  # no-op once RunFinished came
    out = summary.summary() | {"run": args.out, "model": engine.model.model_id, "scorer": cfg.scorer.name}
    print(json.dumps(out, indent=2))
    return 0


def _passkey_case(args, engine, filler: str, sink):
    """The passkey case a scenario recording reads (filler from the input, the fact, the question),
    written into the run folder so that an exact replay can re-read it; the manifest names the needle."""
    from pathlib import Path

    from engine.scenarios import PasskeyConfig, passkey_cases

    m = engine.model
    case = passkey_cases(filler, m.tokenize, m.decode, PasskeyConfig((args.length,), (args.depth,), seed=args.seed))[0]
    path = Path(args.out) / SCENARIO_INPUT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(case.text, encoding="utf-8")
    sink.annotate("scenario", {"name": "passkey", "needle_span": [case.fact_start, case.fact_end],
                               "passkey": case.passkey, "answer": case.answer, "length": case.length,
                               "depth": case.depth, "n_tokens": case.n_tokens, "filler": args.input})  # fmt: skip
    return case, str(path.resolve())


SCENARIO_INPUT = "scenario-input.txt"  # a scenario run's text, kept in its run folder


EXIT_SKIPPED = 3  # done, but parts of the input were skipped (replay: the source's unreadable part files)


def cmd_replay(args) -> int:
    from studio.replay import replay_run

    out = replay_run(args.run_dir, args.out, list(args.set or []), exact=args.exact, device=args.device,
                     overwrite=args.overwrite)  # fmt: skip
    for problem in out["source_problems"]:
        print(f"warning: skipped {problem}", file=sys.stderr)
    print(json.dumps(out, indent=2))
    return EXIT_SKIPPED if out["source_problems"] else 0


def cmd_eval(args) -> int:
    from studio.eval import EvalConfig, eval_run_config, format_table, progress, read_inputs

    if args.combine:
        from studio.eval import combine

        parts = []
        for path in args.combine:
            try:
                parts.append(json.loads(open(path).read()))
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"cannot read evaluation {path}: {e}") from None
        res = combine(parts)
        print(format_table(res), file=sys.stderr)
        print(json.dumps(res, indent=2))
        return 0
    if not args.input:
        raise ValueError("eval needs --input FILE... (or --combine RESULT.json...)")
    cfg = eval_run_config(list(args.set or []))
    ecfg = EvalConfig(policies=tuple(p.strip() for p in args.policies.split(",") if p.strip()),
                      nll_every=args.nll_every, gist_samples=args.gist_samples, gist_horizon=args.gist_horizon,
                      seed=args.seed, baselines=not args.no_baselines)  # fmt: skip
    if args.scenario:
        from engine.scenarios import PasskeyConfig

        lengths = tuple(int(x) for x in args.lengths.split(",") if x.strip())
        pcfg = PasskeyConfig(lengths, tuple(float(x) for x in args.depths.split(",") if x.strip()), seed=args.seed)
    texts = read_inputs(args.input)  # bad input fails before any model loads
    from engine.runtime import build_engine

    engine = build_engine(apply_overrides(cfg, ["scorer.name=lensnet"]), args.model, args.device)
    cfg = engine.cfg  # the position mode resolved against the model
    say = (lambda msg: None) if args.quiet else progress
    if args.scenario:
        from studio.eval_scenario import format_passkey, passkey_eval

        res = passkey_eval(engine, cfg, ecfg.policies, pcfg, "\n\n".join(t for _, t in texts), log=say)
        table = format_passkey(res)
    else:
        from studio.eval import evaluate

        res = evaluate(engine, cfg, ecfg, texts, log=say)
        table = format_table(res)
    print(table, file=sys.stderr)
    print(json.dumps(res, indent=2))
    return 0


def cmd_knobs(args) -> int:
    """Every knob from its declaration (`contract.config.knob`), the source the README table and the
    app's widgets read too: name, default (as --set takes it), what it allows, meaning."""
    for name, default in RunConfig().flat().items():
        _, spec = knob_spec(name)
        value = ",".join(map(str, default)) if isinstance(default, list) else json.dumps(default)
        allowed = "; ".join(spec.allowed())
        if args.json:
            print(json.dumps({"knob": name, "default": default, "allowed": allowed, "help": spec.help}))
        else:
            print(f"{name}={value}\t{allowed or 'any'}\t{spec.help}")
    return 0


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
        if "telemetry.reader" in sys.modules:
            user_errors += (sys.modules["telemetry.reader"].RunReadError,)
        if "engine.model_loader" in sys.modules:  # only loaded once the input passed; importing it costs seconds
            user_errors += (sys.modules["engine.model_loader"].ModelLoadError,)
        if isinstance(e, user_errors):
            print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
            return 2
        raise
