import json

import numpy as np
import pytest
import torch

from textdiffusion.config import DataConfig
from textdiffusion.data import (
    DataError,
    WindowSampler,
    eval_windows,
    load_token_splits,
    read_documents,
    split_documents,
    stdlib_root,
)
from textdiffusion.data.sources import _stdlib_files
from textdiffusion.tokenizers import CharTokenizer


def test_sources_file_folder_jsonl(tmp_path):
    (tmp_path / "one.txt").write_text("hello\nworld\n")
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("first")
    (folder / "sub" / "b.txt").write_text("second")
    (folder / "skip.md").write_text("not matched")
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"text": "x1"}) + "\n\n" + json.dumps({"text": "x2", "id": 3}) + "\n")

    assert [d.text for d in read_documents(str(tmp_path / "one.txt"))] == ["hello\nworld\n"]
    assert sorted(d.text for d in read_documents(str(folder), "**/*.txt")) == ["first", "second"]
    assert [d.text for d in read_documents(str(jsonl))] == ["x1", "x2"]
    # raw U+2028 inside a JSON string is valid JSON and must not split the record
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"text": "a\u2028b"}, ensure_ascii=False) + "\n")
    assert [d.text for d in read_documents(str(raw))] == ["a\u2028b"]


def test_bad_sources(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_documents(str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty"):
        read_documents(str(tmp_path / "empty.txt"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        read_documents(str(tmp_path / "bad.jsonl"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(DataError, match="UTF-8"):
        read_documents(str(tmp_path / "bin.txt"))


def test_split_is_deterministic():
    from textdiffusion.data import Document

    text = "".join(f"line {i}\n" for i in range(1000))
    s = split_documents([Document("f", text)], 0.1, stdlib=False)
    assert s["train"][0] + s["val"][0] == text and s["val"][0].startswith("line ")
    assert abs(len(s["val"][0]) / len(text) - 0.1) < 0.01
    docs = [Document(f"doc{i}.txt", f"text {i}") for i in range(400)]
    a = split_documents(docs, 0.1, stdlib=True)
    b = split_documents(list(reversed(docs)), 0.1, stdlib=True)
    assert sorted(a["val"]) == sorted(b["val"]) and len(a["test"]) > 0 and len(a["val"]) > 0


def test_stdlib_source_excludes_tests():
    files = _stdlib_files()
    assert len(files) > 100
    rels = [f.relative_to(stdlib_root()).parts for f in files]
    assert not any({"test", "tests", "idle_test", "site-packages"} & set(parts[:-1]) for parts in rels)


def test_tokens_cached_as_memmap(tmp_path, monkeypatch):
    (tmp_path / "c.txt").write_text("abcabc\n" * 200)
    tok = CharTokenizer.train(["abc\n"])
    tok.save(tmp_path / "tok.json")
    cfg = DataConfig(path=str(tmp_path / "c.txt"), val_fraction=0.1)
    first = load_token_splits(cfg, tok, tmp_path / "tok.json")
    assert isinstance(first["train"], np.memmap)
    assert len(first["train"]) + len(first["val"]) == 1400 + 2  # one end-of-text per split
    # second call must not read the corpus again
    monkeypatch.setattr("textdiffusion.data.sources.read_documents", lambda *a, **k: pytest.fail("re-tokenized"))
    again = load_token_splits(cfg, tok, tmp_path / "tok.json")
    assert np.array_equal(first["train"], again["train"])


def test_windows():
    tokens = np.arange(1000, dtype=np.uint16)
    s = WindowSampler(tokens, 16, 4, seed=0)
    b = s.next()
    assert b.shape == (4, 17) and b.dtype == torch.int64
    assert ((b[:, 1:] - b[:, :-1]) == 1).all()  # contiguous windows
    w = eval_windows(tokens, 16)
    assert w.shape == (62, 17) and torch.equal(w[1, 0], w[0, -1])  # each window's context is the previous token
    with pytest.raises(DataError):
        WindowSampler(tokens[:10], 16, 4, seed=0)
