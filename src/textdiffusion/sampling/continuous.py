"""DDPM (ancestral) and DDIM (deterministic) sampling for the Gaussian embedding process, ending
with rounding to tokens.

From z_1 ~ N(0, I), on the grid t_0 = 1 > t_1 > ... > t_N = 0, step i calls the network at t_i,
forms the x0 estimate x_hat = softmax(logits) @ E and moves z to t_{i+1} (processes/gaussian.py
``reverse_step``). The last call's logits are the rounding: its tokens are drawn from
p_theta(x0 | z) with the temperature / top-k / top-p filters (temperature 0: the nearest, most
likely token), so N steps cost exactly N network calls.

Prompts: prompt positions are re-noised from their clean embeddings to the current noise level
before every call (the replacement method), so the network always sees one consistent noise
level, and the prompt tokens are returned verbatim. With self-conditioning, each call also reads
the previous call's x0 estimate (no extra network call).

Between steps the trace / per-step hook shows the most likely token at every position.
"""

from __future__ import annotations

import time

import torch

from .base import Generation, OnStep, StepOutput, check_length, prompt_batch, report_step
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

    def set_timesteps(self, num_steps: int) -> None:
        if num_steps <= 0:
            raise ValueError("steps must be positive")
        self.timesteps = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)

    def step(self, logits: torch.Tensor, z_t: torch.Tensor, t: float, s: float, process, embeddings: torch.Tensor,
             gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One move z_t -> z_s from the network's (banned) logits at t. Returns (z_s, x_hat)."""
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps(num_steps) before step()")
        x_hat = process.x0_estimate(logits, embeddings)
        return process.reverse_step(x_hat, z_t, t, s, gen, deterministic=self.deterministic), x_hat

    @torch.no_grad()
    def generate(self, model, process, *, length: int, steps: int, batch_size: int = 1,
                 prompt: torch.Tensor | None = None, gen: torch.Generator | None = None,
                 on_step: OnStep | None = None, trace: bool = False) -> Generation:
        device = next(model.parameters()).device
        prompt = prompt_batch(prompt, batch_size, device)  # (B, P)
        B, P = prompt.shape[0], prompt.shape[1]
        check_length(P, length, model.cfg.context)
        embeddings = model.embeddings()  # (V, d)
        e_prompt = embeddings[prompt]  # (B, P, d)
        z = process.prior((B, P + length), device, gen)
        self.set_timesteps(steps)
        tokens = torch.cat([prompt, torch.full((B, length), -1, dtype=torch.long, device=device)], dim=1)
        x_sc, states = None, []
        start = time.perf_counter()
        for i in range(steps):
            t, s = float(self.timesteps[i]), float(self.timesteps[i + 1])
            t_vec = torch.full((B,), t, device=device)
            if P:
                z[:, :P] = process.corrupt(e_prompt, t_vec, gen)
            logits = ban(process.denoise(model, z, t_vec, x_sc), self.banned_ids)
            if i < steps - 1:
                z, x_hat = self.step(logits, z, t, s, process, embeddings, gen)
                x_sc = x_hat if process.self_cond else None
                new = logits.argmax(-1)
            else:  # rounding: draw the tokens from p_theta(x0 | z) at the last noise level
                new = sample_categorical(filter_logits(logits, self.temperature, self.top_k, self.top_p), gen)
            new[:, :P] = prompt
            out = StepOutput(new, new, new != tokens)
            tokens = new
            report_step(i, out, states if trace else None, on_step)
        return Generation(tokens, P, steps, time.perf_counter() - start, states)


class DDIMSampler(ContinuousSampler):
    """Deterministic steps (DDIM, eta = 0): the same path from the same z_1, good with fewer steps."""

    name = "ddim"
    deterministic = True
