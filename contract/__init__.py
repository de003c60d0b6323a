"""The contract both sides stand on: what the engine produces and the telemetry records, as data.

- `contract.nodes`: node ids (LOD and index packed in one int64) and span arithmetic;
- `contract.decisions`: the decision table and its action/outcome codes;
- `contract.events`: the events a run emits, and the `Sink` protocol that receives them;
- `contract.config`: the run config, each knob's range and help declared on its field.

numpy and the standard library only (a test reads every import): a reader of recordings, a
validator of knobs or a page's widget needs no model and no Parquet to use these.
"""
