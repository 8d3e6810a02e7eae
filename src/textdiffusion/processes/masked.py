"""Masked (absorbing-state) diffusion: MDLM's continuous-time ELBO with the SUBS parameterisation,
and its discrete-time (D3PM) form with T steps.

Notation (Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models"):

    x0      clean tokens (B, L)             alpha(t)  P(token still clean at t), alpha(0)=1, alpha(1)=0
    x_t     tokens with some set to [MASK]  w(t)      -alpha'(t) / (1 - alpha(t))

Forward:  q(x_t^l | x0^l) = alpha(t) * onehot(x0^l) + (1 - alpha(t)) * onehot(mask)      (eq. 2)
SUBS:     the mask token gets probability zero; unmasked tokens are copied through   (sec. 3.2.3)
NELBO:    int_0^1 w(t) E_q[ sum_{l: x_t^l = mask} -log p_theta(x0^l | x_t) ] dt          (eq. 10)

Training integrates over t in [eps, 1] (the integrand's variance blows up as t -> 0).
Evaluation adds the reconstruction term at t = eps, E_q[sum_{masked at eps} -log p(x0 | x_eps)],
so ``nelbo`` is a true upper bound on -log p(x0), and the prior term is zero because
alpha(1) = 0 makes x_1 all-mask with certainty.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .base import (
    LossOutput,
    discrete_times,
    keep_clean,
    row_rand,
    sample_categorical,
    scored,
    stratified_uniform,
    upcast,
)
from .schedules import get_schedule


class MaskedProcess:
    name = "masked"
    block_size: int | None = None
    draws_revealed_only = True  # reverse_step draws values only where tokens unmask

    @classmethod
    def from_config(cls, p, tokenizer) -> MaskedProcess:
        """The process a run's ``ProcessConfig`` ``p`` describes, over ``tokenizer``'s ids."""
        return cls(tokenizer.vocab_size, tokenizer.mask_id, schedule=p.schedule, antithetic=p.antithetic,
                   num_steps=p.num_steps)

    def __init__(self, vocab_size: int, mask_id: int, schedule: str = "loglinear",
                 antithetic: bool = True, eps: float = 1e-3, num_steps: int = 0):
        self.vocab_size = vocab_size
        self.mask_id = mask_id
        self.schedule = get_schedule(schedule)
        self.antithetic = antithetic
        self.eps = eps
        self.num_steps = num_steps  # T > 0: the discrete-time bound with T steps instead

    # forward process ---------------------------------------------------------------------
    supports_cache = True  # x_t only changes where a token unmasks: an unchanged x_t needs no new call
    exact_likelihood = False  # nelbo is a bound, estimated by Monte Carlo over t
    continuous = False
    keeps_decided = True  # an unmasked token is absorbed: it never changes again
    left_to_right = False  # (block diffusion too: inside a block, any order)

    def prior(self, shape: tuple[int, ...], device=None, gen: torch.Generator | None = None) -> torch.Tensor:
        """x_1: every position is [MASK] (``gen`` is unused: the prior is deterministic)."""
        return torch.full(shape, self.mask_id, dtype=torch.long, device=device)

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Sample q(x_t | x0): each token independently masked with probability 1 - alpha(t)."""
        alpha = self.schedule.alpha(t).view(-1, *([1] * (x0.dim() - 1)))  # (B, 1)
        u = row_rand(x0.shape, gen, x0.device)
        return torch.where(u < 1.0 - alpha, torch.full_like(x0, self.mask_id), x0)

    def sample_t(self, batch: int, gen: torch.Generator | None = None, device=None) -> torch.Tensor:
        """t ~ U[eps, 1]; antithetic: one uniform shifted by i/B, so the batch covers [eps, 1] evenly."""
        return self.eps + (1.0 - self.eps) * stratified_uniform(batch, self.antithetic, gen, device)

    def _weighted_times(self, batch: int, gen, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, weight) for one Monte Carlo draw of the bound's sum or integral over time.

        Continuous: t ~ U[eps, 1], weight (1 - eps) w(t) (the integral over [eps, 1]).
        Discrete T steps (D3PM): step i ~ U{1..T}, t = i/T, s = (i-1)/T, and the KL of step i for a
        masked token is P(unmask) (-log p) with P(unmask) = (alpha_s - alpha_t) / (1 - alpha_t),
        so the weight is T (alpha_s - alpha_t) / (1 - alpha_t); step 1 (s = 0) is the
        reconstruction term, so nothing is left out."""
        if not self.num_steps:
            t = self.sample_t(batch, gen, device)
            return t, (1.0 - self.eps) * self.schedule.weight(t)
        t, s = discrete_times(stratified_uniform(batch, self.antithetic, gen, device), self.num_steps)
        a_t, a_s = self.schedule.alpha(t), self.schedule.alpha(s)
        return t, self.num_steps * (a_s - a_t) / (1.0 - a_t)

    # parameterisation --------------------------------------------------------------------
    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """SUBS: log p_theta(x0 | x_t) with the mask token's probability forced to zero."""
        logits = upcast(logits).clone()  # never written into the caller's logits
        logits[..., self.mask_id] = float("-inf")
        return F.log_softmax(logits, dim=-1)

    def _masked_nll(self, model, xt: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, L) -log p_theta(x0^l | x_t) at masked positions, 0 elsewhere (carry-over)."""
        logits = model(xt, t)  # (B, L, V)
        nll = F.cross_entropy(self.log_probs(logits).transpose(1, 2), x0, reduction="none")
        return nll * (xt == self.mask_id)

    # objective -----------------------------------------------------------------------------
    def loss(self, model, batch: torch.Tensor, gen: torch.Generator | None = None,
             fixed: torch.Tensor | None = None) -> LossOutput:
        """Monte Carlo NELBO over t in [eps, 1], nats per token. ``batch`` is (B, L+1) windows;
        the last L tokens are scored (the same tokens the AR twin predicts). ``fixed`` (B, L+1):
        conditioning positions (a prompt), never masked and not scored."""
        x0 = batch[:, 1:]
        keep, loss_mask = scored(fixed)
        t, weight = self._weighted_times(x0.shape[0], gen, x0.device)
        xt = keep_clean(self.corrupt(x0, t, gen), x0, keep)
        nll = self._masked_nll(model, xt, x0, t)
        per_token = weight[:, None] * nll  # (B, L)
        return LossOutput.mean_over(per_token, loss_mask)

    @torch.no_grad()
    def nelbo(self, model, batch: torch.Tensor, gen: torch.Generator | None = None,
              num_samples: int = 1) -> torch.Tensor:
        """(num_samples, B) unbiased estimates of the full NELBO, in nats, of the last L tokens of
        each (B, L+1) window: the diffusion integral over [eps, 1] plus reconstruction at eps."""
        x0 = batch[:, 1:]
        out = []
        eps_t = torch.full((x0.shape[0],), self.eps, device=x0.device)
        for _ in range(num_samples):
            t, weight = self._weighted_times(x0.shape[0], gen, x0.device)
            xt = self.corrupt(x0, t, gen)
            diffusion = weight * self._masked_nll(model, xt, x0, t).sum(1)
            if self.num_steps:  # the discrete sum already holds the reconstruction step
                out.append(diffusion)
                continue
            x_eps = self.corrupt(x0, eps_t, gen)
            if (x_eps == self.mask_id).any():
                recon = self._masked_nll(model, x_eps, x0, eps_t).sum(1)
            else:
                recon = torch.zeros_like(diffusion)
            out.append(diffusion + recon)
        return torch.stack(out)

    # reverse process -------------------------------------------------------------------------
    def reverse_step(self, log_p_x0: torch.Tensor, x_t: torch.Tensor, t: float, s: float,
                     gen: torch.Generator | None = None, row_filter: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One draw of p(x_s | x_t): each masked token unmasks with probability
        (alpha_s - alpha_t) / (1 - alpha_t), to a value drawn from p_theta(x0 | x_t); unmasked
        tokens stay (MDLM eq. 7). Returns (x_s, x0_pred): x0_pred holds the drawn values where
        tokens unmask and the model's most likely token at the other masked positions.

        Only the tokens that unmask are drawn: a full-vocabulary draw at every position cost more
        than the network itself (128 positions x 4096 tokens, each step) for the same x_s.
        ``row_filter`` (top-k/top-p), when given, is applied to just those rows."""
        masked = x_t == self.mask_id
        u = torch.rand(x_t.shape, generator=gen, device=x_t.device)
        unmask = masked & (u < self.unmask_probability(t, s))
        x0_pred = self.draw_x0(log_p_x0, x_t, unmask, gen, row_filter)
        return torch.where(unmask, x0_pred, x_t), x0_pred

    def draw_x0(self, log_p_x0: torch.Tensor, x_t: torch.Tensor, unmask: torch.Tensor,
                gen: torch.Generator | None = None, row_filter: Callable | None = None) -> torch.Tensor:
        """(B, T) x0 guess: a draw from p_theta where ``unmask`` (its rows finished by
        ``row_filter`` first, when given), the most likely token at the other masked positions
        (top-k/top-p keep the argmax), x_t elsewhere (ancestral and ReMDM steps share it)."""
        x0 = torch.where(x_t == self.mask_id, log_p_x0.argmax(-1), x_t)
        if unmask.any():
            rows = log_p_x0[unmask]
            x0[unmask] = sample_categorical(row_filter(rows) if row_filter is not None else rows, gen)
        return x0

    def unmask_probability(self, t: float, s: float) -> float:
        """P(a token masked at t is unmasked at s < t) = (alpha_s - alpha_t) / (1 - alpha_t); when
        it unmasks, its value is drawn from p_theta(x0 | x_t)  (MDLM eq. 7)."""
        a_t = float(self.schedule.alpha(torch.tensor(t, dtype=torch.float64)))
        a_s = float(self.schedule.alpha(torch.tensor(s, dtype=torch.float64)))
        if a_t >= 1.0:
            return 1.0
        return min(max((a_s - a_t) / (1.0 - a_t), 0.0), 1.0)
