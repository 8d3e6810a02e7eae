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
    needs no new network call), ``draws_revealed_only`` (the reverse step draws values only
    where tokens unmask, so top-k/top-p need filter only those rows), ``exact_likelihood``
    (``nelbo`` is the exact NLL, not a bound: one draw scores a text; the AR twin) and
    ``continuous`` (x_t is a noisy vector per position, not a token: the Gaussian process, whose
    network reads embeddings), ``keeps_decided`` (a token the reverse step has decided never
    changes again: absorbing processes and the AR twin, so a server may stream it before the last
    step; uniform and Gaussian processes revise every token until the end) and ``left_to_right``
    (each token is read from the text before it, in order: the AR twin, which continues a prompt,
    fills a hole only through fill-in-the-middle training, and verifies a drafter's tokens)."""

    name: str
    mask_id: int | None
    block_size: int | None
    supports_cache: bool
    draws_revealed_only: bool
    exact_likelihood: bool
    continuous: bool
    keeps_decided: bool
    left_to_right: bool

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


class RowShard:
    """A generator that draws a training step's noise for the whole batch of ``total`` rows and
    keeps rows [start, stop): what one of several processes (``torchrun``) uses, so that the
    processes together draw exactly the noise one process would, row for row.

    The processes' losses draw through ``row_rand``/``row_randn``/``row_randint``/
    ``stratified_uniform`` (and ``plain`` for draws that are not per row, a coin), which read a
    plain ``torch.Generator`` as one process holding every row. A torch function handed a
    RowShard directly fails at once (it is not a Generator), so a missed draw cannot pass quietly."""

    def __init__(self, gen: torch.Generator | None, start: int, stop: int, total: int):
        if not 0 <= start < stop <= total:
            raise ValueError(f"rows [{start}, {stop}) are not a share of a batch of {total}")
        self.gen, self.start, self.stop, self.total = gen, start, stop, total

    def own(self, x: torch.Tensor, per_row: int = 1) -> torch.Tensor:
        return x[self.start * per_row : self.stop * per_row]


def plain(gen) -> torch.Generator | None:
    """The torch generator behind ``gen`` (a RowShard's, or ``gen`` itself)."""
    return gen.gen if isinstance(gen, RowShard) else gen


def batch_rows(gen, rows: int) -> tuple[int, int]:
    """(first global row, rows in the whole batch) of a local batch of ``rows`` rows."""
    if isinstance(gen, RowShard):
        if rows != gen.stop - gen.start:
            raise ValueError(f"a batch of {rows} rows, but this process holds {gen.stop - gen.start}")
        return gen.start, gen.total
    return 0, rows


def _row_draw(draw, shape, gen, device, per_row: int = 1) -> torch.Tensor:
    if not isinstance(gen, RowShard):
        return draw(tuple(shape), gen, device)
    batch_rows(gen, shape[0] // per_row)
    full = draw((gen.total * per_row, *shape[1:]), gen.gen, device)
    return gen.own(full, per_row)


def row_rand(shape, gen, device=None) -> torch.Tensor:
    """U[0, 1) of ``shape`` (rows first): this process's rows of the whole batch's draw."""
    return _row_draw(lambda s, g, d: torch.rand(s, generator=g, device=d), shape, gen, device)


def row_randn(shape, gen, device=None) -> torch.Tensor:
    return _row_draw(lambda s, g, d: torch.randn(s, generator=g, device=d), shape, gen, device)


def row_randint(high: int, shape, gen, device=None) -> torch.Tensor:
    return _row_draw(lambda s, g, d: torch.randint(0, high, s, generator=g, device=d), shape, gen, device)


def stratified_uniform(batch: int, antithetic: bool, gen, device=None, per_row: int = 1) -> torch.Tensor:
    """(B,) draws from U[0, 1); antithetic: one uniform shifted by i/B, one draw per stratum.
    ``per_row``: B counts rows times that many draws each (block diffusion: one per block), which a
    RowShard keeps together."""
    def draw(shape, g, d):
        n = shape[0]
        if antithetic:
            u = torch.rand(1, generator=g, device=d)
            return (u + torch.arange(n, device=d) / n) % 1.0
        return torch.rand(n, generator=g, device=d)

    return _row_draw(draw, (batch,), gen, device, per_row)


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
