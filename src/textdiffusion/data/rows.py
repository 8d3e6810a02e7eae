"""Rows: one padded row per example, some positions fixed. Instruction tuning (prompt/response
pairs in a chat template) and labelled documents (class-conditional training, classifier
guidance), and the sampler that draws batches of rows."""


from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..tokenizers import Tokenizer
from .sources import Document, _read_text, read_documents, split_of

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
    ``next()`` returns (tokens, fixed), both (B, L+1), and the (B,) labels if the rows have them.
    ``share`` = (start, stop): one process's rows of each batch (as ``WindowSampler``'s ``rows``)."""

    def __init__(self, rows: Rows, batch_size: int, seed: int, share: tuple[int, int] | None = None):
        self.rows = rows
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.share = slice(*share) if share is not None else slice(0, batch_size)

    def next(self) -> tuple:
        idx = torch.randint(0, len(self.rows), (self.batch_size,), generator=self.gen).numpy()[self.share]
        out = (torch.from_numpy(self.rows.tokens[idx]), torch.from_numpy(self.rows.fixed[idx]))
        if self.rows.labels is not None:
            out += (torch.from_numpy(self.rows.labels[idx]),)
        return out
