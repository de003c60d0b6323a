"""Which focus-allocator implementation the engine runs: a registry of the two.

`PLANNERS` names both: "numpy", the reference (`engine/allocator.py`, named by the DESIGN's stages),
and "numba", its compiled twin (`engine/allocator_jit.py`), which gives exactly the reference's
decisions (tested call by call) about 10x faster. `plan` is the compiled one when numba can be
imported, else the reference, with the same results; `IMPL` says which. A Plan says which made it
(`Plan.compiled`): the twin hands the calls it does not cover to the reference.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.allocator import plan as reference_plan

PLANNERS: dict[str, Callable] = {"numpy": reference_plan}
try:
    from engine.allocator_jit import plan_jit

    PLANNERS["numba"] = plan_jit
except ImportError:  # pragma: no cover - numba is in requirements.txt; this keeps a broken install usable
    pass

IMPL = "numba" if "numba" in PLANNERS else "numpy"
plan = PLANNERS[IMPL]

__all__ = ["IMPL", "PLANNERS", "plan"]
