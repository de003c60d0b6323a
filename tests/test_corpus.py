"""Corpus builder: which files count, deterministic split, long documents reserved for test."""

from __future__ import annotations

import json

import pytest

from studio.train import SPLITS, CorpusConfig, assign_splits, build_corpus, hash_unit, iter_documents, read_split


@pytest.fixture()
def fake_stdlib(tmp_path):
    """A small stand-in for the standard library folder, with every kind of file the builder must judge."""
    root = tmp_path / "lib"
    (root / "json").mkdir(parents=True)
    (root / "site-packages" / "pkg").mkdir(parents=True)
    (root / "pydoc_data").mkdir()
    (root / "__pycache__").mkdir()
    for i in range(40):
        (root / f"mod{i:02d}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * (1 + i))
    (root / "json" / "decoder.py").write_text("import re\n" * 50)
    (root / "big.py").write_text("x = 1\n" * 5000)  # 30k chars: "long" under long_chars=20_000
    (root / "huge.py").write_text("y = 2\n" * 8000)
    (root / "site-packages" / "pkg" / "a.py").write_text("print('third party')\n")
    (root / "_sysconfigdata__linux.py").write_text("build_time_vars = {}\n")
    (root / "latin1.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    (root / "empty.py").write_text("\n")
    (root / "__pycache__" / "x.py").write_text("cached = 1\n")
    (root / "pydoc_data" / "topics.py").write_text(
        "topics = {'assert': 'The assert statement\\n', 'if': 'The if\\n'}\n"
    )
    return root


def test_documents_are_the_right_files(fake_stdlib):
    names = [d.name for d in iter_documents(CorpusConfig(stdlib=str(fake_stdlib)))]
    assert names == sorted(names)
    assert "json/decoder.py" in names and "mod00.py" in names
    assert "pydoc_data/topics/assert" in names and "pydoc_data/topics/if" in names
    for excluded in ("site-packages/pkg/a.py", "_sysconfigdata__linux.py", "latin1.py", "empty.py"):
        assert excluded not in names
    assert not any("__pycache__" in n or n == "pydoc_data/topics.py" for n in names)


def test_build_is_deterministic_and_complete(fake_stdlib, tmp_path):
    cfg = CorpusConfig(stdlib=str(fake_stdlib), long_chars=20_000, long_test=1)
    m1 = build_corpus(cfg, tmp_path / "a")
    m2 = build_corpus(cfg, tmp_path / "b")
    for split in SPLITS:
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
    assert m1["documents"] == m2["documents"]
    # every document is in exactly one split, and the split files hold exactly those documents
    by_split = {s: [n for n, _ in read_split(tmp_path / "a", s)] for s in SPLITS}
    assert sorted(sum(by_split.values(), [])) == sorted(e["name"] for e in m1["documents"])
    for e in m1["documents"]:
        assert e["name"] in by_split[e["split"]]
        if e["split"] == "test":  # test documents also exist as plain files for `engine run --input`
            assert (tmp_path / "a" / e["file"]).read_text() == dict(read_split(tmp_path / "a", "test"))[e["name"]]
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["totals"] == m1["totals"]


def test_split_depends_only_on_the_name():
    cfg = CorpusConfig(long_test=0)
    names = {f"pkg/mod{i}.py": 100 for i in range(300)}
    full = assign_splits(names, cfg)
    half = assign_splits({n: c for i, (n, c) in enumerate(names.items()) if i % 2}, cfg)
    assert all(full[n] == s for n, s in half.items())
    assert assign_splits(names, CorpusConfig(long_test=0, salt="other")) != full


def test_split_fractions_roughly_match():
    cfg = CorpusConfig(validation_fraction=0.1, test_fraction=0.1, long_test=0)
    splits = assign_splits({f"f{i}.py": 1 for i in range(4000)}, cfg)
    for s, want in (("test", 0.1), ("validation", 0.1), ("train", 0.8)):
        assert abs(list(splits.values()).count(s) / 4000 - want) < 0.03
    assert 0.0 <= hash_unit("a.py", "salt") < 1.0 and hash_unit("a.py", "salt") == hash_unit("a.py", "salt")


def test_long_documents_are_reserved_for_test():
    cfg = CorpusConfig(test_fraction=0.0, validation_fraction=0.0, long_chars=1000, long_test=3)
    lengths = {f"short{i}.py": 10 for i in range(50)} | {f"long{i}.py": 5000 for i in range(5)}
    splits = assign_splits(lengths, cfg)
    assert sum(splits[f"long{i}.py"] == "test" for i in range(5)) == 3
    assert all(splits[f"short{i}.py"] == "train" for i in range(50))


def test_real_stdlib_test_split_has_several_long_documents():
    cfg = CorpusConfig()
    lengths = {d.name: len(d.text) for d in iter_documents(cfg)}
    splits = assign_splits(lengths, cfg)
    long_test = [n for n, c in lengths.items() if c >= cfg.long_chars and splits[n] == "test"]
    assert len(long_test) >= cfg.long_test >= 5
    assert len(lengths) > 1000  # the whole stdlib, not a handful of files
    assert sum(s == "validation" for s in splits.values()) >= 20


def test_bad_config_and_missing_split(tmp_path):
    with pytest.raises(ValueError):
        CorpusConfig(validation_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError):
        CorpusConfig(long_test=-1)
    with pytest.raises(FileNotFoundError, match="missing"):
        list(read_split(tmp_path, "train"))
    with pytest.raises(ValueError, match="split"):
        list(read_split(tmp_path, "dev"))
