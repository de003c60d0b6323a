"""The default model end to end: set-up's conversion (checked and reused), one-line errors for a damaged
cache or a wrong GGUF, offline loading with its trained nets, and a short recording through the CLI.

Conversion and integrity checks run on small stand-in files; the tests marked `default_model` load
the real SmolLM2-135M (converted by `scripts/setup.sh`) and run in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

import engine.default_model as dm
from engine import ModelLoadError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "sample.txt"


def _fake_conversion(folder: Path) -> Path:
    """A converted-looking folder with a tiny weights file and its record."""
    import torch

    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(4)}, str(folder / dm.WEIGHTS_FILE))
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")
    info = {"source": {"sha256": dm.SOURCE.sha256}, "weights_sha256": dm.sha256_file(folder / dm.WEIGHTS_FILE),
            "weights_bytes": (folder / dm.WEIGHTS_FILE).stat().st_size}  # fmt: skip
    (folder / dm.CONVERSION_FILE).write_text(json.dumps(info))
    return folder


def test_check_passes_then_catches_damage_in_one_line(tmp_path):
    f = _fake_conversion(tmp_path / "conv")
    assert dm.check_conversion(f)["weights_bytes"] > 0
    assert (f / dm.STAMP_FILE).is_file()  # verified once; later checks only stat the file
    w = f / dm.WEIGHTS_FILE
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed: the stamp no longer matches, the hash catches it
    w.write_bytes(bytes(data))
    os.utime(w, ns=(w.stat().st_atime_ns, w.stat().st_mtime_ns + 1_000_000_000))
    with pytest.raises(ModelLoadError, match=r"damaged \(SHA-256 mismatch\); run `bash scripts/setup.sh`") as e:
        dm.check_conversion(f)
    assert "\n" not in str(e.value)
    w.write_bytes(bytes(data[:10]))
    with pytest.raises(ModelLoadError, match="damaged .*bytes"):
        dm.check_conversion(f)
    (f / dm.CONVERSION_FILE).write_text("{not json")
    with pytest.raises(ModelLoadError, match="corrupt"):
        dm.check_conversion(f)
    shutil.rmtree(f)
    with pytest.raises(ModelLoadError, match="not converted yet"):
        dm.check_conversion(f)


def test_a_gguf_with_the_wrong_hash_is_refused_before_loading(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(ModelLoadError, match="SHA-256 .* expected .*reinstall it with `bash scripts/setup.sh`"):
        dm.convert(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ModelLoadError, match="does not exist"):
        dm.find_gguf(tmp_path / "missing.gguf")


def test_cli_check_reports_a_missing_conversion_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "engine.default_model", "--check", "--out", str(tmp_path / "none")],
                       capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "not converted yet" in r.stderr


@pytest.mark.default_model
def test_setup_converted_once_and_default_loads_offline():
    info = dm.check_conversion()  # set-up converted it; checking does not convert again
    assert info["source"]["sha256"] == dm.SOURCE.sha256 and info["parameters"] == 134_515_008
    again = dm.ensure_converted()
    assert again["converted_now"] is False
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MCS_THREADS": "fixed"}
    r = subprocess.run([sys.executable, "-m", "engine", "run", "--quiet", "--input", str(SAMPLE), "--model", "default",
                        "--device", "cpu", "--set", "session.max_tokens=600", "--set", "wc.w_max=320"],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["model"] == "default" and out["tokens"] == 600 and 0 < out["mean_nll"] < 6
    if (dm.NETS_DIR / "gistnet.safetensors").is_file():
        assert out["weights"]["gistnet"].endswith("models/default/gistnet.safetensors")


@pytest.mark.default_model
def test_nets_trained_for_another_base_model_are_refused(tmp_path, monkeypatch):
    from contract import RunConfig
    from engine import GistNet, build_engine

    nets = tmp_path / "nets"
    nets.mkdir()
    GistNet(576, RunConfig().gistnet, 2, 32).save(nets / "gistnet.safetensors", {"base_model": "gguf-sha256:other"})
    monkeypatch.setattr(dm, "NETS_DIR", nets)
    with pytest.raises(ModelLoadError, match="trained against base model gguf-sha256:other"):
        build_engine(RunConfig(), "default", "cpu")
