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
import torch

from .config import DataConfig
from .errors import DataError
from .tokenizers import Tokenizer

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
    try:
        return path.read_text(encoding="utf-8")
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
        tmp.mkdir(parents=True, exist_ok=True)
        for name, arr in arrays.items():
            arr.astype(dtype).tofile(tmp / f"{name}.bin")
        (tmp / "done").write_text(json.dumps({"source": data.path, "dtype": np.dtype(dtype).name}))
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


def fim_order(window: np.ndarray, i: int, j: int, bos: int, suf: int, mid: int) -> np.ndarray:
    """Fill-in-the-middle (Bavarian et al. 2022, PSM order): window = prefix + middle + suffix cut
    at i <= j, rearranged as [bos] prefix [suf] suffix [mid] middle (three tokens longer). The AR
    twin uses end-of-text, pad and mask as the three sentinels (tokens that are never text)."""
    return np.concatenate([[bos], window[:i], [suf], window[j:], [mid], window[i:j]]).astype(np.int64)


class WindowSampler:
    """Random fixed-length windows from a token array, drawn with its own seeded generator.

    The generator's state is part of a checkpoint, so a resumed run sees the same batches. With
    ``fim`` = (rate, bos, suf, mid), that fraction of windows is put in fill-in-the-middle order
    (the AR twin). With ``span_rate``, that fraction of windows becomes an infilling example for
    a diffusion model: one span, cut like FIM's middle, is the target and the rest of the window is
    clean context; ``next`` then returns (tokens, fixed), fixed = the context (never noised, not
    scored), all False in the other windows.
    """

    def __init__(self, tokens: np.ndarray, length: int, batch_size: int, seed: int, split: str = "train",
                 fim: tuple[float, int, int, int] | None = None, span_rate: float = 0.0):
        if len(tokens) < length + 1:
            raise DataError(
                f"the {split} split has {len(tokens)} tokens, fewer than one window of {length + 1}: "
                "use more data, a smaller model.context, or another data.val_fraction"
            )
        self.tokens = tokens
        self.length = length
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.fim = fim if fim and fim[0] > 0 else None
        self.span_rate = span_rate

    def next(self) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, length + 1) int64: the extra token lets the AR twin predict ``length`` targets
        (with ``span_rate``: and the (B, length + 1) bool mask of fixed context)."""
        starts = torch.randint(0, len(self.tokens) - self.length, (self.batch_size,), generator=self.gen)
        rows = [np.asarray(self.tokens[s : s + self.length + 1], dtype=np.int64) for s in starts.tolist()]
        if self.fim is not None:
            rate, bos, suf, mid = self.fim
            n = self.length - 2  # three sentinels join the window
            u = torch.rand(self.batch_size, generator=self.gen).tolist()
            cuts = torch.randint(0, n + 1, (self.batch_size, 2), generator=self.gen).sort(1).values.tolist()
            rows = [fim_order(r[:n], i, j, bos, suf, mid) if x < rate else r for r, x, (i, j) in zip(rows, u, cuts)]
        batch = torch.from_numpy(np.stack(rows))
        if self.span_rate > 0:
            return batch, self._span_context()
        return batch

    def _span_context(self) -> torch.Tensor:
        """(B, length + 1) fixed-context mask: in a ``span_rate`` fraction of rows everything but
        one span [1 + i, 1 + j) of the scored positions, cut at two sorted uniform points as the
        FIM twin's middle is (at least one token long); position 0 (the AR twin's context token)
        is never scored by diffusion losses."""
        B, L = self.batch_size, self.length
        u = torch.rand(B, generator=self.gen)
        cuts = torch.randint(0, L + 1, (B, 2), generator=self.gen).sort(1).values
        i, j = cuts[:, 0], cuts[:, 1]
        i = torch.where(i == j, (j - 1).clamp(min=0), i)
        j = torch.maximum(j, i + 1)
        pos = torch.arange(L)[None, :]
        context = (pos < i[:, None]) | (pos >= j[:, None])
        fixed = torch.zeros(B, L + 1, dtype=torch.bool)
        fixed[:, 1:] = context & (u < self.span_rate)[:, None]
        return fixed


def eval_windows(tokens: np.ndarray, length: int, max_windows: int = 0) -> torch.Tensor:
    """Non-overlapping (N, length + 1) windows that tile the split; the first token of each
    window is context for the AR twin, the last ``length`` tokens are the ones scored."""
    n = (len(tokens) - 1) // length
    if n <= 0:
        raise DataError(f"evaluation split has {len(tokens)} tokens, fewer than {length + 1}")
    if max_windows:
        n = min(n, max_windows)
    idx = np.arange(n)[:, None] * length + np.arange(length + 1)[None, :]
    return torch.from_numpy(np.asarray(tokens[: n * length + 1], dtype=np.int64)[idx])


# -- instruction tuning (SFT): prompt/response pairs, one padded row each ----------------------

CHAT_USER, CHAT_ASSISTANT = "User: ", "\nAssistant: "


def chat_prompt(prompt: str) -> str:
    """The chat template around a prompt; the response follows it and ends with end-of-text."""
    return f"{CHAT_USER}{prompt}{CHAT_ASSISTANT}"


@dataclass
class Pair:
    name: str  # stable key used by the hash split
    prompt: str
    response: str
    label: str | None = None


def read_pairs(path: str) -> list[Pair]:
    """``{"prompt": ..., "response": ...}`` records of a JSONL file (an optional ``label``)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data not found: {path} (--sft reads a JSONL file of prompt/response pairs)")
    pairs = []
    for n, line in enumerate(_read_text(p).split("\n")):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            prompt, response = record["prompt"], record["response"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{p}:{n + 1}: expected a JSON object with 'prompt' and 'response' fields") from None
        label = record.get("label")
        if not isinstance(prompt, str) or not isinstance(response, str) or not (label is None or isinstance(label, str)):
            raise DataError(f"{p}:{n + 1}: 'prompt', 'response' (and 'label') must be strings")
        pairs.append(Pair(f"{p.name}:{n}", prompt, response, label))
    if not pairs:
        raise DataError(f"no prompt/response pairs in {path} (empty corpus)")
    return pairs


@dataclass
class Rows:
    """Fixed-length training rows: (N, L+1) token ids and the (N, L+1) positions that condition
    (the prompt: never noised, never scored)."""

    tokens: np.ndarray
    fixed: np.ndarray
    truncated: int = 0  # responses cut to fit the context
    labels: np.ndarray | None = None  # (N,) class ids of class-conditional rows

    def __len__(self) -> int:
        return len(self.tokens)


def sft_rows(pairs: list[Pair], tokenizer: Tokenizer, length: int) -> Rows:
    """One row per pair: end-of-text, the templated prompt (fixed), the response, then
    end-of-text up to ``length`` + 1 tokens. The trailing end-of-text tokens are scored, so the
    model learns where a response ends (LLaDA's recipe): generations are cut at the first one."""
    eot = tokenizer.eot_id
    tokens = np.full((len(pairs), length + 1), eot, dtype=np.int64)
    fixed = np.zeros((len(pairs), length + 1), dtype=bool)
    keep, truncated = [], 0
    for i, pair in enumerate(pairs):
        prompt = tokenizer.encode(chat_prompt(pair.prompt))
        if len(prompt) + 2 > length + 1:  # leave room for at least one response token
            continue
        response = tokenizer.encode(pair.response)[: length - len(prompt)]
        truncated += len(tokenizer.encode(pair.response)) > len(response)
        tokens[i, 1 : 1 + len(prompt)] = prompt
        tokens[i, 1 + len(prompt) : 1 + len(prompt) + len(response)] = response
        fixed[i, : 1 + len(prompt)] = True
        keep.append(i)
    if not keep:
        raise DataError(f"every prompt is longer than the model context ({length} tokens)")
    return Rows(tokens[keep], fixed[keep], truncated)


def pair_splits(pairs: list[Pair], val_fraction: float) -> dict[str, list[Pair]]:
    """Hash split by record name, so adding pairs never moves others; val is never empty."""
    splits: dict[str, list[Pair]] = {"train": [], "val": [], "test": []}
    for pair in pairs:
        splits[split_of(pair.name, val_fraction, test=False)].append(pair)
    if not splits["val"] and len(splits["train"]) > 1:
        splits["val"].append(splits["train"].pop())
    if not splits["train"]:
        raise DataError("too few prompt/response pairs to train on (need 2 or more)")
    return splits


def label_rows(docs: list[Document], labels: list[str], tokenizer: Tokenizer, length: int) -> Rows:
    """One document per row (end-of-text, the text cut to fit, then end-of-text padding), with the
    index of its label in ``labels``: how single texts are classified."""
    eot, index = tokenizer.eot_id, {name: i for i, name in enumerate(labels)}
    tokens = np.full((len(docs), length + 1), eot, dtype=np.int64)
    for i, doc in enumerate(docs):
        ids = tokenizer.encode(doc.text)[:length]
        tokens[i, 1 : 1 + len(ids)] = ids
    fixed = np.zeros_like(tokens, dtype=bool)
    fixed[:, 0] = True
    ids = np.array([index[d.label] for d in docs], dtype=np.int64)
    return Rows(tokens, fixed, 0, ids)


def label_windows(docs: list[Document], labels: list[str], tokenizer: Tokenizer, length: int) -> Rows:
    """Class-conditional training data: the documents of each label joined with end-of-text into
    one stream and tiled into (length + 1)-token windows, each with its label's index (a stream
    shorter than a window is padded with end-of-text). Every window is text of one label, with no
    padding to learn, so samples are text through their whole length."""
    eot, parts, ids = tokenizer.eot_id, [], []
    for i, name in enumerate(labels):
        texts = [d.text for d in docs if d.label == name]
        if not texts:
            continue
        stream = np.concatenate([[eot], tokenizer.encode_documents(texts)])
        n = max(1, (len(stream) - 1) // length)
        if len(stream) < n * length + 1:
            stream = np.concatenate([stream, np.full(n * length + 1 - len(stream), eot)])
        idx = np.arange(n)[:, None] * length + np.arange(length + 1)[None, :]
        parts.append(stream[idx])
        ids += [i] * n
    if not parts:
        raise DataError("no labelled documents")
    tokens = np.concatenate(parts).astype(np.int64)
    fixed = np.zeros_like(tokens, dtype=bool)
    fixed[:, 0] = True
    return Rows(tokens, fixed, 0, np.array(ids, dtype=np.int64))


def labelled_documents(path: str) -> dict[str, list[Document]]:
    """The documents of a ``{"text", "label"}`` JSONL file by split (hash of the record name)."""
    docs = read_documents(path, "**/*.jsonl")
    missing = [d.name for d in docs if d.label is None]
    if missing:
        file, _, index = missing[0].rpartition(":")  # a JSONL record is named file:line-index
        where = f"{file}:{int(index) + 1}" if file and index.isdigit() else missing[0]
        raise DataError(f"{where}: no 'label' field (data.labels reads JSONL of {{\"text\", \"label\"}})")
    splits: dict[str, list[Document]] = {"train": [], "val": [], "test": []}
    for d in docs:
        splits[split_of(d.name, 0.1, test=False)].append(d)
    if not splits["val"] and len(splits["train"]) > 1:
        splits["val"].append(splits["train"].pop())
    return splits


class RowSampler:
    """Random rows (with replacement) of an SFT or labelled split, by its own seeded generator;
    ``next()`` returns (tokens, fixed), both (B, L+1), and the (B,) labels if the rows have them."""

    def __init__(self, rows: Rows, batch_size: int, seed: int):
        self.rows = rows
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed)

    def next(self) -> tuple:
        idx = torch.randint(0, len(self.rows), (self.batch_size,), generator=self.gen).numpy()
        out = (torch.from_numpy(self.rows.tokens[idx]), torch.from_numpy(self.rows.fixed[idx]))
        if self.rows.labels is not None:
            out += (torch.from_numpy(self.rows.labels[idx]),)
        return out
