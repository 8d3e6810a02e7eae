"""Ancestral sampling of a discrete reverse process, with MDLM's caching trick for masking.

Steps run on the grid t_0 = 1 > t_1 > ... > t_N = 0; each draws p(x_s | x_t) with the
process's ``reverse_step`` (masked: every masked token unmasks with probability
(alpha_s - alpha_t) / (1 - alpha_t), and the last step unmasks everything left; uniform: every
token is redrawn from the posterior mixture over the model's x0 estimate).

Cache: when no token changed in a step, x_t is the same, so p_theta(x0 | x_t) is the same and the
network is not called again (exact when the model is not time-conditioned; a time-conditioned
model is always re-run). NFE counts real network calls only.

Top-k / top-p with a masked model are applied only to the rows that unmask in a step (the
others need just their argmax, which filtering keeps): a nucleus over every position's full
vocabulary at every step cost more than the network (a sort of T x V each call).

Canvas: fixed positions are never redrawn; an edit canvas (t_start < 1) runs the grid
t_start > ... > 0 from its re-noised span.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch

from ..errors import UsageError
from .base import (
    Canvas,
    Generation,
    OnStep,
    StepOutput,
    report_step,
    resolve_canvas,
    start_sequence,
)
from .filters import ban, filter_logits, validate_sampling_args

RowFilter = Callable[[torch.Tensor], torch.Tensor]  # (N, V) log-probabilities -> filtered (N, V)


class AncestralSampler:
    name = "ancestral"
    stop_when_unmasked = True  # a masked model is done once nothing is masked (ReMDM is not)

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 banned_ids: tuple[int, ...] = (), cache: bool = True):
        validate_sampling_args(temperature, top_k, top_p)
        self.banned_ids = list(banned_ids)  # ids that are never text (mask, pad, unknown)
        self.temperature, self.top_k, self.top_p, self.cache = temperature, top_k, top_p, cache
        self.timesteps: torch.Tensor | None = None

    def set_timesteps(self, num_steps: int, t_start: float = 1.0) -> None:
        if num_steps <= 0:
            raise UsageError("steps must be positive")
        self.timesteps = torch.linspace(t_start, 0.0, num_steps + 1, dtype=torch.float64)

    def step(self, log_p_x0: torch.Tensor, x_t: torch.Tensor, t: float, s: float, process,
             gen: torch.Generator | None = None, fixed: torch.Tensor | None = None,
             row_filter: RowFilter | None = None) -> StepOutput:
        """One draw of p(x_s | x_t) by the process's reverse step; ``fixed`` (B, T) positions
        (the prompt) are kept. ``log_p_x0``: (B, T, V) filtered log-probabilities of x0, or, with
        ``row_filter`` (masked models only), log-probabilities whose rows the filter finishes
        where a token is drawn."""
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps(num_steps) before step()")
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

    @torch.no_grad()
    def generate(self, model, process, *, length: int | None = None, steps: int, batch_size: int = 1,
                 prompt: torch.Tensor | None = None, gen: torch.Generator | None = None,
                 on_step: OnStep | None = None, trace: bool = False, canvas: Canvas | None = None) -> Generation:
        canvas = resolve_canvas(model, prompt, batch_size, length, canvas)
        x, fixed, device = start_sequence(process, canvas, gen), canvas.fixed, canvas.tokens.device
        self.set_timesteps(steps, canvas.t_start)
        nfe, log_p, states = 0, None, []
        reuse_ok = self.cache and process.supports_cache and not model.cfg.time_cond
        row_filter = self._row_filter(process)
        top_k, top_p = (0, 1.0) if row_filter is not None else (self.top_k, self.top_p)
        start = time.perf_counter()
        for i in range(steps):
            t, s = float(self.timesteps[i]), float(self.timesteps[i + 1])
            if self.stop_when_unmasked and process.supports_cache and not (x == process.mask_id).any():
                break  # nothing left to unmask
            if log_p is None or not reuse_ok:
                t_vec = torch.full((x.shape[0],), t, device=device)
                logits = ban(model(x, t_vec), self.banned_ids)
                log_p = filter_logits(process.log_probs(logits), self.temperature, top_k, top_p)
                nfe += 1
            out = self.step(log_p, x, t, s, process, gen, fixed, row_filter)
            out.log_probs, out.nfe = log_p, nfe
            if out.changed.any():
                log_p = None  # x changed: the cached prediction is stale
            x = out.x_prev
            report_step(i, out, states if trace else None, on_step)
        return Generation(x, canvas.prompt_length, nfe, time.perf_counter() - start, states, fixed)


class EulerSampler(AncestralSampler):
    """Score-entropy models: first-order (Euler / tau-leaping) steps with the model's reverse
    rates instead of the analytic posterior; the last step is analytic. Same loop and options."""

    name = "euler"

    def _row_filter(self, process) -> None:
        return None  # euler_step redraws whole rows: filter them all

    def _transition(self, process):
        return process.euler_step


class TauLeapingSampler(EulerSampler):
    """The same steps as ``euler`` under the name the literature also uses (one jump per token)."""

    name = "tau-leaping"
