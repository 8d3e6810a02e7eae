"""Data: text sources -> documents -> one cached, memory-mapped token array per split.

Sources: a text file, a folder of text files (recursive glob; a folder with no ``.txt`` files is
read for parquet, Arrow or JSONL files), a JSONL file with a ``text`` field, a parquet or Arrow
IPC file with a ``text`` column, a directory saved by ``datasets``' ``save_to_disk`` (tables.py;
``data.text_field`` names another field or column), or ``stdlib`` (the Python standard library
of the running interpreter). Documents are joined with the end-of-text token. The split is
deterministic: a single document is cut by position (last ``val_fraction`` of its characters,
at the next newline); several documents are split by a hash of their name, so adding a file
never moves another one between splits; a saved DatasetDict's train/validation/test splits are
kept.

Documents stream (``split_texts``) into worker processes (encode.py) and their ids are appended
to each split's file in order, so memory stays flat for corpora larger than memory (a single
text file, one document, is read whole). Token arrays are cached under ``$TEXTDIFFUSION_CACHE``
(default ``~/.cache/textdiffusion``), keyed by the source files (path, size, mtime), the split
rule and the tokenizer, and read back with ``np.memmap``: a corpus is tokenized once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from ..fileio import CONVERT, read_utf8
from ..tokenizers import Tokenizer
from .encode import encode_stream, peeked
from .tables import TABLE_SUFFIXES, dataset_rows, is_saved_dataset, table_rows

SPLITS = ("train", "val", "test")
STDLIB_EXCLUDE = {"test", "tests", "idle_test", "site-packages", "__pycache__"}




@dataclass
class Document:
    name: str  # stable key used by the hash split
    text: str
    label: str | None = None  # JSONL records may carry a class label
    split: str | None = None  # fixed by the source (a saved DatasetDict's splits); None: by hash


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files() -> list[Path]:
    root = stdlib_root()
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if not STDLIB_EXCLUDE.intersection(rel.parts[:-1]):
            files.append(path)
    return files


FALLBACK_GLOBS = ("**/*.parquet", "**/*.arrow", "**/*.jsonl")  # a folder with no text files under the default glob


def _source_files(path: str, glob: str) -> list[Path]:
    if path == "stdlib":
        return _stdlib_files()
    p = Path(path)
    if not p.exists():
        raise DataError(f"data not found: {path}")
    if is_saved_dataset(p):
        return sorted(f for f in p.rglob("*") if f.is_file())
    if p.is_dir():
        files = sorted(f for f in p.glob(glob) if f.is_file())
        for fallback in FALLBACK_GLOBS if not files and glob == DataConfig.glob else ():
            files = sorted(f for f in p.glob(fallback) if f.is_file())
            if files:
                break
        if not files:
            raise DataError(f"no files match {glob!r} under {path} (set data.glob)")
        return files
    return [p]


def _read_text(path: Path) -> str:
    """UTF-8 text; a leading byte-order mark (Windows editors write one) is not text. A file that
    is not UTF-8 is a DataError naming its first bad byte and the fix."""
    try:
        return read_utf8(path, DataError)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None


def _jsonl_documents(f: Path, field: str) -> Iterator[Document]:
    """One document per line, read a line at a time (constant memory for any file size). Each
    line is decoded on its own, so a line that is not UTF-8 is named exactly."""
    try:
        # bytes split on b"\n" only, as JSON strings may hold raw U+2028/U+2029 (and "\r")
        with f.open("rb") as fh:
            for n, raw in enumerate(fh):
                try:
                    line = raw.decode("utf-8-sig" if n == 0 else "utf-8")  # a leading byte-order mark is not text
                except UnicodeDecodeError:
                    raise DataError(f"{f} is not UTF-8 text (line {n + 1}): convert it to UTF-8 first, e.g. "
                                    f"{CONVERT}") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    text = record[field]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataError(f"{f}:{n + 1}: expected a JSON object with a {field!r} field") from None
                label = record.get("label")
                if not isinstance(text, str) or not (label is None or isinstance(label, (str, int))):
                    raise DataError(f"{f}:{n + 1}: {field!r} must be a string (and 'label' a string)")
                yield Document(f"{f.name}:{n}", text, None if label is None else str(label))
    except OSError as exc:
        raise DataError(f"cannot read {f}: {exc.strerror}") from None


def iter_documents(path: str, glob: str = "**/*.txt", max_docs: int = 0,
                   text_field: str = "text") -> Iterator[Document]:
    """The documents of a source, in a stable order, one at a time: a text file is one document;
    a JSONL line, a parquet or Arrow row, or a row of a saved ``datasets`` directory is one."""
    files = _source_files(path, glob)
    root = stdlib_root() if path == "stdlib" else Path(path)
    if is_saved_dataset(root):
        docs: Iterator[Document] = (Document(name, text, split=split)
                                    for split, name, text in dataset_rows(root, text_field))
    else:
        docs = _file_documents(files, root, text_field)
    for n, doc in enumerate(docs):
        if max_docs and n >= max_docs:
            return
        yield doc


def _file_documents(files: list[Path], root: Path, field: str) -> Iterator[Document]:
    for f in files:
        if f.suffix == ".jsonl":
            yield from _jsonl_documents(f, field)
        elif f.suffix in TABLE_SUFFIXES:
            yield from (Document(f"{f.name}:{row}", text) for row, text in table_rows(f, field))
        else:
            yield Document(f.relative_to(root).as_posix() if root.is_dir() else f.name, _read_text(f))


def read_documents(path: str, glob: str = "**/*.txt", max_docs: int = 0, text_field: str = "text") -> list[Document]:
    """All documents of a source, in a stable order (in memory: see ``iter_documents``)."""
    docs = list(iter_documents(path, glob, max_docs, text_field))
    if not any(d.text.strip() for d in docs):
        raise DataError(f"no text in {path} (empty corpus)")
    return docs


def split_of(name: str, val_fraction: float, test: bool) -> str:
    """Hash split by document name: sha1 % 100 < 5 -> test (stdlib only), < 5 + val -> val."""
    bucket = int(hashlib.sha1(name.encode()).hexdigest(), 16) % 100
    test_pct = 5 if test else 0
    if bucket < test_pct:
        return "test"
    if bucket < test_pct + round(100 * val_fraction):
        return "val"
    return "train"


def split_documents(
    docs: list[Document], val_fraction: float, stdlib: bool, cut_at_newline: bool = True
) -> dict[str, list[str]]:
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    if len(docs) == 1:
        text = docs[0].text
        cut = int(len(text) * (1 - val_fraction))
        newline = text.find("\n", cut) if cut_at_newline else -1
        cut = newline + 1 if newline >= 0 else cut
        splits["train"].append(text[:cut])
        splits["val"].append(text[cut:])
        return splits
    for d in docs:
        splits[split_of(d.name, val_fraction, test=stdlib)].append(d.text)
    if not splits["val"]:  # tiny corpora: make sure validation is never empty
        splits["val"].append(splits["train"].pop())
    return splits


def split_texts(data: DataConfig) -> Iterator[tuple[str, str]]:
    """(split, text) of every document of ``data``, streamed, by the rules of ``split_documents``:
    a single document is cut by position; otherwise a document's split is fixed by its source or
    hashed from its name, and when no document lands in validation, the last training document
    moves there (so the last training document is held back until the end)."""
    docs = iter_documents(data.path, data.glob, data.max_docs, data.text_field)
    stdlib = data.path == "stdlib"
    first, second = next(docs, None), next(docs, None)
    if first is None or (second is None and not first.text.strip()):
        raise DataError(f"no text in {data.path} (empty corpus)")
    if second is None and first.split is None:
        for name, texts in split_documents([first], data.val_fraction, stdlib, data.cut_at_newline).items():
            yield from ((name, t) for t in texts)
        return
    held, val_seen, has_text = None, False, False
    for d in peeked(first, second, docs):
        has_text = has_text or bool(d.text.strip())
        split = d.split or split_of(d.name, data.val_fraction, test=stdlib)
        if split != "train":
            val_seen = val_seen or split == "val"
            yield split, d.text
            continue
        if held is not None:
            yield "train", held
        held = d.text
    if not has_text:
        raise DataError(f"no text in {data.path} (empty corpus)")
    if held is not None:
        yield ("train" if val_seen else "val"), held


def text_splits(data: DataConfig) -> dict[str, list[str]]:
    """The documents of each split, as text (in memory: ``split_texts`` streams them)."""
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    for name, text in split_texts(data):
        splits[name].append(text)
    return splits


def _cache_root() -> Path:
    return Path(os.environ.get("TEXTDIFFUSION_CACHE", Path.home() / ".cache" / "textdiffusion"))


def _cache_key(path: str, split_rule: str, tok_path: Path, glob: str) -> str:
    h = hashlib.sha1()
    files = _source_files(path, glob)
    source = path if path == "stdlib" else str(Path(path).resolve())
    h.update(f"{source}|{split_rule}|{sys.version_info[:2]}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode())
    h.update(tok_path.read_bytes())
    return h.hexdigest()[:20]


def load_token_splits(data: DataConfig, tokenizer: Tokenizer, tokenizer_file: Path, *,
                      progress: bool = False) -> dict[str, np.ndarray]:
    """Token arrays (memory-mapped) for every split, tokenizing on the first call only: the
    documents stream through ``data.workers`` processes a chunk at a time and are appended to
    the split's file in order, so memory stays flat for any corpus size."""
    rule = f"{data.glob}|{data.max_docs}|{data.val_fraction}|{data.cut_at_newline}"
    if data.text_field != "text":
        rule += f"|{data.text_field}"
    key = _cache_key(data.path, rule, tokenizer_file, data.glob)
    folder = _cache_root() / "tokens" / key
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32)
    if not (folder / "done").exists():
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            files = {name: (tmp / f"{name}.bin").open("wb") for name in SPLITS}
            try:
                for arrays in encode_stream(split_texts(data), tokenizer, dtype,
                                            workers=data.workers, progress=progress, label=str(data.path)):
                    for name, arr in arrays.items():
                        arr.tofile(files[name])
            finally:
                for fh in files.values():
                    fh.close()
            (tmp / "done").write_text(json.dumps({"source": data.path, "dtype": dtype.name}))
        except OSError as exc:  # a full disk: numpy says only "N requested and M written"
            shutil.rmtree(tmp, ignore_errors=True)
            # numpy's short write has no errno: "N requested and M written" is a full disk (or a file size limit)
            reason = exc.strerror or f"the disk is full, or a file size limit was reached: {exc}"
            raise DataError(f"could not write the token cache in {_cache_root()} ({reason}): free some "
                            f"space, or point TEXTDIFFUSION_CACHE at a folder with room") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    out = {}
    for name in SPLITS:
        f = folder / f"{name}.bin"
        n = f.stat().st_size // dtype.itemsize
        out[name] = np.memmap(f, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype=dtype)
    return out
