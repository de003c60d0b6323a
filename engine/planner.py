"""Which focus-allocator implementation the engine runs.

`plan` is the compiled twin (`engine/allocator_jit.py`), which gives exactly the reference's decisions
(tested call by call) about 10x faster; if numba cannot be imported, the numpy reference
(`engine/allocator.py`) runs instead, with the same results. `IMPL` says which one is in use.
"""

from __future__ import annotations

try:
    from engine.allocator_jit import plan_jit as plan

    IMPL = "numba"
except ImportError:  # pragma: no cover - numba is in requirements.txt; this keeps a broken install usable
    from engine.allocator import plan

    IMPL = "numpy"

__all__ = ["IMPL", "plan"]
