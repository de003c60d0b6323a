"""Assemble a runnable session from a config and a model spec: model, GistNet, scorer.

A model may come with trained `gistnet.safetensors` and `lensnet.safetensors`: the default model's
ship in `models/default/`, a local folder's lie beside its weights. Without them GistNet starts as
a mean-pool and LensNet at a seeded random init, and the manifest says so. Trained files record the
base model they were trained against (`base_model` in their metadata); loading them against
another model is an error, not a silent mismatch.

`wc.position_mode=auto` is resolved here, once, against the loaded model (compact for a finite
trained context), so that every session, the manifest and the app see the mode actually used.
This module makes no decisions of its own: it only loads and wires.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from contract.config import RunConfig
from engine.gistnet import GistNet, read_meta
from engine.model import BaseModel
from engine.model_loader import ModelLoadError, load_model
from engine.scorers import build_scorer
from engine.session import Session

GISTNET_FILE = "gistnet.safetensors"
LENSNET_FILE = "lensnet.safetensors"
UNBOUNDED_CONTEXT = 1 << 20  # a model whose trained context is at least this long reads global positions


@dataclass
class Engine:
    cfg: RunConfig  # as used: position_mode resolved
    model: BaseModel
    gistnet: GistNet
    scorer: object
    weights: dict  # which GistNet / LensNet weights were used: a file path or "random-init"
    base_identity: str  # what trained nets must record as `base_model` (engine.default_model.model_identity)

    def session(self, sink, input_name: str = "-", cfg: RunConfig | None = None, scorer=None) -> Session:
        """A session over this engine's model and GistNet; `cfg`/`scorer` override the engine's own."""
        return Session(cfg or self.cfg, self.model, self.gistnet, scorer or self.scorer, sink, input_name)

    def scorer_for(self, cfg: RunConfig):
        """The scorer `cfg` names, reusing the engine's trained LensNet when that is the one asked for."""
        if cfg.scorer.name == self.cfg.scorer.name == "lensnet":
            return self.scorer
        return build_scorer(cfg, d_embed=self.model.hidden_size)


def nets_dir(spec: str) -> Path | None:
    """Where a model spec's trained GistNet/LensNet live (None for the tiny test model)."""
    if spec == "tiny":
        return None
    if spec == "default":
        from engine.default_model import NETS_DIR

        return NETS_DIR
    return Path(spec).expanduser()


def resolve_positions(cfg: RunConfig, model: BaseModel) -> RunConfig:
    """`cfg` with `wc.position_mode=auto` replaced by what the model needs (compact for a finite context)."""
    if cfg.wc.position_mode != "auto":
        return cfg
    finite = (model.max_positions or UNBOUNDED_CONTEXT) < UNBOUNDED_CONTEXT
    mode = "compact" if finite else "global"
    return dataclasses.replace(cfg, wc=dataclasses.replace(cfg.wc, position_mode=mode))


def check_base(path: Path, what: str, identity: str) -> None:
    """Refuse trained weights made for another base model (files without the record are accepted)."""
    meta = read_meta(path, what)
    trained = meta.get("base_model")
    if trained and trained != identity:
        raise ModelLoadError(
            f"{what} weights {path} were trained against base model {trained[:40]}, not the loaded one "
            f"({identity[:40]}); retrain them (scripts/train_default.sh) or remove the file"
        )


def build_engine(cfg: RunConfig, model_spec: str = "tiny", device: str = "auto", dtype: str = "auto") -> Engine:
    """Load everything a session needs. Raises ModelLoadError / ValueError with one-line messages."""
    from engine.default_model import model_identity

    model = load_model(model_spec, device=device, seed=cfg.scorer.seed, dtype=dtype)
    cfg = resolve_positions(cfg, model)
    folder = nets_dir(model_spec)
    identity = model_identity(model_spec, folder if model_spec != "default" else None)
    d = model.hidden_size
    gist_path = folder / GISTNET_FILE if folder else None
    if gist_path is not None and gist_path.is_file():
        check_base(gist_path, "GistNet", identity)
        gistnet = GistNet.load(gist_path, d, cfg.gistnet, cfg.tree.max_lod, cfg.tree.block_size)
    else:
        gistnet, gist_path = GistNet(d, cfg.gistnet, cfg.tree.max_lod, cfg.tree.block_size, seed=cfg.scorer.seed), None
    gistnet = gistnet.to(model.device).eval()
    lensnet, lens_path = None, None
    if cfg.scorer.name == "lensnet" and folder is not None and (folder / LENSNET_FILE).is_file():
        from engine.lensnet import LensNet

        lens_path = folder / LENSNET_FILE
        check_base(lens_path, "LensNet", identity)
        lensnet = LensNet.load(lens_path, d, cfg.lensnet).eval()
    scorer = build_scorer(cfg, d_embed=d, lensnet=lensnet)
    if cfg.scorer.name == "lensnet":  # beside the model, like GistNet (it reads vectors the model's device made)
        scorer.lensnet.to(model.device)
    weights = {
        "gistnet": str(gist_path) if gist_path else "random-init",
        "lensnet": (str(lens_path) if lens_path else "random-init") if cfg.scorer.name == "lensnet" else None,
    }
    return Engine(cfg, model, gistnet, scorer, weights, identity)
