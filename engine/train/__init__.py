"""Training of the nets shipped beside the default base model: corpus, GistNet, LensNet.

The base model itself is not trained here: it is SmolLM2-135M-Instruct (engine/default_model.py).
`python -m engine.train corpus` builds the corpus; `engine.train.gistnet_train` and
`engine.train.lensnet_train` train the nets against a frozen base model; `scripts/train_default.sh`
runs all three. `engine.train.common` holds the shared loop helpers (resumable safetensors
checkpoints, budgets, progress logging). Nothing here is imported by the engine at run time.
"""
