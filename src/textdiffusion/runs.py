"""Run directories: what a trained run is (config, tokenizer, the model and its process) and how
one is read back (``load_run``). The checkpoint files inside are ``training/checkpoint.py``'s.

A run directory holds::

    config.json        the full Config (model, process, data, train)
    tokenizer.json     the tokenizer, so the run needs nothing else to sample or evaluate
    metrics.jsonl      one JSON object per logged step / validation
    labels.json        class names (runs trained with labels)
    checkpoint/        the latest checkpoint (training/checkpoint.py)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import Config
from .errors import CheckpointError, ConfigError, TokenizerError, UsageError
from .tokenizers import Tokenizer, load_tokenizer
from .training.checkpoint import checkpoint_dir, load_weights


def read_run(run_dir: str | Path) -> tuple[Config, Tokenizer]:
    """Config and tokenizer of a run directory, with one-line errors for anything wrong."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory not found: {run_dir}")
    try:
        cfg = Config.load(run_dir / "config.json")
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir} has no config.json (is it a textdiffusion run directory?)") from None
    except (json.JSONDecodeError, ConfigError, TypeError) as exc:
        raise CheckpointError(f"{run_dir}/config.json is corrupt: {exc}") from None
    try:
        tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    except TokenizerError as exc:
        raise CheckpointError(str(exc)) from None
    return cfg, tokenizer


class LoadedRun:
    """A trained model ready for sampling or evaluation."""

    def __init__(self, run_dir: Path, cfg: Config, tokenizer: Tokenizer, model, process, weights: str):
        self.run_dir, self.cfg, self.tokenizer = run_dir, cfg, tokenizer
        self.model, self.process, self.weights = model, process, weights
        labels = run_dir / "labels.json"
        self.labels: list[str] = json.loads(labels.read_text()) if labels.exists() else []  # class names

    @property
    def objective(self):
        """The old name of ``process`` (kept for one release)."""
        return self.process

    def label_id(self, name: str) -> int:
        if not self.labels:
            raise UsageError(f"{self.run_dir} was not trained with labels (train on JSONL with --set data.labels=true)")
        if name not in self.labels:
            raise UsageError(f"unknown label {name!r} (this run knows {', '.join(self.labels)})")
        return self.labels.index(name)


def build_model(cfg: Config, tokenizer: Tokenizer):
    """The backbone and the process (a diffusion process, or the AR objective) a config describes:
    the process from its registry entry, the network the entry names (full or causal attention
    over ids, or the embedding denoiser of the Gaussian process)."""
    from .processes.registry import PROCESSES

    spec = PROCESSES.get(cfg.process.name)
    if spec is None:
        raise ConfigError(f"unknown process {cfg.process.name!r} (choose {', '.join(PROCESSES)})")
    process = spec.load().from_config(cfg.process, tokenizer)
    if spec.backbone == "embedding":  # continuous inputs: the backbone reads noisy embeddings, not ids
        from .models.continuous import EmbeddingDenoiser

        return EmbeddingDenoiser(cfg.model, cfg.process.embed_dim, cfg.process.self_cond), process
    from .models.transformer import Transformer

    return Transformer(cfg.model, attn=spec.backbone), process


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", dtype: str | None = None) -> LoadedRun:
    """A run directory, a saved model, or a public model's directory (transformers layout: LLaDA,
    Dream, masked and causal LMs, our own transformers exports; models/adapters). ``dtype``
    (public models only): the weights' precision, None = as stored."""
    run_dir = Path(run_dir)
    from .models.adapters import detect, load_adapted

    if run_dir.is_dir() and detect(run_dir) is not None:
        return load_adapted(run_dir, device, dtype)
    cfg, tokenizer = read_run(run_dir)
    if cfg.model.vocab_size != tokenizer.vocab_size:
        raise CheckpointError(
            f"{run_dir}: tokenizer has {tokenizer.vocab_size} tokens but the model expects {cfg.model.vocab_size}"
        )
    model, process = build_model(cfg, tokenizer)
    weights = load_weights(model, checkpoint_dir(run_dir))
    model.to(device).eval()
    return LoadedRun(run_dir, cfg, tokenizer, model, process, weights)
