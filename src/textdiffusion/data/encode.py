"""Tokenizing a stream of documents a chunk at a time, in worker processes when the corpus is
larger than one chunk, with the results handed back in order (so the token arrays are the same
for any number of workers) and a bounded number of chunks in flight (so memory stays flat)."""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np

from ..errors import DataError
from ..tokenizers import Tokenizer

CHUNK_CHARS = 1 << 20  # about 1 M characters a chunk: some 10 MB of ids in flight per chunk
CHUNK_DOCS = 2048
MAX_AUTO_WORKERS = 8

_worker_tokenizer: Tokenizer | None = None


def auto_workers(workers: int) -> int:
    """``data.workers``: 0 picks one process per core (at most 8)."""
    return workers if workers > 0 else max(1, min(os.cpu_count() or 1, MAX_AUTO_WORKERS))


def chunks(docs: Iterable[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    chunk: list[tuple[str, str]] = []
    size = 0
    for split, text in docs:
        chunk.append((split, text))
        size += len(text)
        if size >= CHUNK_CHARS or len(chunk) >= CHUNK_DOCS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def encode_chunk(tokenizer: Tokenizer, chunk: list[tuple[str, str]], dtype: np.dtype) -> dict[str, np.ndarray]:
    """Each split's documents of the chunk, in order, each followed by end-of-text."""
    by_split: dict[str, list[str]] = {}
    for split, text in chunk:
        by_split.setdefault(split, []).append(text)
    return {split: tokenizer.encode_documents(texts).astype(dtype) for split, texts in by_split.items()}


def _init_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_in_worker(chunk: list[tuple[str, str]], dtype: str) -> dict[str, np.ndarray]:
    return encode_chunk(_worker_tokenizer, chunk, np.dtype(dtype))


def encode_stream(docs: Iterable[tuple[str, str]], tokenizer: Tokenizer, dtype: np.dtype, *,
                  workers: int = 0, progress: bool = False, label: str = "") -> Iterator[dict[str, np.ndarray]]:
    """Token arrays of ``docs`` ((split, text) pairs), a chunk at a time and in order. A corpus
    of one chunk is tokenized here; a larger one by ``workers`` processes (0: one per core, at
    most 8) that each receive a copy of the tokenizer, at most two chunks per worker in flight."""
    from tqdm.auto import tqdm

    workers = auto_workers(workers)
    stream = chunks(docs)
    first = next(stream, None)
    if first is None:
        return
    second = next(stream, None)
    bar = tqdm(desc=f"tokenizing {label}".strip(), unit="doc", unit_scale=True, disable=not progress,
               file=sys.stderr, dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 10.0)
    try:
        if second is None or workers == 1:
            for chunk in peeked(first, second, stream):
                yield encode_chunk(tokenizer, chunk, dtype)
                bar.update(len(chunk))
            return
        yield from _in_workers(peeked(first, second, stream), tokenizer, dtype, workers, bar)
    finally:
        bar.close()


def peeked(first, second, rest):
    """``first``, ``second`` (unless None: the stream had one item) and the rest of a stream
    whose first two items were taken to look at them."""
    yield first
    if second is not None:
        yield second
    yield from rest


def _in_workers(stream, tokenizer: Tokenizer, dtype: np.dtype, workers: int, bar) -> Iterator[dict[str, np.ndarray]]:
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # fork where there is one: spawn would run the caller's main module again in every worker
    # (a script without an `if __name__ == "__main__"` guard would start its training again);
    # the workers touch only the tokenizer, never torch's thread pools
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    quiet = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # else each forked worker warns that it was forked
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method), initializer=_init_worker,
                               initargs=(tokenizer,))
    window: deque = deque()
    try:
        for chunk in stream:
            window.append((pool.submit(_encode_in_worker, chunk, dtype.name), len(chunk)))
            if len(window) >= 2 * workers:
                future, n = window.popleft()
                yield future.result()
                bar.update(n)
        while window:
            future, n = window.popleft()
            yield future.result()
            bar.update(n)
    except BrokenProcessPool:
        raise DataError(f"a tokenizer worker process died (out of memory?): set data.workers lower "
                        f"(now {workers}) and try again") from None
    finally:
        for future, _ in window:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        if quiet is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = quiet
