"""Confidence-ordered unmasking (MaskGIT / LLaDA "low-confidence remasking").

Each step samples a candidate for every masked position, then keeps only the most confident
ones: k = ceil(masked / steps_left) per sequence, so exactly ``steps`` network calls decode the
whole sequence (fewer if it has fewer masked tokens than steps). Confidence is the probability
of the sampled candidate under the filtered distribution.
"""

from __future__ import annotations

import time

import torch

from .base import Generation, OnStep, StepOutput, initial_sequence, report_step
from .filters import ban, filter_logits, sample_categorical, validate_sampling_args


class ConfidenceSampler:
    name = "confidence"

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 banned_ids: tuple[int, ...] = ()):
        validate_sampling_args(temperature, top_k, top_p)
        self.banned_ids = list(banned_ids)  # ids that are never text (mask, pad, unknown)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.num_steps: int | None = None

    def set_timesteps(self, num_steps: int) -> None:
        if num_steps <= 0:
            raise ValueError("steps must be positive")
        self.num_steps = num_steps

    def step(self, log_p_x0: torch.Tensor, x_t: torch.Tensor, steps_left: int, mask_id: int,
             gen: torch.Generator | None = None) -> StepOutput:
        """Reveal the ceil(masked / steps_left) most confident masked positions of each row."""
        if self.num_steps is None:
            raise RuntimeError("call set_timesteps(num_steps) before step()")
        masked = x_t == mask_id  # (B, T)
        candidate = sample_categorical(log_p_x0, gen)  # (B, T)
        confidence = log_p_x0.gather(-1, candidate[..., None]).squeeze(-1)
        confidence = confidence.masked_fill(~masked, float("-inf"))
        n_masked = masked.sum(1)  # (B,)
        k = torch.ceil(n_masked.double() / steps_left).long()  # (B,)
        order = confidence.argsort(dim=1, descending=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(x_t.shape[1], device=x_t.device).expand_as(order))
        changed = masked & (rank < k[:, None])
        x0_pred = torch.where(masked, candidate, x_t)
        return StepOutput(torch.where(changed, candidate, x_t), x0_pred, changed)

    @torch.no_grad()
    def generate(self, model, process, *, length: int, steps: int, batch_size: int = 1,
                 prompt: torch.Tensor | None = None, gen: torch.Generator | None = None,
                 on_step: OnStep | None = None, trace: bool = False) -> Generation:
        if getattr(process, "mask_id", None) is None:
            raise ValueError(f"the confidence sampler needs a masked model; this one is {process.name!r} (use ancestral)")
        x = initial_sequence(model, process, prompt, batch_size, length, gen)  # (B, P + L)
        prompt_length = x.shape[1] - length
        self.set_timesteps(steps)
        nfe, states = 0, []
        start = time.perf_counter()
        for i in range(steps):
            masked = x == process.mask_id
            if not masked.any():
                break
            # time of the current masked fraction (for time-conditioned models)
            frac = masked[:, prompt_length:].float().mean(1)
            t_vec = process.schedule.time_of(1.0 - frac).clamp(process.eps, 1.0)
            logits = ban(model(x, t_vec), self.banned_ids)
            log_p = filter_logits(process.log_probs(logits), self.temperature, self.top_k, self.top_p)
            nfe += 1
            out = self.step(log_p, x, steps - i, process.mask_id, gen)
            x = out.x_prev
            report_step(i, out, states if trace else None, on_step)
        return Generation(x, prompt_length, nfe, time.perf_counter() - start, states)

