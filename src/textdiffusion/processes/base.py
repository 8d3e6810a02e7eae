"""The ``Process`` protocol every forward process (and the AR twin's objective) satisfies, what
their losses return, and the helpers they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar to backpropagate: nats per scored token
    num_tokens: int
    per_row: torch.Tensor | None = None  # (B,) nats of each row's scored tokens (a conditional score)

    @classmethod
    def mean_over(cls, per_token: torch.Tensor, loss_mask: torch.Tensor | None = None) -> LossOutput:
        """Average (B, L) per-token losses over all tokens, or over those ``loss_mask`` keeps."""
        if loss_mask is None:
            return cls(per_token.mean(), per_token.numel(), per_token.detach().sum(1))
        n = int(loss_mask.sum())
        kept = per_token * loss_mask
        return cls(kept.sum() / max(n, 1), n, kept.detach().sum(1))


@runtime_checkable
class Objective(Protocol):
    """What training and evaluation need from a run's process (the AR twin's objective too):
    ``loss`` (backpropagated) and ``nelbo`` (a true bound). Capabilities are attributes, so the
    samplers ask instead of probing: ``mask_id`` (the absorbing state, None if tokens never
    mask), ``block_size`` (block diffusion, else None), ``supports_cache`` (an unchanged x_t
    needs no new network call) and ``draws_revealed_only`` (the reverse step draws values only
    where tokens unmask, so top-k/top-p need filter only those rows)."""

    name: str
    mask_id: int | None
    block_size: int | None
    supports_cache: bool
    draws_revealed_only: bool

    def loss(self, model, batch: torch.Tensor, gen: torch.Generator | None = None,
             fixed: torch.Tensor | None = None) -> LossOutput:
        """Monte Carlo training objective, nats per scored token of (B, L+1) windows."""

    def nelbo(self, model, batch: torch.Tensor, gen: torch.Generator | None = None,
              num_samples: int = 1) -> torch.Tensor:
        """(num_samples, B) estimates of a true bound on -log p, in nats per window."""


@runtime_checkable
class Process(Objective, Protocol):
    """A corruption a model learns to undo: an ``Objective`` with a prior (where generation
    starts) and a forward process q(x_t | x0) (what an edit re-noises with). The discrete
    processes add ``log_probs(logits)`` and ``reverse_step(prediction, x_t, t, s, gen)``; the
    Gaussian one ``denoise`` and its own ``reverse_step``."""

    def prior(self, shape: tuple[int, ...], device=None, gen: torch.Generator | None = None) -> torch.Tensor:
        """x_1: where generation starts."""

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """A draw of q(x_t | x0)."""


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32 and float64 unchanged. Probability maths never runs
    below float32, and a float64 model (the golden-output tests) keeps float64 throughout."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def scored(fixed: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(keep, loss_mask) over the last L positions of a (B, L+1) ``fixed`` mask: conditioning
    positions (an SFT prompt) are never noised and never scored."""
    if fixed is None:
        return None, None
    keep = fixed[:, 1:]
    return keep, ~keep


def keep_clean(xt: torch.Tensor, x0: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return xt if keep is None else torch.where(keep, x0, xt)


def stratified_uniform(batch: int, antithetic: bool, gen: torch.Generator | None, device=None) -> torch.Tensor:
    """(B,) draws from U[0, 1); antithetic: one uniform shifted by i/B, one draw per stratum."""
    if antithetic:
        u = torch.rand(1, generator=gen, device=device)
        return (u + torch.arange(batch, device=device) / batch) % 1.0
    return torch.rand(batch, generator=gen, device=device)


def discrete_times(u: torch.Tensor, num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step i = floor(u T) + 1 of T, as times (t_i, t_{i-1}) = (i / T, (i - 1) / T)."""
    i = (u * num_steps).floor().clamp(max=num_steps - 1) + 1
    return i / num_steps, (i - 1) / num_steps


def sample_categorical(log_probs: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of (..., V) log-probabilities. Sampled in float64: float32 Gumbel noise
    truncates the tail and quietly lowers sample diversity (Zheng et al. 2024)."""
    shape = log_probs.shape
    probs = log_probs.double().exp().reshape(-1, shape[-1])
    return torch.multinomial(probs, 1, generator=gen).view(shape[:-1])
