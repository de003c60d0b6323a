"""The recording format and its readers: schema, Parquet sink, run reader (DuckDB), metrics.

Public names are below, each imported from its module on first use; the metric functions are used
through their module (`from telemetry import metrics`). `python -m telemetry` is its command line.
It stands on `contract` and imports nothing of `engine`.
"""

from contract.exports import exports

PUBLIC = {
    # telemetry.heatmap
    "heatmap_of_table": "telemetry.heatmap",
    # telemetry.memory
    "ArrowSink": "telemetry.memory",
    "LAB_ENTRIES": "telemetry.memory",
    # telemetry.reader
    "Run": "telemetry.reader",
    # telemetry.reductions
    "StepReducer": "telemetry.reductions",
    # telemetry.runs
    "RunReadError": "telemetry.runs",
    "derive_status": "telemetry.runs",
    "list_runs": "telemetry.runs",
    "load_manifest": "telemetry.runs",
    # telemetry.schema
    "CONTRACT": "telemetry.schema",
    "SCHEMAS": "telemetry.schema",
    "SCHEMA_VERSION": "telemetry.schema",
    "SchemaError": "telemetry.schema",
    "TABLES": "telemetry.schema",
    "columns_to_arrays": "telemetry.schema",
    "validate": "telemetry.schema",
    # telemetry.writer
    "LOCK": "telemetry.writer",
    "MANIFEST": "telemetry.writer",
    "ParquetSink": "telemetry.writer",
    "RunExistsError": "telemetry.writer",
    # telemetry.run_metrics, telemetry.registry
    "series": "telemetry.run_metrics",
    "summarize": "telemetry.run_metrics",
    "summary": "telemetry.run_metrics",
    "METRICS": "telemetry.registry",
    "METRIC": "telemetry.registry",
    "HEADLINE": "telemetry.registry",
    "LINES": "telemetry.registry",
}

__all__, __getattr__, __dir__ = exports(__name__, PUBLIC)
