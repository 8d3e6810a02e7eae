"""Column stores and saved datasets as training data (data/tables.py), and the streaming
tokenizer (data/encode.py): the same token arrays as the in-memory path for any number of
worker processes, memory that does not grow with the corpus."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from commands import in_process

from textdiffusion.config import DataConfig
from textdiffusion.data import (
    DataError,
    iter_documents,
    load_token_splits,
    split_documents,
    split_texts,
    tables,
)
from textdiffusion.data import encode as encode_module
from textdiffusion.tokenizers import CharTokenizer, train_tokenizer

ROWS = [f"row {i}: " + "the quick brown fox " * (1 + i % 5) for i in range(300)]


def _tables(tmp_path):
    table = pa.table({"id": list(range(len(ROWS))), "body": ROWS})
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=64)  # several row groups
    with pa.OSFile(str(tmp_path / "file.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        for batch in table.to_batches(max_chunksize=50):
            w.write_batch(batch)
    with pa.OSFile(str(tmp_path / "stream.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": r}) + "\n" for r in ROWS))
    return tmp_path


def test_parquet_and_arrow_rows_are_the_jsonl_documents(tmp_path, monkeypatch):
    """Every row, in order, from each format (parquet over several row groups, Arrow IPC in the
    file format and in datasets' stream format), named by file and row like JSONL records and
    split by those names. Would catch: a reader that reads only the first row group or
    record batch, or a stream file refused as 'not an Arrow file'."""
    monkeypatch.setattr(tables, "BATCH_ROWS", 50)  # several batches a file
    _tables(tmp_path)
    for name in ("c.jsonl", "c.parquet", "file.arrow", "stream.arrow"):
        docs = list(iter_documents(str(tmp_path / name), text_field="body"))
        assert [d.text for d in docs] == ROWS and [d.name for d in docs] == [f"{name}:{i}" for i in range(300)], name
        got = {"train": [], "val": [], "test": []}
        for split, text in split_texts(DataConfig(path=str(tmp_path / name), text_field="body")):
            got[split].append(text)
        assert got == split_documents(docs, 0.05, stdlib=False) and 5 <= len(got["val"]) <= 30, name


def test_table_errors_name_the_column(tmp_path):
    """A missing column names the columns there are and the flag; a non-text column says what it
    holds; a file that is not parquet says so; none is a traceback."""
    _tables(tmp_path)
    with pytest.raises(DataError, match=r"no column 'text' \(its columns: id, body\): pass --text-field"):
        list(iter_documents(str(tmp_path / "c.parquet")))
    with pytest.raises(DataError, match="column 'id' .* holds int64, not text"):
        list(iter_documents(str(tmp_path / "stream.arrow"), text_field="id"))
    (tmp_path / "bad.parquet").write_text("not parquet at all")
    with pytest.raises(DataError, match="is not a readable parquet file"):
        list(iter_documents(str(tmp_path / "bad.parquet")))


def test_saved_datasetdict_keeps_its_splits(tmp_path):
    """A DatasetDict saved with save_to_disk: its validation rows are exactly the val split and
    its test rows the test split (not re-split by hash); a plain Dataset is split by hash.
    Would catch: the DatasetDict's splits ignored (every row hashed)."""
    import datasets

    train, val, test = ROWS[:200], ROWS[200:260], ROWS[260:]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": train}),
                          "validation": datasets.Dataset.from_dict({"text": val}),
                          "test": datasets.Dataset.from_dict({"text": test})}).save_to_disk(tmp_path / "dd")
    got = {"train": [], "val": [], "test": []}
    for split, text in split_texts(DataConfig(path=str(tmp_path / "dd"))):
        got[split].append(text)
    assert got == {"train": train, "val": val, "test": test}
    datasets.Dataset.from_dict({"text": ROWS}).save_to_disk(tmp_path / "plain")
    flat = list(split_texts(DataConfig(path=str(tmp_path / "plain"))))
    assert sorted(t for _, t in flat) == sorted(ROWS) and 0 < sum(s == "val" for s, _ in flat) < 60
    datasets.DatasetDict({"unsupervised": datasets.Dataset.from_dict({"text": ROWS})}).save_to_disk(tmp_path / "odd")
    with pytest.raises(DataError, match="holds the splits unsupervised: none is train, validation or test"):
        list(split_texts(DataConfig(path=str(tmp_path / "odd"))))


def test_streamed_splits_are_the_in_memory_splits(monkeypatch):
    """The streaming split (the last training document held back, to move to validation when no
    document hashed there) equals split_documents on the list. Would catch: the held-back
    document left out, or always kept in train (a tiny corpus would train with no validation)."""
    import textdiffusion.data.sources as sources
    from textdiffusion.data import Document

    for n in (2, 3, 40):
        docs = [Document(f"d{i}.txt", f"text {i}") for i in range(n)]
        monkeypatch.setattr(sources, "iter_documents", lambda *a, docs=docs, **k: iter(docs))
        got = {"train": [], "val": [], "test": []}
        for split, text in split_texts(DataConfig(path="x", val_fraction=0.1)):
            got[split].append(text)
        assert got == split_documents(docs, 0.1, stdlib=False), n


def test_workers_give_the_same_arrays(tmp_path, monkeypatch):
    """Tokenizing in 2 worker processes, chunks of ~2,000 characters (so dozens of chunks are in
    flight), gives byte-identical arrays to one process, for BPE and char tokenizers. Would
    catch: results written in completion order, the last chunks in flight dropped, a chunk's
    documents of two splits mixed."""
    monkeypatch.setattr(encode_module, "CHUNK_CHARS", 2000)
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": r}) + "\n" for r in ROWS * 3))
    for kind in ("bpe", "char"):
        tok = train_tokenizer(kind, ROWS, 300)
        tok.save(tmp_path / f"{kind}.json")
        arrays = []
        for workers in (1, 2):
            monkeypatch.setenv("TEXTDIFFUSION_CACHE", str(tmp_path / f"cache{kind}{workers}"))
            cfg = DataConfig(path=str(path), workers=workers)
            arrays.append({k: np.array(v) for k, v in load_token_splits(cfg, tok, tmp_path / f"{kind}.json").items()})
        one, two = arrays
        assert len(one["train"]) > 10_000 and len(one["val"]) > 0
        for split in one:
            assert np.array_equal(one[split], two[split]), (kind, split)
        want = split_documents(list(iter_documents(str(path))), 0.05, stdlib=False)
        assert np.array_equal(one["val"], tok.encode_documents(want["val"]))


def test_memory_stays_flat(tmp_path):
    """Tokenizing a 64 MB JSONL corpus raises the process's peak memory by less than a quarter of
    the corpus (the old path held every text and an int64 array of every id: over 8x the
    corpus). Would catch: the documents or ids gathered into one list before writing."""
    path = tmp_path / "big.jsonl"
    line = json.dumps({"text": "abcdefgh " * 450}) + "\n"  # ~4 KB a record
    with path.open("w") as fh:
        for _ in range((64 << 20) // len(line)):
            fh.write(line)
    script = textwrap.dedent(f"""
        import os, resource, sys
        os.environ["TEXTDIFFUSION_CACHE"] = {str(tmp_path / "cache")!r}
        from pathlib import Path
        from textdiffusion.config import DataConfig
        from textdiffusion.data import load_token_splits
        from textdiffusion.tokenizers import CharTokenizer
        tok = CharTokenizer.train(["abcdefgh "])
        tok.save(Path({str(tmp_path)!r}) / "tok.json")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        arrays = load_token_splits(DataConfig(path={str(path)!r}, workers=1), tok, Path({str(tmp_path)!r}) / "tok.json")
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) * 1024, len(arrays["train"]) + len(arrays["val"]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    grown, tokens = map(int, out.stdout.split())
    size = path.stat().st_size
    assert tokens > 0.95 * size  # every character (one token each) was tokenized
    assert grown < size / 4, f"peak memory grew by {grown / 2**20:.0f} MB for a {size / 2**20:.0f} MB corpus"


def test_train_on_parquet_and_saved_dataset(tmp_path):
    """`train --data FILE.parquet --text-field body` and `--data SAVED_DIR` train (a few steps)
    and generate; a wrong --text-field is one line and exit 2."""
    import datasets

    _tables(tmp_path)
    datasets.Dataset.from_dict({"text": ROWS}).save_to_disk(tmp_path / "saved")
    tiny = ["--set", "train.max_steps=3", "--set", "model.n_layer=1", "--set", "model.d_model=32",
            "--set", "model.n_head=2", "--set", "model.context=32", "--set", "train.batch_size=4",
            "--quiet"]
    for data, extra, out in [(tmp_path / "c.parquet", ["--text-field", "body"], "p"), (tmp_path / "saved", [], "s")]:
        r = in_process("train", "--data", str(data), *extra, "--out", str(tmp_path / out), *tiny)
        assert r.returncode == 0, r.stderr
        assert json.loads((tmp_path / out / "config.json").read_text())["data"]["text_field"] == (extra[1] if extra else "text")
        g = in_process("generate", str(tmp_path / out), "--length", "16", "--steps", "4")
        assert g.returncode == 0 and g.stdout.strip(), g.stderr
    bad = in_process("train", "--data", str(tmp_path / "c.parquet"), "--out", str(tmp_path / "b"), *tiny)
    assert bad.returncode == 2 and "no column 'text'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_char_tokenizer_trains_on_a_stream():
    """CharTokenizer.train reads a generator once (the corpus is streamed, never listed)."""
    tok = CharTokenizer.train(t for t in ["ab", "bc"])
    assert tok.decode(tok.encode("abc")) == "abc"
