"""Orchestration above the engine and the telemetry: the command line (`studio.cli`, run as
`python -m engine`), fast replay in memory and the Knobs lab's one-pass re-plan and measure
(`studio.fast_replay`), replay from and into run folders (`studio.replay`), one recorded step
rebuilt (`studio.rebuild`) for the probe and the attention detail, knob sweeps on Ray
(`studio.sweep`), evaluation (`studio.eval`) and training (`studio.train`).
It may import `engine` and `telemetry`; neither imports it. Public names are below, each imported
from its module on first use.
"""

from contract.exports import exports

PUBLIC = {
    # studio.cli_record
    "CountingText": "studio.cli_record",
    "EXIT_SKIPPED": "studio.cli_record",
    "ProgressBar": "studio.cli_record",
    "estimate_total_tokens": "studio.cli_record",
    # studio.eval
    "EvalConfig": "studio.eval",
    "across_documents": "studio.eval",
    "eval_run_config": "studio.eval",
    "policy_table": "studio.eval",
    "run_policy": "studio.eval",
    # studio.eval_scenario
    "fact_lod": "studio.eval_scenario",
    # studio.fast_replay
    "FAST_KNOB_SECTIONS": "studio.fast_replay",
    "Measured": "studio.fast_replay",
    "MeasureSink": "studio.fast_replay",
    "Recording": "studio.fast_replay",
    "ReplayError": "studio.fast_replay",
    "ReplayStats": "studio.fast_replay",
    "replan": "studio.fast_replay",
    "replay_fast": "studio.fast_replay",
    # studio.replay
    "load_recording": "studio.replay",
    "replay_run": "studio.replay",
    # studio.rebuild (studio.attention_detail and studio.sweep are modules named as their functions)
    "StepError": "studio.rebuild",
    "rebuild_step": "studio.rebuild",
    # studio.sweep
    "read_results": "studio.sweep",
    "results_schema": "studio.sweep",
    # studio.sweep_plan
    "Grid": "studio.sweep_plan",
    "SweepError": "studio.sweep_plan",
}

__all__, __getattr__, __dir__ = exports(__name__, PUBLIC)
