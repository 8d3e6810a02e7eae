"""DDPM (ancestral) and DDIM (deterministic) sampling for the Gaussian embedding process, ending
with rounding to tokens.

From z_1 ~ N(0, I), on the grid t_0 = 1 > t_1 > ... > t_N = 0, step i calls the network at t_i,
forms the x0 estimate x_hat = softmax(logits) @ E and moves z to t_{i+1} (processes/gaussian.py
``reverse_step``). The last call's logits are the rounding: its tokens are drawn from
p_theta(x0 | z) with the temperature / top-k / top-p filters (temperature 0: the nearest, most
likely token), so N steps cost exactly N network calls.

Prompts and templates: fixed positions (a prompt, or the text around infilling holes) are
re-noised from their clean embeddings to the current noise level before every call (the
replacement method), so the network always sees one consistent noise level, and they are
returned verbatim. An edit canvas (t_start < 1) starts its span at q(z_t | text) and runs the
grid t_start > ... > 0. With self-conditioning, each call also reads
the previous call's x0 estimate (no extra network call).

Between steps the trace / per-step hook shows the most likely token at every position.
"""

from __future__ import annotations

import time

import torch

from ..errors import UsageError
from ..processes.base import upcast
from .base import Canvas, Generation, OnStep, StepOutput, report_step, resolve_canvas
from .filters import ban, filter_logits, sample_categorical, validate_sampling_args


class ContinuousSampler:
    name = "ddpm"
    deterministic = False

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 banned_ids: tuple[int, ...] = ()):
        validate_sampling_args(temperature, top_k, top_p)
        self.banned_ids = list(banned_ids)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.timesteps: torch.Tensor | None = None

    def set_timesteps(self, num_steps: int, t_start: float = 1.0) -> None:
        if num_steps <= 0:
            raise UsageError("steps must be positive")
        self.timesteps = torch.linspace(t_start, 0.0, num_steps + 1, dtype=torch.float64)

    def step(self, logits: torch.Tensor, z_t: torch.Tensor, t: float, s: float, process, embeddings: torch.Tensor,
             gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One move z_t -> z_s from the network's (banned) logits at t. Returns (z_s, x_hat)."""
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps(num_steps) before step()")
        x_hat = process.x0_estimate(logits, embeddings)
        return process.reverse_step(x_hat, z_t, t, s, gen, deterministic=self.deterministic), x_hat

    @torch.no_grad()
    def generate(self, model, process, *, length: int | None = None, steps: int, batch_size: int = 1,
                 prompt: torch.Tensor | None = None, gen: torch.Generator | None = None,
                 on_step: OnStep | None = None, trace: bool = False, canvas: Canvas | None = None) -> Generation:
        canvas = resolve_canvas(model, prompt, batch_size, length, canvas)
        fixed, device = canvas.fixed, canvas.tokens.device
        B, T = fixed.shape
        embeddings = model.embeddings()  # (V, d)
        e_clean = embeddings[canvas.tokens.clamp_min(0)]  # (B, T, d): fixed text (and an edit's span)
        z = process.prior((B, T), device, gen)
        if canvas.t_start < 1.0:  # an edit: the span starts from its text, noised to t_start
            z = process.corrupt(e_clean, torch.full((B,), canvas.t_start, device=device), gen)
        self.set_timesteps(steps, canvas.t_start)
        keep = fixed[..., None]
        tokens = torch.where(fixed, canvas.tokens, torch.full_like(canvas.tokens, -1))
        x_sc, states = None, []
        start = time.perf_counter()
        for i in range(steps):
            t, s = float(self.timesteps[i]), float(self.timesteps[i + 1])
            t_vec = torch.full((B,), t, device=device)
            if fixed.any():
                z = torch.where(keep, process.corrupt(e_clean, t_vec, gen), z)
            logits = ban(process.denoise(model, z, t_vec, x_sc), self.banned_ids)
            if i < steps - 1:
                z, x_hat = self.step(logits, z, t, s, process, embeddings, gen)
                x_sc = x_hat if process.self_cond else None
                new = logits.argmax(-1)
            else:  # rounding: draw the tokens from p_theta(x0 | z) at the last noise level
                new = sample_categorical(filter_logits(logits, self.temperature, self.top_k, self.top_p), gen)
            new = torch.where(fixed, canvas.tokens, new)
            dist = torch.log_softmax(upcast(logits), -1) if on_step is not None else None  # for the trace only
            out = StepOutput(new, new, new != tokens, log_probs=dist, nfe=i + 1)
            tokens = new
            report_step(i, out, states if trace else None, on_step)
        return Generation(tokens, canvas.prompt_length, steps, time.perf_counter() - start, states, fixed)


class DDIMSampler(ContinuousSampler):
    """Deterministic steps (DDIM, eta = 0): the same path from the same z_1, good with fewer steps."""

    name = "ddim"
    deterministic = True
