"""Recipe: config -> tokenizer + token splits -> trained run directory (what ``textdiffusion train`` does)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import Config, ConfigError, apply_overrides
from ..data import load_token_splits, text_splits
from ..tokenizers import Tokenizer, train_tokenizer
from .checkpoint import CheckpointError, checkpoint_dir, read_run
from .trainer import TrainResult, train


def has_checkpoint(run_dir: Path) -> bool:
    try:
        checkpoint_dir(run_dir)
        return True
    except CheckpointError:
        return False


def prepare_data(cfg: Config, run_dir: Path) -> tuple[Tokenizer, dict[str, np.ndarray]]:
    """Train the tokenizer on the corpus (saved into ``run_dir``) and tokenize every split once."""
    if not cfg.data.path:
        raise ConfigError("no training data: pass --data PATH (a file, folder, JSONL or 'stdlib')")
    texts = text_splits(cfg.data)
    if not "".join(texts["train"]).strip():
        raise ConfigError(f"the training split of {cfg.data.path} is empty")
    # characters from the whole corpus (so validation has no unknowns); BPE merges from train only
    corpus = texts["train"] + texts["val"] + texts["test"] if cfg.data.tokenizer == "char" else texts["train"]
    tokenizer = train_tokenizer(cfg.data.tokenizer, corpus, cfg.data.vocab_size)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(run_dir / "tokenizer.json")
    return tokenizer, load_token_splits(cfg.data, tokenizer, run_dir / "tokenizer.json")


def train_run(cfg: Config, run_dir: str | Path, *, progress: bool = True) -> TrainResult:
    run_dir = Path(run_dir)
    if has_checkpoint(run_dir):
        raise CheckpointError(f"{run_dir} already holds a trained run: continue it with --resume or choose another --out")
    if cfg.data.path and cfg.data.path != "stdlib":
        cfg.data.path = str(Path(cfg.data.path).resolve())  # the run can be resumed from anywhere
    tokenizer, splits = prepare_data(cfg, run_dir)
    return train(cfg, run_dir, splits, tokenizer, progress=progress)


RESUMABLE_SECTIONS = ("train",)


def resume_run(run_dir: str | Path, overrides: list[str] | None = None, *, progress: bool = True) -> TrainResult:
    """Continue a run from its last checkpoint; only ``train.*`` settings may change."""
    run_dir = Path(run_dir)
    cfg, tokenizer = read_run(run_dir)
    checkpoint_dir(run_dir)  # a clear error if there is nothing to resume
    raw = cfg.to_dict()
    apply_overrides(raw, overrides or [], sections=RESUMABLE_SECTIONS)
    cfg = Config.from_dict(raw)
    cfg.save(run_dir / "config.json")  # the run's config says what it now trains with
    splits = load_token_splits(cfg.data, tokenizer, run_dir / "tokenizer.json")
    return train(cfg, run_dir, splits, tokenizer, resume=True, progress=progress)
