"""The denoiser of the Gaussian embedding process: a learned token embedding table plus the same
transformer backbone, reading continuous vectors instead of token ids.

    tokens --(embedding table, unit L2 norm)--> e (B, L, d)           d = process.embed_dim (small)
    z_t = alpha_t e + sigma_t noise  --(scaled by the process)--> backbone --> logits (B, L, V)

The x0 estimate is the softmax of the logits averaged over the embedding table ("score
interpolation", CDCD / Plaid), so the network is a classifier, like every other denoiser here.
With self-conditioning the backbone also reads the previous x0 estimate (concatenated).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..errors import UsageError
from ..processes.base import upcast
from .transformer import Transformer


class EmbeddingDenoiser(nn.Module):
    def __init__(self, cfg: ModelConfig, embed_dim: int, self_cond: bool = False):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise UsageError("model.vocab_size must be set (it comes from the tokenizer)")
        self.embed_dim, self.self_cond = embed_dim, self_cond
        # raw vectors; ``embeddings()`` normalises them, so their scale never drifts against the noise
        self.embedding = nn.Parameter(torch.empty(cfg.vocab_size, embed_dim))
        self.net = Transformer(cfg, attn="full", input_dim=embed_dim * (2 if self_cond else 1))
        # drawn after the network's weights: drawn first, they would be the very first normal draws
        # of the training seed, which a sampler seeded alike draws again as its prior z_1 (so that
        # prior sat exactly on the initial embeddings, and decoded to ids 0, 1, 2, ... in order)
        nn.init.normal_(self.embedding)

    @property
    def cfg(self) -> ModelConfig:
        return self.net.cfg

    def embeddings(self) -> torch.Tensor:
        """(V, d) unit-norm token embeddings (what the forward process noises)."""
        w = upcast(self.embedding)
        return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    def forward(self, inputs: torch.Tensor, t: torch.Tensor | None = None,
                x_selfcond: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """inputs (B, L, d) noisy embeddings (already scaled to unit variance by the process),
        ``x_selfcond`` (B, L, d) the previous x0 estimate (zeros: none) -> logits (B, L, V)."""
        if self.self_cond:
            if x_selfcond is None:
                x_selfcond = torch.zeros_like(inputs)
            inputs = torch.cat((inputs, x_selfcond), dim=-1)
        return self.net(inputs, t, labels=labels, attn_mask=attn_mask)

    def num_params(self, non_embedding: bool = True) -> int:
        n = self.net.num_params(non_embedding)
        return n if non_embedding else n + self.embedding.numel()

    def flops_per_token(self, seq_len: int) -> float:
        return self.net.flops_per_token(seq_len)
