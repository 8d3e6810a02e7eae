"""Remasking samplers for masked models: which masked tokens to reveal at each step (MaskGIT /
LLaDA "low-confidence remasking" and its relatives), and ReMDM, which may also re-mask tokens it
already decoded.

Order strategies (``RemaskingSampler(strategy=...)``; each step samples a candidate for every
masked position, by one float64 uniform through its cumulative distribution (``inverse_cdf``),
then keeps the k highest-scoring ones):

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
from .base import Canvas, Generators, Sampler, State, StepOutput
from .batched import by_options, chunks, network_call, stack_fixed, stack_tokens
from .filters import draw_and_rank, validate_sampling_args

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


def reveal_counts(masked_now: torch.Tensor, masked_at_start: torch.Tensor, steps: list[int], totals: list[int],
                  schedules: list[str]) -> torch.Tensor:
    """(B,) ``reveal_count`` of every row at once: row b at step ``steps[b]`` of ``totals[b]`` under
    ``schedules[b]`` (each row's count computed as it is alone, in the same dtypes)."""
    if len(set(schedules)) == 1 and len(set(steps)) == 1 and len(set(totals)) == 1:
        return reveal_count(masked_now, masked_at_start, steps[0], totals[0], schedules[0])
    k = torch.empty_like(masked_now)
    for schedule in set(schedules):
        rows = [b for b, s in enumerate(schedules) if s == schedule]
        index = torch.tensor(rows, device=masked_now.device)
        now, start = masked_now[index], masked_at_start[index]
        step = torch.tensor([steps[b] for b in rows], device=now.device)
        total = torch.tensor([totals[b] for b in rows], device=now.device)
        if schedule == "linear":
            part = torch.minimum(torch.ceil(now.double() / (total - step)).long().clamp_min(1), now)
        elif schedule == "cosine":
            turn = torch.tensor([math.cos(0.5 * math.pi * (steps[b] + 1) / totals[b]) for b in rows],
                                dtype=torch.float64, device=now.device)
            part = torch.minimum((now - torch.floor(start.double() * turn).long()).clamp_min(1), now)
        else:
            part = torch.stack([reveal_count(now[i : i + 1], start[i : i + 1], steps[b], totals[b], schedule)[0]
                                for i, b in enumerate(rows)])
        k[index] = part
    return k


def top_k_mask(scores: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the k[b] highest ``scores`` among the ``eligible`` positions of each row, ties
    to the leftmost. Compared in float32 (float64 scores are rounded): positions the network cannot
    tell apart (an all-mask canvas without a prompt) tie exactly in exact arithmetic, and must not
    be ordered by the last bits of a float64 sum, which differ between CPUs' kernels."""
    scores = scores.float().masked_fill(~eligible, float("-inf"))
    order = scores.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return eligible & (rank < k[:, None])


def inverse_cdf(log_p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(N,) one draw from each row of (N, V) log-probabilities, by its (N,) float64 uniform: the
    token whose interval of the cumulative distribution holds it (float64 throughout, so the tail
    keeps its mass: Zheng et al. 2024). One uniform a draw, where ``sample_categorical``'s
    exponential race draws V: a remasking step draws a candidate at every masked position, and
    V exponentials each cost more than the network (64 x 4096 of them: 6 ms a row and step)."""
    probs = log_p.exp().double() if log_p.dtype == torch.float32 else log_p.double().exp()  # (exp: 2x the speed in float32)
    cdf = probs.cumsum(-1)
    total = cdf[:, -1]
    if not bool((torch.isfinite(total) & (total > 0)).all()):  # as torch.multinomial refuses them
        raise RuntimeError("probability tensor contains either inf, nan or element < 0, or sums to zero")
    pick = torch.searchsorted(cdf, (u * total)[:, None], right=True).squeeze(-1).clamp_max(probs.shape[-1] - 1)
    empty = probs.gather(-1, pick[:, None]).squeeze(-1) <= 0  # u * total rounded up to the total
    if bool(empty.any()):
        pick[empty] = probs.shape[-1] - 1 - (probs[empty] > 0).flip(-1).int().argmax(-1)
    return pick


def draw_candidates(log_p: torch.Tensor, eligible: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """(B, T) a candidate token at every ``eligible`` position, drawn from ``log_p`` (B, T, V) with
    one float64 uniform each (row-major order); 0 elsewhere."""
    candidate = torch.zeros(eligible.shape, dtype=torch.long, device=eligible.device)
    n = int(eligible.sum())
    if n:
        candidate[eligible] = inverse_cdf(log_p[eligible], torch.rand(n, dtype=torch.float64, generator=gen,
                                                                      device=eligible.device))
    return candidate


def reveal_step(log_p: torch.Tensor, x_t: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor, strategy: str,
                gen: torch.Generator | None = None, scores: torch.Tensor | None = None) -> StepOutput:
    """Draw a candidate at every ``eligible`` position from ``log_p``, then reveal the k[b] best
    of row b, ranked by ``scores`` (log-probabilities; default ``log_p``: see
    filters.draw_and_rank for greedy)."""
    candidate = draw_candidates(log_p, eligible, gen)  # (B, T)
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
        """Every row's step at once: one network call; the filtering, the candidates and their
        scores at the masked positions only; each row's uniforms from its own generator (its
        candidates', then a random order's), as its step alone draws them."""
        process, rows = state.process, state.active()
        x = stack_tokens(rows)
        B, T = x.shape
        masked = x == process.mask_id
        logits = self._call(state, model, rows, x)
        at = masked.nonzero(as_tuple=True)
        counts = masked.sum(1).tolist()
        chosen, ranks = [], []
        for lo, hi, first, last in chunks(counts, logits.shape[-1]):  # a few MB at a time: no page faults
            span = (at[0][lo:hi], at[1][lo:hi])
            log_p, ranked = by_options(rows[first:last], counts[first:last], logits[span],
                                       lambda smp, lg: draw_and_rank(process, lg, smp, owned=True))  # (a gathered copy)
            u = torch.cat([torch.rand(n, dtype=torch.float64, generator=r.gen, device=x.device)
                           for r, n in zip(rows[first:last], counts[first:last])])
            chosen.append(inverse_cdf(log_p, u))
            ranks.append(row_scores(rows[first:last], ranked, chosen[-1], span, counts[first:last]).float())
        chosen = torch.cat(chosen)
        scores = torch.full((B, T), float("-inf"), dtype=torch.float32, device=x.device)
        scores[at] = torch.cat(ranks)
        start = torch.cat([r.data["masked_at_start"] for r in rows])
        k = reveal_counts(masked.sum(1), start, [r.step for r in rows], [r.steps for r in rows],
                          [r.sampler.schedule for r in rows])
        changed = top_k_mask(scores, masked, k)
        candidate = x.clone()
        candidate[at] = chosen
        x_s = torch.where(changed, candidate, x)
        left = (x_s == process.mask_id).any(1).tolist()
        dists = {}
        for b, r in enumerate(rows):
            if state.report:
                dists[r] = (0, draw_and_rank(process, logits[b, : r.length][None], r.sampler)[0][0])
            r.tokens, r.nfe, r.step = x_s[b, : r.length], r.nfe + 1, r.step + 1
            r.done = r.step >= r.steps or not left[b]
        if len(rows) == len(state.rows) and not state.report:
            return StepOutput(x_s, None, changed, nfe=state.calls)
        return state.output({r: changed[b, : r.length] for b, r in enumerate(rows)}, dists)

    def _call(self, state: State, model, rows: list, x: torch.Tensor) -> torch.Tensor:
        """(B, T, V) the network's logits of every row (right-padded rows: no position attends to
        padding), at the time each row's masked fraction says (a time-conditioned model's input:
        computed row by row, as a row alone computes it)."""
        B, T = x.shape
        if model.cfg.reads_time:
            t = torch.cat([masked_time(state.process, r.tokens[None], r.fixed[None]) for r in rows])
        else:
            t = masked_time(state.process, x, stack_fixed(rows, T))
        state.calls += 1
        return network_call(model, rows, x, t)


def row_scores(rows: list, ranked: torch.Tensor, chosen: torch.Tensor, at: tuple[torch.Tensor, torch.Tensor],
               counts: list[int]) -> torch.Tensor:
    """(N,) how much each masked position wants to be revealed (``order_scores``), each row by its
    own strategy; a random order's coins drawn row by row with the row's generator."""
    strategies = {r.sampler.strategy for r in rows}
    if len(strategies) == 1 and not strategies & {"random", "left-to-right"}:
        return order_scores(ranked, chosen, strategies.pop())
    out = torch.empty(chosen.shape[0], dtype=ranked.dtype, device=chosen.device)
    start = 0
    for r, n in zip(rows, counts):
        if not n:
            continue
        span, strategy = slice(start, start + n), r.sampler.strategy
        if strategy == "random":
            out[span] = torch.rand(r.length, generator=r.gen, device=chosen.device)[at[1][span]].to(out.dtype)
        elif strategy == "left-to-right":
            out[span] = -at[1][span].to(out.dtype)
        else:
            out[span] = order_scores(ranked[span], chosen[span], strategy)
        start += n
    return out


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
