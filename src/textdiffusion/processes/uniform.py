"""Uniform (random-token replacement) diffusion: the continuous-time ELBO of UDLM / Duo.

Notation (Schiff et al. 2024, "Simple Guidance Mechanisms for Discrete Diffusion Models";
Sahoo et al. 2025, "The Diffusion Duality"):

    N        number of states tokens move between (ordinary tokens + end-of-text)
    alpha(t) P(token not yet resampled), alpha(0) = 1, alpha(1) = 0; beta(t) = -alpha'/alpha
    x_bar    N alpha e_{x0} + (1 - alpha) 1       (N times q(x_t | x0), summing to N)

Forward:  q(x_t | x0) = alpha e_{x0} + (1 - alpha) / N: a token is replaced by a uniformly random
          one with probability 1 - alpha (it may draw itself).
Reverse:  rates R_q(z -> y | x0) = (beta / N) x_bar_y / x_bar_z with x0 known. The model's rates
          average these over its x0 estimate: R_theta(z -> y) = E_{x0 ~ x_theta}[R_q(z -> y | x0)].
          This "mixture of posteriors" parameterisation gives the exact reverse rates when
          x_theta is the true p(x0 | x_t), so the optimum is the Bayes denoiser and the bound is
          tight there; the ancestral sampler uses the same mixture. (UDLM plugs the mean x_theta
          into x_bar instead; then the Bayes posterior is not the optimum: on i.i.d. tokens with
          entropy 1.53 nats it gives a 2.40-nat bound, this form 1.52 + the end terms, and the
          plug-in form cannot express every rate vector, as x_theta >= 0 limits it.)
NELBO:    int_0^1 E_q sum_l KL(R_q || R_theta)(z_l) dt, the generalised KL between the rate
          vectors, sum_{y != z} (R_theta - R_q + R_q log(R_q / R_theta)), >= 0 and zero when
          x_theta = e_{x0}. Training integrates over [eps, 1 - eps];
          ``nelbo`` adds the reconstruction term at eps and the prior KL at 1 - eps, so it is a
          true upper bound on -log p(x0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import (
    LossOutput,
    discrete_times,
    keep_clean,
    row_rand,
    row_randint,
    sample_categorical,
    scored,
    stratified_uniform,
    upcast,
)
from .schedules import get_schedule


class UniformProcess:
    name = "uniform"
    mask_id = None  # tokens are replaced, never masked
    block_size = None
    draws_revealed_only = False
    supports_cache = False  # tokens move at every step: there is nothing to reuse
    exact_likelihood = False
    continuous = False
    keeps_decided = False  # every token may be replaced until the last step
    left_to_right = False

    @classmethod
    def from_config(cls, p, tokenizer) -> UniformProcess:
        """Every id is a state, so any text (unknowns included) has a bound."""
        return cls(tokenizer.vocab_size, tokenizer.vocab_size, schedule=p.schedule, antithetic=p.antithetic,
                   num_steps=p.num_steps)

    def __init__(self, num_states: int, vocab_size: int, schedule: str = "loglinear",
                 antithetic: bool = True, eps: float = 1e-3, num_steps: int = 0):
        self.num_steps = num_steps  # T > 0: the discrete-time (D3PM) bound with T steps instead
        self.N = num_states  # ids 0..N-1 are states (build_model uses every id, so any text has a bound)
        self.vocab_size = vocab_size
        self.schedule = get_schedule(schedule)
        self.antithetic = antithetic
        self.eps = eps

    # forward process ---------------------------------------------------------------------
    def prior(self, shape: tuple[int, ...], device=None, gen: torch.Generator | None = None) -> torch.Tensor:
        """x_1: independent uniform tokens."""
        return torch.randint(0, self.N, shape, generator=gen, device=device)

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Sample q(x_t | x0): with probability 1 - alpha(t) a token is redrawn uniformly."""
        alpha = self.schedule.alpha(t).view(-1, *([1] * (x0.dim() - 1)))
        u = row_rand(x0.shape, gen, x0.device)
        noise = row_randint(self.N, x0.shape, gen, x0.device)
        return torch.where(u < 1.0 - alpha, noise, x0)

    def sample_t(self, batch: int, gen: torch.Generator | None = None, device=None) -> torch.Tensor:
        """t ~ U[eps, 1 - eps], antithetic (stratified) by default."""
        return self.eps + (1.0 - 2 * self.eps) * stratified_uniform(batch, self.antithetic, gen, device)

    # parameterisation --------------------------------------------------------------------
    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """log x_theta over the N states; the special ids beyond them get probability zero."""
        logits = upcast(logits).clone()  # never written into the caller's logits
        logits[..., self.N :] = float("-inf")
        return F.log_softmax(logits, dim=-1)

    def _kl_rates(self, log_x_theta: torch.Tensor, xt: torch.Tensor, x0: torch.Tensor,
                  t: torch.Tensor) -> torch.Tensor:
        """(B, L) the integrand above, per token, in nats per unit time, in O(N) per token.

        With rho = high / low (x_bar's two values), the rate ratios (N / beta) R(z -> y) are
            data:  d_y = 1 + [y = x0] (rho - 1) + [z = x0] (1/rho - 1)
            model: c_y = 1 + x_theta(y) (rho - 1) + x_theta(z) (1/rho - 1)   (c = E_{x_theta}[d])
        and the integrand is (beta / N) sum_{y != z} (c_y - d_y + d_y log(d_y / c_y)).
        """
        N = self.N
        alpha = self.schedule.alpha(t)[:, None]  # (B, 1)
        beta = self.schedule.rate(t)[:, None]
        rho = (1.0 - alpha + N * alpha) / (1.0 - alpha)  # (B, 1), > 1
        x_theta = log_x_theta[..., :N].exp()  # (B, L, N)
        xz = x_theta.gather(-1, xt[..., None]).squeeze(-1)  # x_theta(z): (B, L)
        # c_y written as a sum of non-negative terms (no cancellation: c_y >= 1/rho > 0 in float32
        # even when rho ~ N / eps is large)
        inv = (1.0 / rho)[..., None]  # (B, 1, 1)
        c = inv + (1.0 - inv) * (1.0 - xz)[..., None] + (rho - 1.0)[..., None] * x_theta  # (B, L, N)
        log_c = c.log()
        log_c_z = log_c.gather(-1, xt[..., None]).squeeze(-1)
        log_c_x0 = log_c.gather(-1, x0[..., None]).squeeze(-1)
        sum_log_c = log_c.sum(-1) - log_c_z  # over y != z
        hit = (xt == x0).float()
        sum_c = (N - 1) * (1.0 + xz * (1.0 / rho - 1.0)) + (1.0 - xz) * (rho - 1.0)
        sum_d = (N - 1) * (1.0 + hit * (1.0 / rho - 1.0)) + (1.0 - hit) * (rho - 1.0)
        # sum_{y != z} d_y log(d_y / c_y): at z = x0 every d_y = 1/rho; otherwise d_x0 = rho, the rest 1
        log_rho = rho.log()
        at_x0 = (1.0 / rho) * (-(N - 1) * log_rho - sum_log_c)
        elsewhere = rho * (log_rho - log_c_x0) - (sum_log_c - log_c_x0)
        sum_dlog = torch.where(hit.bool(), at_x0, elsewhere)
        return (beta / N) * (sum_c - sum_d + sum_dlog)

    def _kl_step(self, log_x_theta: torch.Tensor, xt: torch.Tensor, x0: torch.Tensor,
                 t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """(B, L) KL(q(x_s | x_t, x0) || p_theta(x_s | x_t)) per token: one term of the
        discrete-time bound. At s = 0, q is e_{x0} and this is -log x_theta(x0)."""
        q = self._posterior(F.one_hot(x0, self.N).to(log_x_theta.dtype), xt, t, s)
        p = self._reverse_probs(log_x_theta, xt, t, s)
        return (torch.xlogy(q, q) - q * p.clamp_min(1e-30).log()).sum(-1)

    def _posterior(self, x0_probs: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """(B, L, N) sum_x0 x0_probs(x0) q(x_s | x_t, x0): the true posterior for one-hot x0,
        the model's reverse step for x0_probs = x_theta. With w = x0_probs / q(x_t | x0) it is
        q(x_t | x_s = y) (alpha_s w_y + (1 - alpha_s) / N sum w)."""
        N = self.N
        a_t = self.schedule.alpha(t).view(-1, 1, 1).to(x0_probs.dtype)
        a_s = self.schedule.alpha(s).view(-1, 1, 1).to(x0_probs.dtype)
        a_ts = torch.where(a_s > 0, a_t / a_s.clamp_min(1e-30), torch.zeros_like(a_t))  # alpha_{t|s}
        z = F.one_hot(xt.clamp_max(N - 1), N).to(x0_probs.dtype)
        w = x0_probs / (a_t * z + (1.0 - a_t) / N)
        probs = (a_ts * z + (1.0 - a_ts) / N) * (a_s * w + (1.0 - a_s) / N * w.sum(-1, keepdim=True))
        return probs / probs.sum(-1, keepdim=True)

    def _reverse_probs(self, log_x_theta, xt, t, s) -> torch.Tensor:
        return self._posterior(log_x_theta[..., : self.N].exp(), xt, t, s)

    def _draw(self, model, x0: torch.Tensor, gen, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) one Monte Carlo draw of the per-token diffusion term (integral or sum over t)."""
        B = x0.shape[0]
        if self.num_steps:  # discrete time: T KL(step i), i ~ U{1..T}; step 1 is reconstruction
            t, s = discrete_times(stratified_uniform(B, self.antithetic, gen, x0.device), self.num_steps)
            xt = keep_clean(self.corrupt(x0, t, gen), x0, keep)
            return self.num_steps * self._kl_step(self.log_probs(model(xt, t)), xt, x0, t, s)
        t = self.sample_t(B, gen, x0.device)
        xt = keep_clean(self.corrupt(x0, t, gen), x0, keep)
        return (1.0 - 2 * self.eps) * self._kl_rates(self.log_probs(model(xt, t)), xt, x0, t)

    # objective -----------------------------------------------------------------------------
    def loss(self, model, batch: torch.Tensor, gen: torch.Generator | None = None,
             fixed: torch.Tensor | None = None) -> LossOutput:
        """Monte Carlo NELBO (over t in [eps, 1 - eps], or over the T steps), nats per token, on
        the last L tokens of (B, L+1) windows; ``fixed`` positions are kept clean and not scored."""
        x0 = batch[:, 1:]
        keep, loss_mask = scored(fixed)
        per_token = self._draw(model, x0, gen, keep)
        return LossOutput.mean_over(per_token, loss_mask)

    def prior_kl(self, length: int) -> float:
        """KL(q(x_{1-eps} | x0) || uniform) for ``length`` tokens, in nats (same for every x0)."""
        a = float(self.schedule.alpha(torch.tensor(1.0 - self.eps, dtype=torch.float64)))
        N = self.N
        p_hit = a + (1 - a) / N
        kl = p_hit * math.log(N * p_hit) + ((1 - a) * (N - 1) / N) * math.log(1 - a) if a < 1 else math.log(N)
        return length * kl

    @torch.no_grad()
    def nelbo(self, model, batch: torch.Tensor, gen: torch.Generator | None = None,
              num_samples: int = 1) -> torch.Tensor:
        """(num_samples, B) unbiased estimates of the full NELBO in nats of the last L tokens of
        each window: diffusion integral + reconstruction at eps + prior KL at 1 - eps."""
        x0 = batch[:, 1:]
        B, L = x0.shape
        eps_t = torch.full((B,), self.eps, device=x0.device)
        out = []
        for _ in range(num_samples):
            diffusion = self._draw(model, x0, gen).sum(1)
            if self.num_steps:  # the discrete sum holds reconstruction; alpha(1) = 0: no prior term
                out.append(diffusion)
                continue
            x_eps = self.corrupt(x0, eps_t, gen)
            recon = -self.log_probs(model(x_eps, eps_t)).gather(-1, x0[..., None]).squeeze(-1).sum(1)
            out.append(diffusion + recon + self.prior_kl(L))
        return torch.stack(out)

    # reverse process -------------------------------------------------------------------------
    def reverse_probs(self, log_x_theta: torch.Tensor, x_t: torch.Tensor, t: float, s: float) -> torch.Tensor:
        """(B, L, N) float64 p(x_s | x_t) = sum_x0 x_theta(x0) q(x_s | x_t, x0), exact when x_theta is
        the true p(x0 | x_t)."""
        B = x_t.shape[0]
        t_vec = torch.full((B,), t, dtype=torch.float64, device=x_t.device)
        s_vec = torch.full((B,), s, dtype=torch.float64, device=x_t.device)
        return self._posterior(log_x_theta[..., : self.N].exp().double(), x_t, t_vec, s_vec)

    def reverse_step(self, log_x_theta: torch.Tensor, x_t: torch.Tensor, t: float, s: float,
                     gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One draw of ``reverse_probs``. Returns (x_s, x0_pred)."""
        return sample_categorical(self.reverse_probs(log_x_theta, x_t, t, s).log(), gen), log_x_theta.argmax(-1)

    def euler_probs(self, log_x_theta: torch.Tensor, x_t: torch.Tensor, t: float, s: float) -> torch.Tensor:
        """(B, L, N) float64 first-order (Euler / tau-leaping) transition probabilities with the
        model's reverse rates: token l jumps z -> y with probability (t - s) R_theta(z -> y) =
        (t - s) (beta / N) c_y (the c_y of ``_kl_rates``), scaled down if the probabilities of
        leaving exceed one. beta(1) is infinite, so the rates are read at min(t, 1 - eps)."""
        N = self.N
        t_c = torch.tensor(min(t, 1.0 - self.eps), dtype=torch.float64)
        alpha, beta = float(self.schedule.alpha(t_c)), float(self.schedule.rate(t_c))
        rho = (1.0 - alpha + N * alpha) / (1.0 - alpha)
        x_theta = log_x_theta[..., :N].double().exp()
        z = F.one_hot(x_t.clamp_max(N - 1), N).double()
        xz = (x_theta * z).sum(-1, keepdim=True)
        c = 1.0 / rho + (1.0 - 1.0 / rho) * (1.0 - xz) + (rho - 1.0) * x_theta  # (B, L, N)
        jump = (t - s) * (beta / N) * c * (1.0 - z)
        jump = jump / jump.sum(-1, keepdim=True).clamp_min(1.0)  # at most probability one of leaving
        return (jump + z * (1.0 - jump.sum(-1, keepdim=True))).clamp_min(0.0)

    def euler_step(self, log_x_theta: torch.Tensor, x_t: torch.Tensor, t: float, s: float,
                   gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One draw of ``euler_probs``; the last step (s = 0) is the exact one. Returns (x_s, x0_pred)."""
        if s <= 0.0:
            return self.reverse_step(log_x_theta, x_t, t, s, gen)
        return sample_categorical(self.euler_probs(log_x_theta, x_t, t, s).log(), gen), log_x_theta.argmax(-1)
