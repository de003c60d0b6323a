"""Training of the nets shipped beside the default base model: corpus, GistNet, LensNet.

The base model itself is not trained here: it is SmolLM2-135M-Instruct (engine/default_model.py).
`python -m studio.train corpus` builds the corpus; `studio.train.gistnet_train` and
`studio.train.lensnet_train` train the nets against a frozen base model; `scripts/train_default.sh`
runs all three. `studio.train.common` holds the shared loop helpers (resumable safetensors
checkpoints, budgets, progress logging). Nothing here is imported by the engine at run time. Public
names are below, each imported from its module on first use.
"""

from contract.exports import exports

PUBLIC = {
    # studio.train.corpus
    "CorpusConfig": "studio.train.corpus",
    "SPLITS": "studio.train.corpus",
    "assign_splits": "studio.train.corpus",
    "build_corpus": "studio.train.corpus",
    "hash_unit": "studio.train.corpus",
    "iter_documents": "studio.train.corpus",
    "read_split": "studio.train.corpus",
    # studio.train.gist_task
    "horizon_logits": "studio.train.gist_task",
    "sample_windows": "studio.train.gist_task",
    # studio.train.gistnet_train
    "GistTrainConfig": "studio.train.gistnet_train",
    "train_gistnet": "studio.train.gistnet_train",
    # studio.train.lens_labels
    "LabelConfig": "studio.train.lens_labels",
    "generate_labels": "studio.train.lens_labels",
    "label_view": "studio.train.lens_labels",
    "one_level_edit": "studio.train.lens_labels",
    "run_episode": "studio.train.lens_labels",
    # studio.train.lensnet_train
    "LensTrainConfig": "studio.train.lensnet_train",
    "PREV": "studio.train.lensnet_train",
    "train_lensnet": "studio.train.lensnet_train",
    # studio.train.token_docs
    "TokenDoc": "studio.train.token_docs",
    "tokenize_text": "studio.train.token_docs",
    # studio.train.wc_nll
    "wc_scores": "studio.train.wc_nll",
}

__all__, __getattr__, __dir__ = exports(__name__, PUBLIC)
