"""The contract both sides stand on: what the engine produces and the telemetry records, as data.

- `contract.nodes`: node ids (LOD and index packed in one int64) and span arithmetic;
- `contract.decisions`: the decision table and its action/outcome codes;
- `contract.events`: the events a run emits, and the `Sink` protocol that receives them;
- `contract.config`: the run config, each knob's range and help declared on its field.

numpy and the standard library only (a test reads every import): a reader of recordings, a
validator of knobs or a page's widget needs no model and no Parquet to use these. The public names
are below (`from contract import RunConfig`); `contract.nodes` is used as a module.
"""

from contract.exports import exports

PUBLIC = {
    # contract.config
    "AllocatorConfig": "contract.config",
    "GistNetConfig": "contract.config",
    "INT_MAX": "contract.config",
    "INT_MIN": "contract.config",
    "LensNetConfig": "contract.config",
    "PlanKnobs": "contract.config",
    "RunConfig": "contract.config",
    "SCORER_NAMES": "contract.config",
    "ScorerConfig": "contract.config",
    "TreeConfig": "contract.config",
    "WorkingContextConfig": "contract.config",
    "apply_overrides": "contract.config",
    "changed_knobs": "contract.config",
    "check_knobs": "contract.config",
    "check_rule": "contract.config",
    "knob": "contract.config",
    "knob_spec": "contract.config",
    "min_w_max": "contract.config",
    "parse_value": "contract.config",
    "protected_blocks": "contract.config",
    # contract.decisions
    "ACTIONS": "contract.decisions",
    "APPLIED": "contract.decisions",
    "BUDGET": "contract.decisions",
    "COLLAPSE": "contract.decisions",
    "COOLDOWN": "contract.decisions",
    "Decisions": "contract.decisions",
    "EDIT_CAP": "contract.decisions",
    "EVICT": "contract.decisions",
    "EVICTED_LOD": "contract.decisions",
    "EXPAND": "contract.decisions",
    "HYSTERESIS": "contract.decisions",
    "ILLEGAL": "contract.decisions",
    "OUTCOMES": "contract.decisions",
    "PROTECTED": "contract.decisions",
    "make_decisions": "contract.decisions",
    # contract.events
    "AttentionRecorded": "contract.events",
    "DecisionsRecorded": "contract.events",
    "EntriesRecorded": "contract.events",
    "Event": "contract.events",
    "GistsRecorded": "contract.events",
    "LensAttention": "contract.events",
    "MemorySink": "contract.events",
    "NodesAdded": "contract.events",
    "NullSink": "contract.events",
    "RunFinished": "contract.events",
    "RunStarted": "contract.events",
    "Sink": "contract.events",
    "StepRecorded": "contract.events",
    "TextRecorded": "contract.events",
    "interrupt_reason": "contract.events",
    # contract.nodes
    "INDEX_MASK": "contract.nodes",
    "LOD_SHIFT": "contract.nodes",
}

__all__, __getattr__, __dir__ = exports(__name__, PUBLIC)
