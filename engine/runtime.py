"""Assemble a runnable session from a config and a model spec: model, GistNet, scorer.

A model folder may carry trained `gistnet.safetensors` and `lensnet.safetensors` beside the base
model's weights (the shipped default model does); without them GistNet starts as a mean-pool and
LensNet at a seeded random init, and the manifest says so. This module makes no decisions of its
own: it only loads and wires.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.config import RunConfig
from engine.gistnet import GistNet
from engine.model import DEFAULT_MODEL_DIR, BaseModel, load_model
from engine.scorers import build_scorer
from engine.session import Session

GISTNET_FILE = "gistnet.safetensors"
LENSNET_FILE = "lensnet.safetensors"


@dataclass
class Engine:
    cfg: RunConfig
    model: BaseModel
    gistnet: GistNet
    scorer: object
    weights: dict  # which GistNet / LensNet weights were used: a file path or "random-init"

    def session(self, sink, input_name: str = "-") -> Session:
        return Session(self.cfg, self.model, self.gistnet, self.scorer, sink, input_name)


def _model_dir(spec: str) -> Path | None:
    if spec == "tiny":
        return None
    return DEFAULT_MODEL_DIR if spec == "default" else Path(spec).expanduser()


def build_engine(cfg: RunConfig, model_spec: str = "tiny", device: str = "auto") -> Engine:
    """Load everything a session needs. Raises ModelLoadError / ValueError with one-line messages."""
    model = load_model(model_spec, device=device, seed=cfg.scorer.seed)
    folder = _model_dir(model_spec)
    d = model.hidden_size
    gist_path = folder / GISTNET_FILE if folder else None
    if gist_path is not None and gist_path.is_file():
        gistnet = GistNet.load(gist_path, d, cfg.gistnet, cfg.tree.max_lod, cfg.tree.block_size)
    else:
        gistnet, gist_path = GistNet(d, cfg.gistnet, cfg.tree.max_lod, cfg.tree.block_size, seed=cfg.scorer.seed), None
    gistnet = gistnet.to(model.device).eval()
    lensnet, lens_path = None, None
    if cfg.scorer.name == "lensnet" and folder is not None and (folder / LENSNET_FILE).is_file():
        from engine.lensnet import LensNet

        lens_path = folder / LENSNET_FILE
        lensnet = LensNet.load(lens_path, d, cfg.lensnet).eval()
    scorer = build_scorer(cfg, d_embed=d, lensnet=lensnet)
    weights = {
        "gistnet": str(gist_path) if gist_path else "random-init",
        "lensnet": (str(lens_path) if lens_path else "random-init") if cfg.scorer.name == "lensnet" else None,
    }
    return Engine(cfg, model, gistnet, scorer, weights)
