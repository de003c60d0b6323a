"""Orchestration above the engine and the telemetry: the command line (`studio.cli`, run as
`python -m engine`), replay from and into run folders (`studio.replay`) and the Knobs lab's one-pass
re-plan and measure (`studio.measure`). It may import `engine` and `telemetry`; neither imports it."""
