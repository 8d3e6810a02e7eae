"""DUEL: the exact likelihood of a text under a masked diffusion sampler whose order is
deterministic (Turok, De Sa & Kuleshov 2026, "DUEL: Exact Likelihood for Masked Diffusion via
Deterministic Unmasking", arXiv:2603.01367).

Each step of a remasking sampler (sampling/remasking.py) picks positions (which masked ones to
reveal) and fills them (a token drawn at each picked position l from the network's filtered
distribution P_l on the current canvas z). When the pick is a function of z alone (the
``DETERMINISTIC_ORDERS``: left-to-right, top-prob = DUEL's confidence, margin, entropy) the
sampler's law q over finished texts has a closed form. For a text x:

    z_0 = x with every free position masked (fixed/prompt positions kept)
    step i = 0, 1, ...:  P = the network's filtered distribution on z_i (at the sampler's time input),
                         S_i = the k_i masked positions the order picks on z_i,
                         log q(x) += sum_{l in S_i} log P_l(x_l),
                         z_{i+1} = z_i with x revealed at S_i
    until nothing is masked.

Exact, not a bound: the sampler can reach x along this one path only (the picks at z_i do not
depend on what is drawn, and drawing x's tokens at S_i leads to z_{i+1}), and it follows the
path with exactly that probability (the draws of a step are independent). Summed over every
text, q is one (it is a sampler's law; tests/test_duel.py enumerates it). k_i is the sampler's
own schedule (``reveal_count``): one token per step when ``steps`` is the length, the linear
share ceil(masked / steps left) with fewer steps.

Cost: one network call per step, L calls for a window of L tokens at one token per step, where
the ELBO takes a handful of Monte Carlo draws. What the numbers mean beside each other: the
ELBO bounds the likelihood of the model's random-order process (the training distribution);
DUEL is the likelihood of the text under the sampler one actually runs; the AR twin's NLL is
exact too, and is DUEL's left-to-right order at one token per step with a causal network.
``confidence`` (the probability of the token it drew) and ``random`` have no DUEL likelihood:
their pick depends on the draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import eval_windows
from ..errors import UsageError
from ..sampling.filters import draw_and_rank
from ..sampling.registry import ABSORBING, DETERMINISTIC_ORDERS
from ..sampling.remasking import (
    RemaskingSampler,
    masked_time,
    order_scores,
    reveal_count,
    top_k_mask,
)
from .likelihood import LikelihoodReport, window_report


def check_duel(process, sampler) -> None:
    """A UsageError unless ``sampler`` is a remasking sampler with a deterministic order and
    ``process`` an absorbing (masked) one: the pairs DUEL's likelihood is exact for."""
    if process.name not in ABSORBING or process.mask_id is None:
        raise UsageError(f"DUEL's exact likelihood is for masked diffusion runs ({', '.join(ABSORBING)}); "
                         f"this one is {process.name!r} (its ELBO is what eval reports)")
    strategy = getattr(sampler, "strategy", None)
    if type(sampler) is not RemaskingSampler or strategy not in DETERMINISTIC_ORDERS:
        name = getattr(sampler, "name", type(sampler).__name__)
        raise UsageError(f"DUEL needs a sampler whose order does not depend on its draws "
                         f"({', '.join(DETERMINISTIC_ORDERS)}); {name!r} is not one"
                         + (" (it ranks by the token it drew: top-prob ranks by the top-1 probability)"
                            if strategy == "confidence" else ""))


@torch.no_grad()
def duel_log_likelihood(model, process, tokens: torch.Tensor, sampler, steps: int | None = None,
                        fixed: torch.Tensor | None = None, on_call=None) -> torch.Tensor:
    """(B,) log q(x) in nats (float64): the probability that ``sampler`` (a remasking sampler with
    a deterministic order: ``build_sampler("top-prob", process, tokenizer, temperature=...)``),
    run for ``steps`` steps (default: the length, one token per step), generates each row of
    ``tokens`` (B, L) from the canvas that keeps ``fixed`` (B, L) positions (a prompt; default
    none) and masks the rest. -inf where a token is one the sampler never draws (banned ids,
    outside its top-k/top-p). One batched network call per step; ``on_call()`` after each."""
    check_duel(process, sampler)
    B, T = tokens.shape
    fixed = torch.zeros_like(tokens, dtype=torch.bool) if fixed is None else fixed.to(tokens.device)
    if fixed.shape != tokens.shape:
        raise UsageError(f"fixed positions {tuple(fixed.shape)} must match the tokens {tuple(tokens.shape)}")
    mask_id = process.mask_id
    if bool(((tokens == mask_id) & ~fixed).any()):
        raise UsageError("a scored position holds the mask token: give the text to score, not a masked canvas")
    steps = T if steps is None else steps
    if steps < 1:
        raise UsageError(f"steps must be positive; got {steps}")
    z = torch.where(fixed, tokens, torch.full_like(tokens, mask_id))
    masked_at_start = (~fixed).sum(1)
    log_q = torch.zeros(B, dtype=torch.float64, device=tokens.device)
    for step in range(steps):
        masked = z == mask_id
        if not bool(masked.any()):
            break
        logits = model(z, masked_time(process, z, fixed))  # the time input the sampler gives
        if on_call is not None:
            on_call()
        log_p, scores = draw_and_rank(process, logits, sampler)  # what it draws from, what it ranks by
        k = reveal_count(masked.sum(1), masked_at_start, step, steps, sampler.schedule)
        pick = top_k_mask(order_scores(scores, None, sampler.strategy), masked, k)
        token_log_p = log_p.gather(-1, tokens[..., None]).squeeze(-1).double()
        log_q += torch.where(pick, token_log_p, torch.zeros_like(token_log_p)).sum(1)
        z = torch.where(pick, tokens, z)
    return log_q


@dataclass
class DuelReport(LikelihoodReport):
    order: str = ""
    steps: int = 0  # sampler steps per window (the context: one token per step)
    network_calls: int = 0


@torch.no_grad()
def evaluate_duel(model, process, tokens: np.ndarray, token_bytes: np.ndarray, sampler, *, context: int,
                  steps: int | None = None, batch_size: int = 16, max_windows: int = 16,
                  progress=None) -> DuelReport:
    """DUEL's exact NLL of the last ``context`` tokens of the non-overlapping windows that tile
    ``tokens`` (the ones ``evaluate_likelihood`` scores, the first ``max_windows`` of them), in
    bits/token and bits/byte. ``progress()`` after every network call (``steps`` per batch)."""
    check_duel(process, sampler)
    device = next(model.parameters()).device
    windows = eval_windows(tokens, context, max_windows)[:, 1:]  # (N, context): no context token
    model.eval()
    calls = [0]

    def on_call():
        calls[0] += 1
        if progress is not None:
            progress()

    nats = []
    for i in range(0, len(windows), batch_size):
        batch = windows[i : i + batch_size].to(device)
        nats.append(-duel_log_likelihood(model, process, batch, sampler, steps, on_call=on_call).cpu())
    base = window_report(torch.cat(nats), windows, token_bytes, 1, True)
    return DuelReport(**base.to_dict(), order=sampler.strategy, steps=context if steps is None else steps,
                      network_calls=calls[0])
