"""Corpus of the default model: the Python standard library's source plus its bundled documentation.

Every machine with Python has this text, so the corpus needs no download. Documents:

- every `*.py` file under the standard library folder (`sysconfig` "stdlib"), named by its path
  relative to that folder (`json/decoder.py`), except site-packages, build-specific files
  (`_sysconfigdata*`, `config-*`), files that are not valid UTF-8, and `pydoc_data/topics.py`;
- every topic of `pydoc_data.topics` (the language reference pages that `help()` shows), one
  document each, named `pydoc_data/topics/<topic>`.

Split: by document name alone, so that it is deterministic and the same on every machine and
Python version (a file keeps its split when other files come or go). The name is hashed with
SHA-256 (plus a salt) to u in [0, 1); u < test_fraction -> test, u < test+validation -> validation,
else train. Long documents (at least `long_chars` characters, i.e. tens of thousands of tokens) are
what the long-context evaluation needs, so the `long_test` long documents with the smallest u are
always test; the other long documents follow the ordinary rule.

`build_corpus` writes one folder: `manifest.json` (config, Python version, per-document name,
split, characters, SHA-256, source path), `{train,validation,test}.jsonl` (one `{"name", "text"}`
per line, documents sorted by name) and `test/` with each test document as a plain text file (to
feed `python -m engine run/eval --input`). This module does not tokenize anything.
"""

from __future__ import annotations

import hashlib
import json
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

SPLITS = ("train", "validation", "test")
TOPICS_PREFIX = "pydoc_data/topics/"


@dataclass(frozen=True)
class CorpusConfig:
    stdlib: str = ""  # standard-library folder to read; "" = the running Python's
    include_topics: bool = True  # add the pydoc_data documentation topics as documents
    validation_fraction: float = 0.04  # share of documents (by hash) in the validation split
    test_fraction: float = 0.04  # share of documents (by hash) in the test split
    long_chars: int = 100_000  # a document this long (~25k+ tokens) counts as long
    long_test: int = 8  # long documents always placed in test (smallest hash first)
    salt: str = "megacontext-corpus-v1"  # mixed into the hash; change it to draw another split

    def __post_init__(self) -> None:
        if not (0.0 <= self.validation_fraction < 1.0 and 0.0 <= self.test_fraction < 1.0):
            raise ValueError("corpus split fractions must be in [0, 1)")
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ValueError("corpus validation_fraction + test_fraction must be < 1")
        if self.long_chars < 1 or self.long_test < 0:
            raise ValueError("corpus.long_chars must be >= 1 and corpus.long_test >= 0")


@dataclass(frozen=True)
class Document:
    name: str  # stable relative name, e.g. "json/decoder.py" or "pydoc_data/topics/assert"
    text: str  # the full text
    source: str  # where it came from (absolute file path, or "pydoc_data.topics:<key>")


def stdlib_dir(cfg: CorpusConfig) -> Path:
    return Path(cfg.stdlib or sysconfig.get_paths()["stdlib"]).resolve()


def _excluded(rel: Path) -> bool:
    parts = rel.parts
    return (
        parts[0] in ("site-packages", "dist-packages")
        or parts[0].startswith("config-")
        or rel.name.startswith("_sysconfigdata")
        or "__pycache__" in parts
        or rel.as_posix() == "pydoc_data/topics.py"
    )


def _topics(root: Path) -> dict[str, str]:
    """The pydoc topics of the stdlib at `root`, read as a literal (the file is never executed by us)."""
    import ast

    path = root / "pydoc_data" / "topics.py"
    if not path.is_file():
        return {}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "topics" for t in node.targets):
            return dict(ast.literal_eval(node.value))
    return {}


def iter_documents(cfg: CorpusConfig) -> Iterator[Document]:
    """All documents of the corpus, sorted by name."""
    root = stdlib_dir(cfg)
    if not root.is_dir():
        raise FileNotFoundError(f"standard library folder {root} does not exist")
    docs: dict[str, tuple[Path | None, str]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _excluded(rel) or not path.is_file():
            continue
        try:
            # Some test files are deliberately in other encodings or broken; skip, do not guess.
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue
        if text.strip():
            docs[rel.as_posix()] = (path, text)
    if cfg.include_topics:
        for key, text in _topics(root).items():
            docs[TOPICS_PREFIX + key] = (None, text)
    for name in sorted(docs):
        path, text = docs[name]
        yield Document(name, text, str(path) if path else f"pydoc_data.topics:{name[len(TOPICS_PREFIX) :]}")


def hash_unit(name: str, salt: str) -> float:
    """Deterministic u in [0, 1) for a document name."""
    digest = hashlib.sha256(f"{salt}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_splits(lengths: dict[str, int], cfg: CorpusConfig) -> dict[str, str]:
    """name -> split, from the names and their lengths in characters (see the module docstring)."""
    u = {name: hash_unit(name, cfg.salt) for name in lengths}
    out = {}
    for name in lengths:
        if u[name] < cfg.test_fraction:
            out[name] = "test"
        elif u[name] < cfg.test_fraction + cfg.validation_fraction:
            out[name] = "validation"
        else:
            out[name] = "train"
    long_docs = sorted((n for n, c in lengths.items() if c >= cfg.long_chars), key=lambda n: (u[n], n))
    for name in long_docs[: cfg.long_test]:
        out[name] = "test"
    return out


def _file_name(name: str) -> str:
    return name.replace("/", "__") + ("" if name.endswith(".py") else ".txt")


def build_corpus(cfg: CorpusConfig, out_dir: Path) -> dict:
    """Write the corpus folder (see the module docstring) and return its manifest."""
    out_dir = Path(out_dir)
    docs = list(iter_documents(cfg))
    splits = assign_splits({d.name: len(d.text) for d in docs}, cfg)
    (out_dir / "test").mkdir(parents=True, exist_ok=True)
    for old in (out_dir / "test").iterdir():  # a rebuild must not leave stale test files behind
        old.unlink()
    handles = {s: (out_dir / f"{s}.jsonl").open("w", encoding="utf-8") for s in SPLITS}
    entries = []
    try:
        for d in docs:
            split = splits[d.name]
            handles[split].write(json.dumps({"name": d.name, "text": d.text}, ensure_ascii=False) + "\n")
            entry = {
                "name": d.name,
                "split": split,
                "chars": len(d.text),
                "sha256": hashlib.sha256(d.text.encode("utf-8")).hexdigest(),
                "source": d.source,
            }
            if split == "test":
                entry["file"] = f"test/{_file_name(d.name)}"
                (out_dir / entry["file"]).write_text(d.text, encoding="utf-8")
            entries.append(entry)
    finally:
        for h in handles.values():
            h.close()
    totals = {s: {"documents": 0, "chars": 0} for s in SPLITS}
    for e in entries:
        totals[e["split"]]["documents"] += 1
        totals[e["split"]]["chars"] += e["chars"]
    manifest = {
        "config": asdict(cfg),
        "python": sys.version.split()[0],
        "stdlib": str(stdlib_dir(cfg)),
        "totals": totals,
        "documents": entries,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def read_split(corpus_dir: Path, split: str) -> Iterator[tuple[str, str]]:
    """(name, text) of every document of `split` in a built corpus folder, in name order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    path = Path(corpus_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"corpus split {path} is missing; build it with `python -m studio.train corpus`")
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            yield row["name"], row["text"]
