"""A classifier of noisy inputs x_t for classifier guidance: the same transformer backbone
(bidirectional, time-conditioned), mean-pooled, then a linear head over the labels.

It reads what the diffusion model reads: token ids (masked / uniform / score-entropy x_t) or the
Gaussian process's scaled noisy embeddings. For discrete inputs, ``forward(onehot=...)`` takes
(B, T, V) one-hot rows instead of ids, so the log-probability of a label can be differentiated
with respect to every possible token at every position (first-order / Taylor guidance).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..errors import UsageError
from .transformer import Transformer


class NoisyClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig, num_labels: int, input_dim: int | None = None):
        super().__init__()
        if num_labels < 2:
            raise UsageError("a classifier needs at least two labels")
        self.net = Transformer(cfg, attn="full", input_dim=input_dim)
        self.net.head = nn.Identity()  # the token head is not used: the pooled states are classified
        self.out = nn.Linear(cfg.d_model, num_labels)
        self.num_labels = num_labels

    @property
    def cfg(self) -> ModelConfig:
        return self.net.cfg

    def forward(self, inputs: torch.Tensor | None, t: torch.Tensor, onehot: torch.Tensor | None = None) -> torch.Tensor:
        """(B, num_labels) logits of p(label | x_t) from ids (B, T), vectors (B, T, d), or
        ``onehot`` (B, T, V) rows (differentiable in each token's weight)."""
        embeds = None if onehot is None else onehot @ self.net.embed.weight
        h = self.net.hidden(inputs, t, embeds=embeds)  # (B, T, C)
        return self.out(h.mean(1))
