"""The autoregressive twin: next-token prediction on the SAME transformer, in causal mode.

It satisfies ``base.Objective`` (``loss``, ``nelbo`` and the capability attributes) as every
diffusion process does, so the trainer and evaluation treat both alike and every comparison runs
the same code path; it corrupts nothing, so it is not a ``base.Process``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LossOutput


class AutoregressiveObjective:
    name = "ar"

    @classmethod
    def from_config(cls, p, tokenizer) -> AutoregressiveObjective:
        return cls()

    mask_id = None
    block_size = None
    supports_cache = False
    exact_likelihood = True  # nelbo is the exact NLL (the chain rule, one pass)
    continuous = False
    keeps_decided = True  # a generated token is final
    left_to_right = True
    draws_revealed_only = False
    attn = "causal"

    def loss(self, model, batch: torch.Tensor, gen: torch.Generator | None = None,
             fixed: torch.Tensor | None = None) -> LossOutput:
        """-log p(x_{i+1} | x_{<=i}) in nats per token. ``batch`` is (B, L+1): the first L tokens
        are the input, the last L the targets (the same tokens the diffusion loss scores)."""
        logits = model(batch[:, :-1])  # (B, L, V)
        nll = F.cross_entropy(logits.float().transpose(1, 2), batch[:, 1:], reduction="none")
        return LossOutput.mean_over(nll, None if fixed is None else ~fixed[:, 1:])  # prompt targets unscored

    @torch.no_grad()
    def nelbo(self, model, batch: torch.Tensor, gen: torch.Generator | None = None,
              num_samples: int = 1) -> torch.Tensor:
        """(1, B) exact NLL in nats of the last L tokens of each (B, L+1) window (no sampling:
        ``num_samples`` is ignored; evaluation's standard error is then over windows only)."""
        logits = model(batch[:, :-1])
        nll = F.cross_entropy(logits.float().transpose(1, 2), batch[:, 1:], reduction="none")
        return nll.sum(1)[None]
