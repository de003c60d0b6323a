"""Training scripts of the shipped models: corpus builder, tokenizer, base LM (and GistNet/LensNet).

Run them with `python -m engine.train COMMAND ...` or regenerate everything with
`scripts/train_default.sh`. `engine.train.common` holds the shared loop helpers (resumable
safetensors checkpoints, budgets, progress logging). Nothing here is imported by the engine at run
time; the engine only loads the finished Hugging Face folder `models/default`.
"""
