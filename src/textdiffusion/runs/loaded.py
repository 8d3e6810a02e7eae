"""What a loaded run is made of: the network and the process a config describes
(``build_model``), the ``LoadedRun`` every command samples from, and the precisions weights load
in. Below both readers of runs: ``runs/__init__.py`` (our run directories) and ``runs/adapters/``
(public checkpoints) build the same ``LoadedRun`` from here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import Config
from ..errors import ConfigError, UsageError
from ..tokenizers import Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    from ..processes.registry import PROCESSES

    spec = PROCESSES.get(cfg.process.name)
    if spec is None:
        raise ConfigError(f"unknown process {cfg.process.name!r} (choose {', '.join(PROCESSES)})")
    process = spec.load().from_config(cfg.process, tokenizer)
    if spec.backbone == "embedding":  # continuous inputs: the backbone reads noisy embeddings, not ids
        from ..models.continuous import EmbeddingDenoiser

        return EmbeddingDenoiser(cfg.model, cfg.process.embed_dim, cfg.process.self_cond), process
    from ..models.transformer import Transformer

    return Transformer(cfg.model, attn=spec.backbone), process
