"""Temperature, top-k and top-p filtering of logits, and seeded categorical sampling."""

from __future__ import annotations

import torch

from ..errors import UsageError
from ..processes.base import sample_categorical, upcast  # noqa: F401  (the reverse steps draw with it too)


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  normalized: bool = False) -> torch.Tensor:
    """Return log-probabilities (float32 or float64, ..., V) after temperature, top-k and nucleus filtering.

    temperature == 0 means greedy: all mass on the argmax. ``normalized``: ``logits`` are
    log-probabilities already (a process's ``log_probs``), returned as they are when no filter
    applies (a second log-softmax would be a pass over (..., V) that changes nothing).
    """
    logits = upcast(logits)
    if normalized and temperature == 1.0 and not (top_k and top_k < logits.shape[-1]) and top_p >= 1.0:
        return logits
    if temperature == 0:
        out = torch.full_like(logits, float("-inf"))
        return out.scatter(-1, logits.argmax(-1, keepdim=True), 0.0)
    if temperature != 1.0:  # (x / 1 is x to the bit: a pass over (..., V) saved)
        logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.log_softmax(logits, dim=-1)


def draw_and_rank(process, logits: torch.Tensor, sampler, owned: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities to draw candidates from: the process's, with the sampler's banned ids,
    temperature, top-k and top-p; log-probabilities a remasking order ranks positions by). They
    are the same, except greedy: its filtered distribution is one-hot (every candidate would be
    "certain"), so positions are ranked by the model's own probabilities, as LLaDA's, Dream's and
    Fast-dLLM's greedy decoding do. ``owned``: ``logits`` are the caller's own copy, which may be
    written (a pass over (..., V) saved)."""
    raw = process.log_probs(ban(logits, sampler.banned_ids, owned))
    log_p = filter_logits(raw, sampler.temperature, sampler.top_k, sampler.top_p, normalized=True)
    return log_p, (upcast(raw) if sampler.temperature == 0 else log_p)


def ban(logits: torch.Tensor, ids: list[int], owned: bool = False) -> torch.Tensor:
    """Give ``ids`` (tokens that are never text: mask, pad, unknown) zero probability; written into
    a copy unless the caller ``owned`` the logits (or upcasting made one)."""
    if ids:
        up = upcast(logits)
        logits = up.clone() if up is logits and not owned else up
        logits[..., ids] = float("-inf")
    return logits


def validate_sampling_args(temperature: float, top_k: int, top_p: float) -> None:
    from .registry import check_temperature

    if temperature < 0:
        raise UsageError("temperature must be >= 0")
    check_temperature(temperature)
    if top_k < 0:
        raise UsageError("top_k must be >= 0 (0 disables)")
    if not 0.0 < top_p <= 1.0:
        raise UsageError("top_p must be in (0, 1]")
