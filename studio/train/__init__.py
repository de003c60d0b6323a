"""Training of the nets shipped beside the default base model: corpus, GistNet, LensNet.

The base model itself is not trained here: it is SmolLM2-135M-Instruct (engine/default_model.py).
`python -m studio.train corpus` builds the corpus; `studio.train.gistnet_train` and
`studio.train.lensnet_train` train the nets against a frozen base model; `scripts/train_default.sh`
runs all three. `studio.train.common` holds the shared loop helpers (resumable safetensors
checkpoints, budgets, progress logging). Nothing here is imported by the engine at run time.
"""
