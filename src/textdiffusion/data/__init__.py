"""Data: text sources, deterministic splits and cached token arrays (sources.py; parquet, Arrow
and saved `datasets` in tables.py; tokenized in worker processes by encode.py); training and
evaluation windows over them (windows.py); one padded row per example for instruction tuning
and labelled documents (rows.py)."""

from __future__ import annotations

from ..errors import DataError
from .rows import (
    CHAT_ASSISTANT,
    CHAT_USER,
    Pair,
    Rows,
    RowSampler,
    chat_prompt,
    label_rows,
    label_windows,
    labelled_documents,
    pair_splits,
    read_pairs,
    sft_rows,
)
from .sources import (
    SPLITS,
    Document,
    iter_documents,
    load_token_splits,
    read_documents,
    split_documents,
    split_of,
    split_texts,
    stdlib_root,
    text_splits,
)
from .windows import WindowSampler, eval_windows, fim_order

__all__ = ["CHAT_ASSISTANT", "CHAT_USER", "SPLITS", "DataError", "Document", "Pair", "RowSampler", "Rows",
           "WindowSampler", "chat_prompt", "eval_windows", "fim_order", "iter_documents", "label_rows", "label_windows",
           "labelled_documents", "load_token_splits", "pair_splits", "read_documents", "read_pairs", "sft_rows",
           "split_documents", "split_of", "split_texts", "stdlib_root", "text_splits"]
