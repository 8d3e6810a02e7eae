"""Data: text sources -> documents -> one cached, memory-mapped token array per split.

Sources: a text file, a folder of text files (recursive glob), a JSONL file with a ``text``
field, or ``stdlib`` (the Python standard library of the running interpreter). Documents are
joined with the end-of-text token. The split is deterministic: a single file is cut by position
(last ``val_fraction`` of its characters, at the next newline); several documents are split by a
hash of their name, so adding a file never moves another one between splits.

Token arrays are cached under ``$TEXTDIFFUSION_CACHE`` (default ``~/.cache/textdiffusion``),
keyed by the source files (path, size, mtime), the split rule and the tokenizer, and read back
with ``np.memmap``: a corpus is tokenized once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from ..tokenizers import Tokenizer

SPLITS = ("train", "val", "test")
STDLIB_EXCLUDE = {"test", "tests", "idle_test", "site-packages", "__pycache__"}




@dataclass
class Document:
    name: str  # stable key used by the hash split
    text: str
    label: str | None = None  # JSONL records may carry a class label


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


def _source_files(path: str, glob: str) -> list[Path]:
    if path == "stdlib":
        return _stdlib_files()
    p = Path(path)
    if not p.exists():
        raise DataError(f"data not found: {path}")
    if p.is_dir():
        files = sorted(f for f in p.glob(glob) if f.is_file())
        if not files:
            raise DataError(f"no files match {glob!r} under {path} (set data.glob)")
        return files
    return [p]


def _read_text(path: Path) -> str:
    """UTF-8 text; a leading byte-order mark (Windows editors write one) is not text."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None


def read_documents(path: str, glob: str = "**/*.txt", max_docs: int = 0) -> list[Document]:
    """All documents of a source, in a stable order."""
    files = _source_files(path, glob)
    docs: list[Document] = []
    root = stdlib_root() if path == "stdlib" else Path(path)
    for f in files:
        if f.suffix == ".jsonl":
            # split on "\n" only: JSON strings may hold raw U+2028/U+2029, which splitlines() cuts at
            for n, line in enumerate(_read_text(f).split("\n")):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    text = record["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataError(f"{f}:{n + 1}: expected a JSON object with a 'text' field") from None
                label = record.get("label")
                if not isinstance(text, str) or not (label is None or isinstance(label, (str, int))):
                    raise DataError(f"{f}:{n + 1}: 'text' must be a string (and 'label' a string)")
                docs.append(Document(f"{f.name}:{n}", text, None if label is None else str(label)))
        else:
            name = f.relative_to(root).as_posix() if root.is_dir() else f.name
            docs.append(Document(name, _read_text(f)))
        if max_docs and len(docs) >= max_docs:
            docs = docs[:max_docs]
            break
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


def text_splits(data: DataConfig) -> dict[str, list[str]]:
    """The documents of each split, as text."""
    docs = read_documents(data.path, data.glob, data.max_docs)
    return split_documents(docs, data.val_fraction, data.path == "stdlib", data.cut_at_newline)


def load_token_splits(data: DataConfig, tokenizer: Tokenizer, tokenizer_file: Path) -> dict[str, np.ndarray]:
    """Token arrays (memory-mapped) for every split, tokenizing on the first call only."""
    rule = f"{data.glob}|{data.max_docs}|{data.val_fraction}|{data.cut_at_newline}"
    key = _cache_key(data.path, rule, tokenizer_file, data.glob)
    folder = _cache_root() / "tokens" / key
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    if not (folder / "done").exists():
        arrays = {name: tokenizer.encode_documents(texts) for name, texts in text_splits(data).items()}
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            for name, arr in arrays.items():
                arr.astype(dtype).tofile(tmp / f"{name}.bin")
            (tmp / "done").write_text(json.dumps({"source": data.path, "dtype": np.dtype(dtype).name}))
        except OSError as exc:  # a full disk: numpy says only "N requested and M written"
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"could not write the token cache in {_cache_root()} ({exc.strerror or exc}): free some "
                            f"space, or point TEXTDIFFUSION_CACHE at a folder with room") from None
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    out = {}
    for name in SPLITS:
        f = folder / f"{name}.bin"
        n = f.stat().st_size // np.dtype(dtype).itemsize
        out[name] = np.memmap(f, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype=dtype)
    return out
