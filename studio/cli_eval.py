"""`python -m engine eval`, `knobs` and `sweep`: the commands that report on policies and knobs, recording nothing.

`eval` compares every policy at one budget (and the gists) on texts, or a passkey scenario, or
unites earlier results (`--combine`): JSON on stdout, a table on stderr; the work is in
`studio/eval.py` and `studio/eval_scenario.py`. `knobs` lists every knob from its declaration.
`sweep` re-plans recordings over a knob grid on Ray (`studio/sweep.py`).

This module does not parse the command line or own the process's signals and exit status (that is
`studio/cli.py`), and holds no `record`, `run` or `replay` (`studio/cli_record.py`).
"""

from __future__ import annotations

import json
import sys

from contract.config import RunConfig, apply_overrides, knob_spec


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


def cmd_sweep(args) -> int:
    from studio.sweep import sweep

    for flag, v in (("--workers", args.workers), ("--flush-cells", args.flush_cells)):
        if v is not None and v < 1:
            raise ValueError(f"{flag} must be >= 1, got {v}")
    m = sweep(args.runs, args.grid, args.out, exact=args.exact, ray=args.ray, workers=args.workers,
              device=args.device, flush_cells=args.flush_cells, progress=not args.quiet)  # fmt: skip
    print(json.dumps({k: m[k] for k in ("cells", "skipped", "done", "status", "engine", "workers", "elapsed_s",
                                        "task_s", "ray_start_s", "ray_stop_s")} | {"out": str(args.out)}))  # fmt: skip
    return 0
