"""Ancestral sampling of a discrete reverse process, with MDLM's caching trick for masking.

Steps run on the grid t_0 = 1 > t_1 > ... > t_N = 0; each draws p(x_s | x_t) with the
process's ``reverse_step`` (masked: every masked token unmasks with probability
(alpha_s - alpha_t) / (1 - alpha_t), and the last step unmasks everything left; uniform: every
token is redrawn from the posterior mixture over the model's x0 estimate).

Cache: when no token of a row changed in a step, its x_t is the same, so p_theta(x0 | x_t) is the
same and the row skips the next network call (exact when the model is not time-conditioned; a
time-conditioned model is always re-run). NFE counts real network calls only.

State machine (sampling/base.py): each row keeps its own time grid (its step count and start
time), its cached prediction and its generator; ``step`` runs one network call over the rows
that need a new prediction and draws every unfinished row's x_s from its own x_t.

Top-k / top-p with a masked model are applied only to the rows that unmask in a step (the
others need just their argmax, which filtering keeps): a nucleus over every position's full
vocabulary at every step cost more than the network (a sort of T x V each call).

Canvas: fixed positions are never redrawn; an edit canvas (t_start < 1) runs the grid
t_start > ... > 0 from its re-noised span.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from .base import Canvas, Generators, Row, Sampler, State, StepOutput, padded_call, time_grid
from .batched import (
    by_options,
    categorical,
    chunks,
    compact,
    gather_cached,
    network_call,
    stack_fixed,
    stack_tokens,
    uniforms,
)
from .filters import ban, filter_logits, validate_sampling_args

RowFilter = Callable[[torch.Tensor], torch.Tensor]  # (N, V) log-probabilities -> filtered (N, V)


class AncestralSampler(Sampler):
    name = "ancestral"
    family = "ancestral"  # ancestral, euler, tau-leaping and remdm rows batch together
    stop_when_unmasked = True  # a masked model is done once nothing is masked (ReMDM is not)
    batched = True  # on a process that draws only revealed tokens, a step runs over all rows at once

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 banned_ids: tuple[int, ...] = (), cache: bool = True):
        validate_sampling_args(temperature, top_k, top_p)
        self.banned_ids = list(banned_ids)  # ids that are never text (mask, pad, unknown)
        self.temperature, self.top_k, self.top_p, self.cache = temperature, top_k, top_p, cache

    @staticmethod
    def timesteps(num_steps: int, t_start: float = 1.0) -> torch.Tensor:
        """For a loop of your own over ``transition`` (diffusers' form): the grid t_0 = t_start >
        ... > t_N = 0. ``start``/``step`` keep each row's own grid; a sampler keeps no call's state."""
        return time_grid(num_steps, t_start)

    def transition(self, log_p_x0: torch.Tensor, x_t: torch.Tensor, t: float, s: float, process,
                   gen: torch.Generator | None = None, fixed: torch.Tensor | None = None,
                   row_filter: RowFilter | None = None) -> StepOutput:
        """One draw of p(x_s | x_t) by the process's reverse step; ``fixed`` (B, T) positions
        (the prompt) are kept. ``log_p_x0``: (B, T, V) filtered log-probabilities of x0, or, with
        ``row_filter`` (masked models only), log-probabilities whose rows the filter finishes
        where a token is drawn."""
        extra = {"row_filter": row_filter} if row_filter is not None else {}
        x_s, x0_pred = self._transition(process)(log_p_x0, x_t, t, s, gen, **extra)
        if fixed is not None:
            x_s = torch.where(fixed, x_t, x_s)
        return StepOutput(x_s, x0_pred, x_s != x_t)

    def _row_filter(self, process) -> RowFilter | None:
        """Top-k/top-p deferred to the drawn rows, where the process draws only those (masked)."""
        if not process.draws_revealed_only or self.temperature == 0 or (not self.top_k and self.top_p >= 1.0):
            return None
        return functools.partial(filter_logits, temperature=1.0, top_k=self.top_k, top_p=self.top_p)

    def _transition(self, process):
        """The process's exact reverse draw (analytic for score-entropy models)."""
        return process.reverse_step

    def probabilities(self, process, t: float, s: float) -> tuple[float, float]:
        """(P(reveal a masked token), P(re-mask a decoded token)) for the step t -> s."""
        return process.unmask_probability(t, s), 0.0

    def _unmasked(self, row: Row, process) -> bool:
        return self.stop_when_unmasked and process.supports_cache and not bool((row.tokens == process.mask_id).any())

    # state machine -------------------------------------------------------------------------
    def start(self, model, process, canvas: Canvas, steps: int, gen: Generators = None) -> State:
        state = self._rows(process, canvas, steps, gen)
        times = time_grid(steps, canvas.t_start).tolist()  # the row's, never the sampler object's: it keeps no call's state
        for row in state.rows:
            row.data["times"] = times
            row.done = self._unmasked(row, process)  # an edit whose span drew no mask: nothing to do
        return state

    def _predict(self, state: State, model, rows: list[Row]) -> None:
        """One network call over ``rows``: each row's filtered p_theta(x0 | x_t) at its own time."""
        process = state.process
        t = torch.tensor([r.data["times"][r.step] for r in rows], device=rows[0].tokens.device)
        logits = padded_call(lambda x, mask: model(x, t, **({} if mask is None else {"attn_mask": mask})),
                             [r.tokens for r in rows])
        state.calls += 1
        for r, lg in zip(rows, logits):
            r.data["log_p"] = r.sampler._log_p(process, lg[None])
            r.nfe += 1

    def step(self, state: State, model) -> StepOutput:
        process = state.process
        rows = state.active()
        if process.draws_revealed_only and all(r.sampler.batched for r in rows):
            return self._step_revealing(state, model, rows)
        time_cond = model.cfg.reads_time
        stale = [r for r in rows if r.data.get("log_p") is None
                 or not (r.sampler.cache and process.supports_cache and not time_cond)]
        if stale:
            self._predict(state, model, stale)
        changed, dists, x0 = {}, {}, None
        for r in rows:
            smp, times = r.sampler, r.data["times"]
            t, s = times[r.step], times[r.step + 1]
            log_p = r.data["log_p"]
            out = smp.transition(log_p, r.tokens[None], t, s, process, r.gen, r.fixed[None],
                                 smp._row_filter(process))
            changed[r], dists[r] = out.changed[0], (0, log_p[0])
            if out.changed.any():
                r.data["log_p"] = None  # x changed: the cached prediction is stale
            r.tokens = out.x_prev[0]
            r.step += 1
            r.done = r.step >= r.steps or smp._unmasked(r, process)
            if len(rows) == 1:
                x0 = out.x0_pred
        return state.output(changed, dists, x0=x0 if len(state.rows) == 1 else None)


    # the batched step of a process that draws only the tokens it reveals (masked) --------------
    def _step_revealing(self, state: State, model, rows: list[Row]) -> StepOutput:
        """Every row's step at once: one network call over the rows whose cached prediction is
        stale; each row's uniforms and draws from its own generator, in the order its step alone
        draws them (sampling/batched.py); the filtering only where a token is drawn (the network's
        logits are cached raw: a filtered (T, V) per row and step cost more than the network)."""
        process, every = state.process, model.cfg.reads_time
        stale = [r for r in rows if every or r.data.get("source") is None or not r.sampler.cache]
        if stale:
            t = torch.tensor([r.data["times"][r.step] for r in stale], device=stale[0].tokens.device)
            out = network_call(model, stale, stack_tokens(stale), t)
            state.calls += 1
            for i, r in enumerate(stale):
                r.data["source"], r.nfe = (out, i), r.nfe + 1
        lengths, odds, chances = [], {}, []
        for r in rows:  # one pass: a sampler's rows at one step share one computation of its probabilities
            times = r.data["times"]
            key = (id(r.sampler), times[r.step], times[r.step + 1])
            if key not in odds:
                odds[key] = r.sampler.probabilities(process, key[1], key[2])
            chances.append(odds[key])
            lengths.append(r.length)
        x = stack_tokens(rows, lengths)
        B, T = x.shape
        u = uniforms(rows, T, x.device, lengths)
        reveal, remask = torch.tensor(chances, dtype=u.dtype, device=x.device).unbind(1)  # compared in u's dtype, as alone
        masked = x == process.mask_id
        unmask = masked & (u < reveal[:, None])
        x0 = x.clone()
        b, p = unmask.nonzero(as_tuple=True)
        if b.numel():
            x0[b, p] = self._draw(process, rows, b, p, unmask.sum(1).tolist())
        fixed = stack_fixed(rows, T, lengths)
        x_s = torch.where(unmask & ~fixed, x0, x)  # (a fixed mask token is drawn, as alone, and kept)
        if bool((remask > 0).any()):
            back = ~masked & (u < remask[:, None]) & ~fixed
            x_s = torch.where(back, torch.full_like(x_s, process.mask_id), x_s)
        return self._advance(state, rows, x, x_s, x0, unmask, lengths)

    def _draw(self, process, rows: list[Row], b: torch.Tensor, p: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """(N,) the tokens drawn at row b[n], position p[n] (row-major): each row's logits there
        filtered by its options (the same rows its filter sees stepped alone), drawn with its
        generator."""
        picked = [r for r, c in zip(rows, counts) if c]
        drawn = [c for c in counts if c]
        tokens = []
        for lo, hi, first, last in chunks(drawn, self._vocab(rows[0])):  # whole rows, a few MB at a time
            logits = gather_cached(rows, b[lo:hi], p[lo:hi])
            log_p = by_options(picked[first:last], drawn[first:last], logits, lambda smp, lg: smp._filtered(process, lg, owned=True))  # (gathered: a copy)
            tokens.append(categorical(log_p, drawn[first:last], [r.gen for r in picked[first:last]]))
        return torch.cat(tokens) if len(tokens) > 1 else tokens[0]

    @staticmethod
    def _vocab(row: Row) -> int:
        return row.data["source"][0].shape[-1]

    def _log_p(self, process, logits: torch.Tensor, owned: bool = False) -> torch.Tensor:
        """(..., V) p_theta(x0 | x_t) filtered by this row's options, top-k/top-p left out where
        ``_row_filter`` applies them to the drawn rows only (``owned``: as ``filters.ban``)."""
        row_filter = self._row_filter(process)
        top_k, top_p = (0, 1.0) if row_filter is not None else (self.top_k, self.top_p)
        return filter_logits(process.log_probs(ban(logits, self.banned_ids, owned)), self.temperature, top_k, top_p,
                             normalized=True)

    def _filtered(self, process, logits: torch.Tensor, owned: bool = False) -> torch.Tensor:
        """(N, V) the log-probabilities a token is drawn from, of (N, V) logits at drawn positions:
        this row's step alone filters its whole (T, V) prediction and then draws at these rows;
        every filter works along the vocabulary only, so these rows come out the same
        (``owned``: as ``filters.ban``)."""
        row_filter = self._row_filter(process)
        log_p = self._log_p(process, logits, owned)
        return row_filter(log_p) if row_filter is not None else log_p

    def _advance(self, state: State, rows: list[Row], x: torch.Tensor, x_s: torch.Tensor, x0: torch.Tensor,
                 unmask: torch.Tensor, lengths: list[int]) -> StepOutput:
        """Each row takes its new tokens and its step; the step's record (its distributions and
        the model's guess only when someone listens)."""
        process = state.process
        changed = x_s != x
        moved, left = changed.any(1).tolist(), (x_s == process.mask_id).any(1).tolist()
        T = x.shape[1]
        new = x_s.unbind(0)  # one call for every row's view (a row shorter than T: its own slice)
        dists, guess = {}, None
        for b, r in enumerate(rows):
            if state.report:
                out, i = r.data["source"]
                dists[r] = (0, r.sampler._log_p(process, out[i, : r.length]))  # what the trace shows
                if len(state.rows) == 1:  # drawn where a token unmasks, the most likely token at other masks
                    guess = torch.where((x[b] == process.mask_id) & ~unmask[b], dists[r][1].argmax(-1), x0[b])[None]
            r.tokens = new[b] if lengths[b] == T else new[b][: lengths[b]]
            r.step += 1
            r.done = r.step >= r.steps or (r.sampler.stop_when_unmasked and process.supports_cache and not left[b])
            if moved[b] or r.done:  # x changed (the cached prediction is stale), or the row has finished
                r.data["source"] = None
        compact(rows)
        if len(rows) == len(state.rows) and not state.report:
            return StepOutput(x_s, None, changed, nfe=state.calls)
        return state.output({r: changed[b, : r.length] for b, r in enumerate(rows)}, dists, x0=guess)

class EulerSampler(AncestralSampler):
    """Score-entropy models: first-order (Euler / tau-leaping) steps with the model's reverse
    rates instead of the analytic posterior; the last step is analytic. Same loop and options."""

    name = "euler"
    batched = False

    def _row_filter(self, process) -> None:
        return None  # euler_step redraws whole rows: filter them all

    def _transition(self, process):
        return process.euler_step


class TauLeapingSampler(EulerSampler):
    """The same steps as ``euler`` under the name the literature also uses (one jump per token)."""

    name = "tau-leaping"
