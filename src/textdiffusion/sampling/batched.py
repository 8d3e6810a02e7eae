"""The pieces of a step that run over every row of a batch at once, each row drawing its random
numbers from its own generator: the same numbers, in the same order, as the row stepped alone.

A row's draws stay its own because every draw a step makes is split in two. The random numbers
are drawn per row, with the row's generator, straight into the row's slice of one batch tensor
(a few microseconds a row). Everything else (the filtering, the exponentials' division, the
argmax, the comparisons) is one tensor operation over the whole batch.

``torch.multinomial(p, 1, generator=g)`` draws exponentials ``q`` of p's shape with ``g`` and
returns ``argmax(p / q)`` (ATen's one-sample path, the exponential form of the Gumbel-max
trick): ``categorical`` does exactly that with each row's generator on its own rows, so a batched
draw is the per-row ``sample_categorical`` to the token, and leaves every generator where the
per-row draw leaves it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import HOLE, Row


def stack_tokens(rows: Sequence[Row]) -> torch.Tensor:
    """(B, T) the rows' tokens, right-padded with HOLE to the longest (a padded position is
    neither masked nor text)."""
    T = max(r.length for r in rows)
    if all(r.length == T for r in rows):
        return torch.stack([r.tokens for r in rows])
    return torch.stack([F.pad(r.tokens, (0, T - r.length), value=HOLE) for r in rows])


def stack_fixed(rows: Sequence[Row], T: int) -> torch.Tensor:
    """(B, T) the rows' fixed positions; padding counts as fixed (never drawn, never revealed)."""
    return torch.stack([F.pad(r.fixed, (0, T - r.length), value=True) for r in rows])


def uniforms(rows: Sequence[Row], T: int, device) -> torch.Tensor:
    """(B, T) float32: row b's ``torch.rand(T_b)`` from its own generator, padded with 1 (never
    below a probability)."""
    u = torch.ones(len(rows), T, device=device)
    for b, r in enumerate(rows):
        torch.rand(r.length, generator=r.gen, device=device, out=u[b, : r.length])
    return u


def categorical(log_p: torch.Tensor, counts: Sequence[int], gens: Sequence[torch.Generator | None]) -> torch.Tensor:
    """(N,) one draw from each of the (N, V) log-probabilities, whose rows come in consecutive
    blocks, ``counts[i]`` rows drawn with ``gens[i]``: block i's draws are
    ``sample_categorical(log_p[block i], gens[i])`` exactly (float64, as it draws)."""
    probs = log_p.double().exp()
    if not bool(torch.isfinite(probs).all()) or bool((probs.sum(-1) <= 0).any()):
        raise RuntimeError("probability tensor contains either inf, nan or element < 0, or sums to zero")
    q = torch.empty_like(probs)
    start = 0
    for n, g in zip(counts, gens):
        if n:
            q[start : start + n].exponential_(1, generator=g)
            start += n
    return (probs / q).argmax(-1)
