"""`python -m engine ...`: the command line lives above the engine, in `studio/cli.py`.

The one import of `studio` under `engine/`: an entry point, run only as `python -m engine`, never
imported by the engine's modules (the import-wall test allows exactly this file).
"""

import sys

from studio.cli import main

sys.exit(main())
