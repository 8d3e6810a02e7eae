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

Between steps the trace / per-step hook shows the most likely token at every position. Each row
keeps its own z, time grid, self-conditioning input and generator (sampling/base.py).
"""

from __future__ import annotations

import torch

from ..processes.base import upcast
from .base import Canvas, Generators, Sampler, State, padded_call, time_grid
from .filters import ban, filter_logits, sample_categorical, validate_sampling_args


class ContinuousSampler(Sampler):
    name = "ddpm"
    family = "gaussian"  # ddpm and ddim rows batch together
    deterministic = False

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 banned_ids: tuple[int, ...] = ()):
        validate_sampling_args(temperature, top_k, top_p)
        self.banned_ids = list(banned_ids)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    @staticmethod
    def timesteps(num_steps: int, t_start: float = 1.0) -> torch.Tensor:
        """For a loop of your own over ``transition`` (diffusers' form): the grid t_0 = t_start >
        ... > t_N = 0. ``start``/``step`` keep each row's own grid; a sampler keeps no call's state."""
        return time_grid(num_steps, t_start)

    def transition(self, logits: torch.Tensor, z_t: torch.Tensor, t: float, s: float, process,
                   embeddings: torch.Tensor, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One move z_t -> z_s from the network's (banned) logits at t. Returns (z_s, x_hat)."""
        x_hat = process.x0_estimate(logits, embeddings)
        return process.reverse_step(x_hat, z_t, t, s, gen, deterministic=self.deterministic), x_hat

    def start(self, model, process, canvas: Canvas, steps: int, gen: Generators = None) -> State:
        state = self._rows(process, canvas, steps, gen, draw=False)
        grid = time_grid(steps, canvas.t_start)  # the rows', never the sampler object's
        embeddings = model.embeddings()  # (V, d)
        for r in state.rows:
            e_clean = embeddings[r.tokens.clamp_min(0)][None]  # (1, T, d): fixed text (and an edit's span)
            z = process.prior((1, r.length), r.tokens.device, r.gen)
            if r.t_start < 1.0:  # an edit: the span starts from its text, noised to t_start
                z = process.corrupt(e_clean, torch.full((1,), r.t_start, device=z.device), r.gen)
            r.data.update(grid=grid, z=z[0], e_clean=e_clean, x_sc=None, canvas=r.tokens)
            r.tokens = torch.where(r.fixed, r.tokens, torch.full_like(r.tokens, -1))
        return state

    def step(self, state: State, model):
        process, rows = state.process, state.active()
        device = rows[0].tokens.device
        t_vec = torch.tensor([float(r.data["grid"][r.step]) for r in rows], device=device)
        for i, r in enumerate(rows):  # fixed positions re-noised to the row's current level
            if r.fixed.any():
                noised = process.corrupt(r.data["e_clean"], t_vec[i : i + 1], r.gen)[0]
                r.data["z"] = torch.where(r.fixed[:, None], noised, r.data["z"])
        self_cond = process.self_cond and any(r.data["x_sc"] is not None for r in rows)
        inputs = [torch.cat([r.data["z"], r.data["x_sc"] if r.data["x_sc"] is not None else torch.zeros_like(r.data["z"])], -1)
                  if self_cond else r.data["z"] for r in rows]
        d = rows[0].data["z"].shape[-1]

        def call(x, mask):
            z, sc = (x[..., :d], x[..., d:]) if self_cond else (x, None)
            return process.denoise(model, z, t_vec, sc, attn_mask=mask)

        logits_rows = padded_call(call, inputs)
        state.calls += 1
        embeddings = model.embeddings()
        changed, dists, nearest = {}, {}, {}
        for r, lg in zip(rows, logits_rows):
            smp, grid = r.sampler, r.data["grid"]
            logits = ban(lg[None], smp.banned_ids)
            if r.step < r.steps - 1:
                z, x_hat = smp.transition(logits, r.data["z"][None], float(grid[r.step]), float(grid[r.step + 1]),
                                          process, embeddings, r.gen)
                r.data["z"], r.data["x_sc"] = z[0], x_hat[0] if process.self_cond else None
                new = logits.argmax(-1)
            else:  # rounding: draw the tokens from p_theta(x0 | z) at the last noise level
                new = sample_categorical(filter_logits(logits, smp.temperature, smp.top_k, smp.top_p), r.gen)
            new = torch.where(r.fixed, r.data["canvas"], new[0])
            changed[r] = new != r.tokens
            if state.report:  # for the trace only
                dists[r] = (0, torch.log_softmax(upcast(logits[0]), -1))
                # the noisy vectors read back as tokens: argmax <z, e_v> is the nearest unit-norm
                # embedding to z (and the most likely token under q(z_t | x0) alone)
                read = (upcast(r.data["z"]) @ upcast(embeddings).T).argmax(-1) if not r.step >= r.steps - 1 else new
                nearest[r] = torch.where(r.fixed, r.data["canvas"], read)
            r.tokens, r.nfe, r.step = new, r.nfe + 1, r.step + 1
            r.done = r.step >= r.steps
        return state.output(changed, dists, nearest=nearest)


class DDIMSampler(ContinuousSampler):
    """Deterministic steps (DDIM, eta = 0): the same path from the same z_1, good with fewer steps."""

    name = "ddim"
    deterministic = True
