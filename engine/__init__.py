"""The system itself: gist tree, working context, scorers, allocator, base model, session loop.

Public names are below, each imported from its module on first use (`from engine import GistTree`
loads `engine.tree` only), so the allocator stack stays importable without torch. Internals (the
allocator's stages, the compiled kernels) are imported from their modules by the tests that pin
them. `python -m engine` is the command line (`studio.cli`).
"""

from contract.exports import exports

PUBLIC = {
    # engine.allocator_types
    "AllocatorError": "engine.allocator_types",
    "AllocatorState": "engine.allocator_types",
    # engine.default_model
    "CACHE_DIR": "engine.default_model",
    "model_identity": "engine.default_model",
    # engine.edits
    "apply": "engine.edits",
    # engine.gistnet
    "GistNet": "engine.gistnet",
    # engine.lensnet
    "FEATURE_NAMES": "engine.lensnet",
    "LensNet": "engine.lensnet",
    "N_FEATURES": "engine.lensnet",
    "entry_features": "engine.lensnet",
    # engine.materialize
    "Materialized": "engine.materialize",
    # engine.model
    "BaseModel": "engine.model",
    "lm_forward": "engine.model",
    # engine.model_loader
    "ByteTokenizer": "engine.model_loader",
    "ModelLoadError": "engine.model_loader",
    "build_tiny": "engine.model_loader",
    "cpu_has_bf16": "engine.model_loader",
    "load_model": "engine.model_loader",
    "resolve_device": "engine.model_loader",
    # engine.refocus
    "IMPL": "engine.refocus",
    "PLANNERS": "engine.refocus",
    "plan": "engine.refocus",
    "plan_jit": "engine.refocus",
    "Scores": "engine.refocus",
    # engine.runtime
    "GISTNET_FILE": "engine.runtime",
    "build_engine": "engine.runtime",
    "check_base": "engine.runtime",
    "nets_dir": "engine.runtime",
    # engine.scenarios
    "PasskeyCase": "engine.scenarios",
    "PasskeyConfig": "engine.scenarios",
    "passkey_cases": "engine.scenarios",
    "recall_text": "engine.scenarios",
    # engine.scorers
    "build_scorer": "engine.scorers",
    # engine.session
    "FULL_CONTEXT_MAX": "engine.session",
    "Session": "engine.session",
    "full_context_fits": "engine.session",
    # engine.structure_scorers
    "AttentionScorer": "engine.structure_scorers",
    "CompressiveScorer": "engine.structure_scorers",
    "RandomScorer": "engine.structure_scorers",
    "RecencyScorer": "engine.structure_scorers",
    "SinkScorer": "engine.structure_scorers",
    "attention_utility": "engine.structure_scorers",
    "prefix_cost": "engine.structure_scorers",
    "window_blocks": "engine.structure_scorers",
    # engine.textio
    "InputError": "engine.textio",
    "read_text": "engine.textio",
    "token_chunks": "engine.textio",
    # engine.threads
    "CpuSample": "engine.threads",
    "ThreadGovernor": "engine.threads",
    "configure_process": "engine.threads",
    "cpu_sample": "engine.threads",
    "decide_threads": "engine.threads",
    "other_busy_cores": "engine.threads",
    "read_busy_seconds": "engine.threads",
    # engine.tree
    "GistTree": "engine.tree",
    # engine.vector_scorers
    "HopfieldScorer": "engine.vector_scorers",
    "LensNetScorer": "engine.vector_scorers",
    "RetrievalScorer": "engine.vector_scorers",
    # engine.view
    "ScoreResult": "engine.view",
    "ScoreView": "engine.view",
    # engine.working_context
    "WorkingContext": "engine.working_context",
    "check_invariants": "engine.working_context",
    "protected_from": "engine.working_context",
}

__all__, __getattr__, __dir__ = exports(__name__, PUBLIC)
