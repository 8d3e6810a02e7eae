"""AR -> diffusion conversion while training (``train --init AR_RUN --process masked``):
attention-mask annealing from causal to bidirectional (DiffuLLaMA, Gong et al. 2025).

At step s < N = ``adapt.anneal_steps`` every query attends to every earlier position and to each
later one with probability s / N (one (T, T) pattern per step, the same for every row and every
process: drawn from a generator seeded by the step, so a resumed or a torchrun run draws the same
masks). At step 0 the pattern is causal: with the logits shift (``adapt.shift``) the converted
model then computes exactly the AR model's predictions, and the diffusion loss starts from them.
From step N on the model is bidirectional, as it samples.
"""

from __future__ import annotations

import torch

SEED = 0x5EED_A11E  # the masks' generator: seeded by this and the step


def annealed_mask(step: int, steps: int, length: int, device=None) -> torch.Tensor | None:
    """(T, T) bool, True = may attend, for training step ``step`` of ``steps`` annealing steps;
    None once annealing is over (everyone sees everyone)."""
    if step >= steps:
        return None
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    gen = torch.Generator().manual_seed(SEED + step)
    opened = torch.rand(length, length, generator=gen) < step / steps
    return (causal | opened).to(device)


class Annealed:
    """The denoiser with this step's attention pattern bound (``attn_mask``)."""

    def __init__(self, model, mask: torch.Tensor):
        self.model, self.mask = model, mask

    def __getattr__(self, name):  # cfg, parameters(), ... of the wrapped model
        return getattr(self.model, name)

    def __call__(self, x, t=None, *args, **kwargs):
        T = x.shape[1]
        return self.model(x, t, *args, attn_mask=self.mask[:T, :T], **kwargs)
