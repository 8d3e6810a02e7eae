"""Input-token corruption (``train.input_noise``): the regularizer that gives the AR twin what
random input masking gives a diffusion model for free.

Gao et al. 2025 find that most of masked diffusion's advantage when data is scarce comes from its
inputs being corrupted at random on every pass, and that regularizing the AR model (dropout,
weight decay; Kim et al. 2025: a weight decay far above the usual 0.1) gives it similar gains. Here, during
training only, each input token the network reads is replaced, with probability ``rate``, by a
token drawn uniformly from the text vocabulary; the targets stay the clean tokens, so the loss is
still the model's cross-entropy (or bound) on the real data. Mask and padding inputs are never
replaced (they carry the diffusion state and the row layout), nor are special tokens drawn.

Cost: one uniform draw per input token per step (negligible); the effect is a noisier gradient,
so a run usually needs more steps to reach its minimum, and reaches a lower one when data is
scarce. Validation and evaluation never corrupt.
"""

from __future__ import annotations

import torch


def replacement_ids(vocab_size: int, excluded: tuple[int, ...]) -> torch.Tensor:
    """(K,) the ids a corrupted input may become: every id but ``excluded`` (the specials)."""
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[list(excluded)] = False
    return keep.nonzero().squeeze(1)


def corrupt_inputs(x: torch.Tensor, rate: float, ids: torch.Tensor, protected: tuple[int, ...],
                   gen: torch.Generator) -> torch.Tensor:
    """``x`` (B, T) with each position whose token is not in ``protected`` replaced, with
    probability ``rate``, by a uniform draw from ``ids``."""
    hit = torch.rand(x.shape, generator=gen, device=gen.device) < rate
    for token in protected:
        hit &= x != token
    draws = ids.to(x.device)[torch.randint(len(ids), x.shape, generator=gen, device=gen.device)]
    return torch.where(hit, draws, x)


class NoisyInputs:
    """The denoiser with its token inputs corrupted (``corrupt_inputs``) on every call."""

    def __init__(self, model, rate: float, ids: torch.Tensor, protected: tuple[int, ...], gen: torch.Generator):
        self.model, self.rate, self.ids, self.protected, self.gen = model, rate, ids, protected, gen

    def __getattr__(self, name):  # cfg, parameters(), ... of the wrapped model
        return getattr(self.model, name)

    def __call__(self, x, *args, **kwargs):
        if not x.dtype.is_floating_point:  # token ids (the gaussian process feeds embeddings: never here)
            x = corrupt_inputs(x, self.rate, self.ids, self.protected, self.gen)
        return self.model(x, *args, **kwargs)
