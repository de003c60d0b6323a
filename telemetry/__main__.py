"""`python -m telemetry ...`: see `telemetry/cli.py`."""

from telemetry.cli import main

raise SystemExit(main())
