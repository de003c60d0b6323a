"""`ArrowSink`: collect a session's (or a replay's) events as in-memory Arrow tables.

The same typed columns as a run folder, without files: the knobs lab re-plans a recording with
new knobs into an `ArrowSink` and hands its tables straight to `telemetry.metrics`. Events are
buffered as numpy arrays and converted once per column when a table is asked for (thousands of
small conversions cost more than the re-planning itself); the conversion applies the schema, so a
value that does not fit its column still raises. Nodes and lifecycle events are ignored.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from engine.decisions import ACTIONS, OUTCOMES
from engine.events import DecisionsRecorded, Event, NodesAdded, RunFinished, RunStarted
from telemetry.schema import SCHEMAS, columns_to_arrays
from telemetry.writer import _columns

KEPT = ("steps", "entries", "decisions", "attention", "lens_attention")
_CODES = {"action": pa.array(ACTIONS, pa.string()), "outcome": pa.array(OUTCOMES, pa.string())}


class ArrowSink:
    def __init__(self, tables: tuple[str, ...] = KEPT):
        self._cols: dict[str, dict[str, list]] = {t: {c: [] for c in SCHEMAS[t].names} for t in tables}

    def emit(self, event: Event) -> None:
        if isinstance(event, RunStarted | RunFinished | NodesAdded):
            return
        if isinstance(event, DecisionsRecorded):  # keep the codes; names are looked up once, at the end
            if "decisions" not in self._cols:
                return
            d, cols, n = event.decisions, self._cols["decisions"], len(event.decisions)
            for name in ("node_id", "lod_from", "lod_to", "action", "score", "outcome", "forced", "seq"):
                cols[name].append(getattr(d, name))
            cols["step"].append(np.full(n, event.step, np.int32))
            cols["iteration"].append(np.full(n, event.iteration, np.int16))
            return
        table, cols = _columns(event)
        if table not in self._cols:
            return
        n = max((len(v) for v in cols.values() if isinstance(v, np.ndarray | list)), default=1)
        for name in SCHEMAS[table].names:
            v = cols.get(name)
            self._cols[table][name].append(v if isinstance(v, np.ndarray | list) else np.full(n, v, dtype=object))

    def table(self, name: str) -> pa.Table:
        """Everything collected for `name` as one table, in emission (step) order."""
        cols = {}
        for field in SCHEMAS[name]:
            parts = self._cols[name][field.name]
            v = np.concatenate(parts) if parts else np.zeros(0)
            if field.name in _CODES and name == "decisions":
                cols[field.name] = _CODES[field.name].take(pa.array(v.astype(np.int8), pa.int8()))
            else:
                cols[field.name] = v
        arrays, _ = columns_to_arrays(name, cols)
        return pa.Table.from_arrays(arrays, schema=SCHEMAS[name])
