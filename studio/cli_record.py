"""`python -m engine record`, `run` and `replay`: the commands that stream a text, or a recording, through
the engine.

`record` writes every step to a run folder (Parquet), `run` prints a JSON summary and records
nothing, `replay` re-plans a recorded run into a new folder (`studio/replay.py`). With them, what
they share: the config from `--set`, the input read ahead so that bad input fails before any model
loads, the summary sink, and the tqdm progress bar with its token estimate.

This module does not parse the command line or own the process's signals and exit status (that is
`studio/cli.py`), and holds no `eval` or `knobs` (`studio/cli_eval.py`).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from contract.config import RunConfig, apply_overrides
from contract.decisions import OUTCOMES
from contract.events import DecisionsRecorded, RunFinished, StepRecorded, interrupt_reason


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


def cmd_add_text(args) -> int:
    from studio.run_text import add_text

    for run_dir in args.run_dirs:  # one at a time: a failure names its run and stops before the next
        print(json.dumps(add_text(run_dir, args.device)))
    return 0


def _stages(args, name: str):
    """A progress callback: each stage goes to a file beside `--out` (the app reads it to show how far
    the job got, app/jobs.py) and, unless --quiet, to stderr. Returns (callback, stage file or None)."""
    stage_file = Path(args.out).with_name(Path(args.out).name + ".progress") if args.out else None

    def progress(stage: str) -> None:
        if stage_file:
            stage_file.parent.mkdir(parents=True, exist_ok=True)
            stage_file.write_text(stage)
        if not args.quiet:
            print(f"{name}: {stage}", file=sys.stderr)

    return progress, stage_file


def cmd_probe(args) -> int:
    from studio.probe import probe_meta, probe_step, write_probe

    progress, stage_file = _stages(args, "probe")
    table = probe_step(args.run_dir, args.step, top_k=args.top_k, horizon=args.horizon, device=args.device,
                       progress=progress)  # fmt: skip
    if stage_file:
        write_probe(table, args.out)
        stage_file.unlink(missing_ok=True)
    print(json.dumps({**probe_meta(table), "rows": table.to_pylist() if not args.out else table.num_rows}))
    return 0


def cmd_attention(args) -> int:
    from studio.attention_detail import attention_detail, detail_meta, write_detail

    progress, stage_file = _stages(args, "attention")
    table = attention_detail(args.run_dir, args.step, device=args.device, progress=progress)
    if stage_file:
        write_detail(table, args.out)
        stage_file.unlink(missing_ok=True)
    print(json.dumps({**detail_meta(table), "rows": table.num_rows}))
    return 0
