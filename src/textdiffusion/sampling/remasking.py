"""Remasking samplers for masked models: which masked tokens to reveal at each step (MaskGIT /
LLaDA "low-confidence remasking" and its relatives), and ReMDM, which may also re-mask tokens it
already decoded.

Order strategies (``RemaskingSampler(strategy=...)``; each step samples a candidate for every
masked position, then keeps the k highest-scoring ones):

    confidence     probability of the sampled candidate (LLaDA's low-confidence remasking)
    margin         gap between the two most likely tokens (top-1 minus top-2 probability)
    entropy        negative entropy of the position's distribution (most certain first)
    random         a random order (the same number per step as the others)
    top-prob       the top-1 probability of the position (DUEL's "confidence")
    left-to-right  the leftmost masked positions first

``margin``, ``entropy``, ``top-prob`` and ``left-to-right`` are deterministic
(``registry.DETERMINISTIC_ORDERS``): which positions a step reveals is a function of the canvas
alone (and the network's output on it), never of the draws, so the sampler's probability of a
text is exact and computable (DUEL, Turok et al. 2026: evaluation/duel.py). ``confidence`` ranks by the token it drew, and ``random`` by a coin: their
order depends on the draw.

How many per step (``schedule``):

    linear       k = ceil(masked / steps left): an even share, so ``steps`` calls decode everything
    cosine       MaskGIT's schedule: after step i of N, a fraction cos(pi/2 (i+1)/N) of the
                 initially masked tokens is still masked: few tokens early, many late
    dream        Dream's published count: k = floor(masked * (1 - s / t)) on the grid
                 t = linspace(1, 0.001, N + 1) (an ancestral step's expected count, rounded down;
                 a step may reveal none), everything at the last step

ReMDM (Wang et al. 2025, "Remasking Discrete Diffusion Models with Inference-Time Scaling"), the
"max-capped" schedule: on the grid 1 = t_0 > ... > t_N = 0, a decoded token is re-masked with
probability sigma = min(eta, (1 - alpha_s) / alpha_t) and a masked one is revealed with
probability (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t); sigma = 0 is MDLM's ancestral step,
and at s = 0 everything is revealed. Prompt tokens are never re-masked.
"""

from __future__ import annotations

import math

import torch

from ..errors import UsageError
from .ancestral import AncestralSampler
from .base import Canvas, Generators, Sampler, State, StepOutput, padded_call
from .filters import draw_and_rank, sample_categorical, validate_sampling_args

STRATEGIES = ("confidence", "margin", "entropy", "random", "top-prob", "left-to-right")
REVEAL_SCHEDULES = ("linear", "cosine", "dream")


def order_scores(log_p: torch.Tensor, candidate: torch.Tensor | None, strategy: str,
                 gen: torch.Generator | None = None) -> torch.Tensor:
    """(B, T) how much each position wants to be revealed now (higher first). The deterministic
    strategies (``registry.DETERMINISTIC_ORDERS``) read ``log_p`` only (``candidate`` may be None)."""
    if strategy == "top-prob":
        return log_p.max(-1).values
    if strategy == "left-to-right":  # minus the position (exact in float32 up to 2^24 positions)
        return -torch.arange(log_p.shape[-2], device=log_p.device, dtype=torch.float32).expand(log_p.shape[:-1])
    if strategy == "confidence":
        return log_p.gather(-1, candidate[..., None]).squeeze(-1)
    if strategy == "margin":
        top2 = log_p.topk(2, dim=-1).values.exp()
        return top2[..., 0] - top2[..., 1]
    if strategy == "entropy":
        p = log_p.exp()
        return (p * log_p.clamp_min(-1e30)).nan_to_num().sum(-1)  # -H: certain positions first
    if strategy == "random":
        return torch.rand(candidate.shape, generator=gen, device=candidate.device)
    raise UsageError(f"unknown strategy {strategy!r} (choose {', '.join(STRATEGIES)})")


def reveal_count(masked_now: torch.Tensor, masked_at_start: torch.Tensor, step: int, steps: int,
                 schedule: str) -> torch.Tensor:
    """(B,) tokens to reveal at ``step`` (0-based) of ``steps``: at least one while any is masked,
    and all of them at the last step."""
    if schedule == "linear":
        k = torch.ceil(masked_now.double() / (steps - step)).long()
    elif schedule == "cosine":
        still = torch.floor(masked_at_start.double() * math.cos(0.5 * math.pi * (step + 1) / steps)).long()
        k = masked_now - still
    elif schedule == "dream":  # float32 as Dream computes it, so the counts are Dream's to the token
        if step >= steps - 1:
            return masked_now
        grid = torch.linspace(1.0, 1e-3, steps + 1)
        return (masked_now.float() * (1.0 - grid[step + 1] / grid[step])).long()
    else:
        raise UsageError(f"unknown reveal schedule {schedule!r} (choose {', '.join(REVEAL_SCHEDULES)})")
    return torch.minimum(k.clamp_min(1), masked_now)


def top_k_mask(scores: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the k[b] highest ``scores`` among the ``eligible`` positions of each row, ties
    to the leftmost. Compared in float32 (float64 scores are rounded): positions the network cannot
    tell apart (an all-mask canvas without a prompt) tie exactly in exact arithmetic, and must not
    be ordered by the last bits of a float64 sum, which differ between CPUs' kernels."""
    scores = scores.float().masked_fill(~eligible, float("-inf"))
    order = scores.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return eligible & (rank < k[:, None])


def reveal_step(log_p: torch.Tensor, x_t: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor, strategy: str,
                gen: torch.Generator | None = None, scores: torch.Tensor | None = None) -> StepOutput:
    """Sample a candidate everywhere from ``log_p``, then reveal the k[b] best ``eligible``
    positions of row b, ranked by ``scores`` (log-probabilities; default ``log_p``: see
    filters.draw_and_rank for greedy)."""
    candidate = sample_categorical(log_p, gen)  # (B, T)
    changed = top_k_mask(order_scores(log_p if scores is None else scores, candidate, strategy, gen), eligible, k)
    return StepOutput(torch.where(changed, candidate, x_t), torch.where(eligible, candidate, x_t), changed)


def masked_time(process, x: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """(B,) the diffusion time whose masked fraction matches the free positions (time-conditioned models)."""
    free = ~fixed
    frac = ((x == process.mask_id) & free).sum(1).float() / free.sum(1).clamp_min(1).float()
    return process.schedule.time_of(1.0 - frac).clamp(process.eps, 1.0)


class RemaskingSampler(Sampler):
    name = "confidence"
    family = "remasking"  # confidence, margin, entropy and random rows batch together

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 banned_ids: tuple[int, ...] = (), strategy: str = "confidence", schedule: str = "linear"):
        validate_sampling_args(temperature, top_k, top_p)
        if strategy not in STRATEGIES:
            raise UsageError(f"unknown strategy {strategy!r} (choose {', '.join(STRATEGIES)})")
        if schedule not in REVEAL_SCHEDULES:
            raise UsageError(f"unknown reveal schedule {schedule!r} (choose {', '.join(REVEAL_SCHEDULES)})")
        self.banned_ids = list(banned_ids)  # ids that are never text (mask, pad, unknown)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.strategy, self.schedule, self.name = strategy, schedule, strategy

    def transition(self, log_p_x0: torch.Tensor, x_t: torch.Tensor, k: torch.Tensor, mask_id: int,
                   gen: torch.Generator | None = None, scores: torch.Tensor | None = None) -> StepOutput:
        """Reveal the k[b] best masked positions of row b (``log_p_x0``: filtered log-probabilities;
        ``scores``: what the order ranks by, default ``log_p_x0``)."""
        return reveal_step(log_p_x0, x_t, x_t == mask_id, k, self.strategy, gen, scores)

    def start(self, model, process, canvas: Canvas, steps: int, gen: Generators = None) -> State:
        if process.mask_id is None:
            raise UsageError(f"the {self.name} sampler needs a masked model; this one is {process.name!r} (use ancestral)")
        state = self._rows(process, canvas, steps, gen)  # fixed positions are never masked, so never revealed
        for r in state.rows:
            masked = r.tokens == process.mask_id
            r.data["masked_at_start"] = masked.sum()[None]
            r.done = not bool(masked.any())
        return state

    def step(self, state: State, model) -> StepOutput:
        process, rows = state.process, state.active()
        t = torch.cat([masked_time(process, r.tokens[None], r.fixed[None]) for r in rows])
        logits = padded_call(lambda x, mask: model(x, t, **({} if mask is None else {"attn_mask": mask})),
                             [r.tokens for r in rows])
        state.calls += 1
        changed, dists = {}, {}
        for r, lg in zip(rows, logits):
            smp = r.sampler
            log_p, scores = draw_and_rank(process, lg[None], smp)
            masked = r.tokens[None] == process.mask_id
            k = reveal_count(masked.sum(1), r.data["masked_at_start"], r.step, r.steps, smp.schedule)
            out = smp.transition(log_p, r.tokens[None], k, process.mask_id, r.gen, scores)
            changed[r], dists[r] = out.changed[0], (0, log_p[0])
            r.tokens, r.nfe, r.step = out.x_prev[0], r.nfe + 1, r.step + 1
            r.done = r.step >= r.steps or not bool((r.tokens == process.mask_id).any())
        return state.output(changed, dists)


class ReMDMSampler(AncestralSampler):
    """ReMDM with the max-capped remasking schedule (``eta``: the cap on the re-mask probability).
    The ancestral loop, with this step, run to the end (a decoded token may still be re-masked)."""

    name = "remdm"
    stop_when_unmasked = False
    remasks = True  # a decoded token may be re-masked: nothing is final before the last step

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 banned_ids: tuple[int, ...] = (), eta: float = 0.04):
        super().__init__(temperature, top_k, top_p, banned_ids)
        if not 0.0 <= eta <= 1.0:
            raise UsageError("eta (the ReMDM re-mask cap) must be in [0, 1]")
        self.eta = eta

    def probabilities(self, process, t: float, s: float) -> tuple[float, float]:
        """(P(reveal a masked token), P(re-mask a decoded token)) for the step t -> s."""
        a_t = float(process.schedule.alpha(torch.tensor(t, dtype=torch.float64)))
        a_s = float(process.schedule.alpha(torch.tensor(s, dtype=torch.float64)))
        sigma = min(self.eta, (1.0 - a_s) / a_t) if a_t > 0 else 0.0
        reveal = 1.0 if a_t >= 1.0 else (a_s - (1.0 - sigma) * a_t) / (1.0 - a_t)
        return min(max(reveal, 0.0), 1.0), max(sigma, 0.0)

    def transition(self, log_p_x0: torch.Tensor, x_t: torch.Tensor, t: float, s: float, process,
                   gen: torch.Generator | None = None, fixed: torch.Tensor | None = None,
                   row_filter=None) -> StepOutput:
        if process.mask_id is None:
            raise UsageError(f"ReMDM needs a masked model; this one is {process.name!r}")
        reveal, remask = self.probabilities(process, t, s)
        masked = x_t == process.mask_id
        u = torch.rand(x_t.shape, generator=gen, device=x_t.device)
        unmask = masked & (u < reveal)
        back = ~masked & (u < remask)
        if fixed is not None:
            back &= ~fixed
        candidate = process.draw_x0(log_p_x0, x_t, unmask, gen, row_filter)  # drawn only where a token unmasks
        x_s = torch.where(unmask, candidate, x_t)
        x_s = torch.where(back, torch.full_like(x_t, process.mask_id), x_s)
        return StepOutput(x_s, candidate, x_s != x_t)
