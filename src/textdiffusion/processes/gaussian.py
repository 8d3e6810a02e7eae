"""Gaussian diffusion on learned token embeddings (the Diffusion-LM / CDCD / Plaid family), trained
and evaluated with VDM's continuous-time ELBO, so ``eval`` reports a bound in bits/token.

Notation (Kingma et al. 2021, "Variational Diffusion Models"; Gulrajani & Hashimoto 2023, "Plaid"):

    e = E[x0]            unit-norm embedding of each token (E: (V, d), learned, models/continuous.py)
    lambda(t)            log-SNR, linear from lambda_max at t = 0 to lambda_min at t = 1
    alpha_t^2 = sigmoid(lambda(t)),  sigma_t^2 = sigmoid(-lambda(t))     (variance preserving)
    z_t = alpha_t e + sigma_t eps,   eps ~ N(0, I)
    x_hat(z_t, t) = softmax(logits) @ E       the x0 estimate: the network is a classifier whose
                                              expected embedding is the denoised point (CDCD);
    logits = network(z_t, t) + (alpha_t / sigma_t^2) z_t . E^T   (Plaid: the exact likelihood of z_t
                                              under each token is added, see ``denoise``)

The bound on -log P(x0) per sequence (VDM eq. 11 and 17; nats):

    prior      KL(q(z_1 | x0) || N(0, I)) = 1/2 sum_l (alpha_1^2 |e_l|^2 + d (sigma_1^2 - 1 - log sigma_1^2))
    diffusion  -1/2 E_{t ~ U[0, 1]} SNR'(t) sum_l |e_l - x_hat_l(z_t, t)|^2,   SNR = exp(lambda), so
               -SNR'(t) = (lambda_max - lambda_min) exp(lambda(t)) for the linear log-SNR schedule
    recon      E_{z_0 ~ q(z_0 | x0)} sum_l -log p_theta(x0_l | z_0)   the "rounding" term: the decoder is
               the network itself at t = 0 (its softmax over tokens), as in Plaid

Training estimates all three without bias from one network call per sequence: a fixed share of
the batch (``recon_fraction``) is put at t = 0 and scores the reconstruction term, the rest draw
t ~ U[0, 1] (antithetic) for the diffusion term, each share reweighted by its inverse size; the
prior is exact. With self-conditioning (Chen et al. 2022) the network also reads its own previous
x0 estimate: in training, on a coin flip per batch, from a first gradient-free pass; in
evaluation always (a deterministic function of z_t, so the bound stays valid, at two calls).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .base import LossOutput, batch_rows, plain, row_randn, scored, stratified_uniform, upcast


class GaussianProcess:
    name = "gaussian"
    mask_id = None
    block_size = None
    draws_revealed_only = False
    supports_cache = False  # the state is continuous: every step changes it
    exact_likelihood = False
    continuous = True  # x_t is noisy embeddings; the network reads vectors
    keeps_decided = False  # every position moves until the last step
    left_to_right = False

    @classmethod
    def from_config(cls, p, tokenizer) -> GaussianProcess:
        return cls(tokenizer.vocab_size, p.embed_dim, p.logsnr_min, p.logsnr_max, p.self_cond, antithetic=p.antithetic)

    def __init__(self, vocab_size: int, embed_dim: int = 16, logsnr_min: float = -6.0,
                 logsnr_max: float = 6.0, self_cond: bool = False, antithetic: bool = True,
                 recon_fraction: float = 0.125):
        if not logsnr_min < logsnr_max:
            raise UsageError(f"logsnr_min ({logsnr_min}) must be below logsnr_max ({logsnr_max})")
        self.vocab_size, self.embed_dim = vocab_size, embed_dim
        self.logsnr_min, self.logsnr_max = float(logsnr_min), float(logsnr_max)
        self.self_cond, self.antithetic, self.recon_fraction = self_cond, antithetic, recon_fraction

    # noise schedule --------------------------------------------------------------------------
    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        return self.logsnr_max + (self.logsnr_min - self.logsnr_max) * t

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lam = self.logsnr(t.double() if torch.is_tensor(t) else torch.tensor(t, dtype=torch.float64))
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()

    def input_scale(self, t: torch.Tensor) -> torch.Tensor:
        """1 / std of z_t per coordinate (a unit-norm e has variance 1/d per coordinate), so the
        network always reads unit-variance inputs (Plaid)."""
        alpha, sigma = self.alpha_sigma(t)
        return (alpha**2 / self.embed_dim + sigma**2).rsqrt()

    def prior_kl(self, e0: torch.Tensor) -> torch.Tensor:
        """(B, L) KL(q(z_1 | x0) || N(0, I)) per token, in nats, written without cancellation:
        sigma^2 - 1 - log sigma^2 = softplus(lambda_min) - alpha^2 at t = 1."""
        a2 = 1.0 / (1.0 + math.exp(-self.logsnr_min))  # alpha_1^2 = sigmoid(lambda_min)
        per_dim = math.log1p(math.exp(self.logsnr_min)) - a2
        return 0.5 * (a2 * upcast(e0).pow(2).sum(-1) + self.embed_dim * per_dim)

    # forward process ---------------------------------------------------------------------------
    def prior(self, shape: tuple[int, ...], device=None, gen: torch.Generator | None = None) -> torch.Tensor:
        """z_1 ~ N(0, I): (B, L) positions -> (B, L, d) vectors."""
        return torch.randn(*shape, self.embed_dim, generator=gen, device=device)

    def corrupt(self, e0: torch.Tensor, t: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Sample q(z_t | x0) = N(alpha_t e, sigma_t^2 I) for embeddings e0 (B, L, d) and t (B,)."""
        alpha, sigma = (v.to(upcast(e0).dtype).view(-1, 1, 1) for v in self.alpha_sigma(t))
        noise = row_randn(e0.shape, gen, e0.device)
        return alpha * e0 + sigma * noise

    # the denoiser ------------------------------------------------------------------------------
    def denoise(self, model, z: torch.Tensor, t: torch.Tensor, x_selfcond: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, V) float logits of p_theta(x0 | z_t) from (B, L, d) noisy embeddings.

        Categorical reparameterisation (Plaid): the logits are the network's output plus the exact
        log-likelihood log q(z_t | x0 = v) = (alpha / sigma^2) <z_t, e_v> + const (unit-norm e_v), so
        the network supplies what the context says about each token and the noisy vector itself is
        read exactly; at high SNR the right token wins without any learning."""
        scale = self.input_scale(t).to(upcast(z).dtype).view(-1, 1, 1)
        sc = None if x_selfcond is None else x_selfcond * math.sqrt(self.embed_dim)  # unit variance too
        alpha, sigma = self.alpha_sigma(t)
        evidence = (alpha / sigma**2).to(upcast(z).dtype).view(-1, 1, 1) * (upcast(z) @ model.embeddings().detach().T)  # (B, L, V)
        extra = {} if attn_mask is None else {"attn_mask": attn_mask}  # (B, L, L): rows of different lengths
        return upcast(model(z * scale, t, sc, **extra)) + evidence

    @staticmethod
    def x0_estimate(logits: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Score interpolation: E_{p_theta(x0 | z_t)}[e] = softmax(logits) @ E, (B, L, d)."""
        return logits.softmax(-1) @ embeddings

    @torch.no_grad()
    def _first_pass(self, model, z: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.x0_estimate(self.denoise(model, z, t), embeddings)

    # objective ---------------------------------------------------------------------------------
    def _split(self, batch: int, gen, device) -> tuple[int, float, float]:
        """(k, w_recon, w_diffusion): the first k rows score reconstruction at t = 0, the others the
        diffusion integral; the weights make both estimates unbiased for the whole batch."""
        if batch >= 2:
            k = min(max(round(batch * self.recon_fraction), 1), batch - 1)
            return k, batch / k, batch / (batch - k)
        p = self.recon_fraction  # one row: a coin decides which term it estimates
        k = int(torch.rand(1, generator=plain(gen), device=device).item() < p)
        return k, 1.0 / p, 1.0 / (1.0 - p)

    def _diffusion_term(self, e0: torch.Tensor, x_hat: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, L) -1/2 SNR'(t) |e - x_hat|^2: one draw of the time integral (t: (B,))."""
        weight = 0.5 * (self.logsnr_max - self.logsnr_min) * self.logsnr(t.double()).exp()
        return weight.to(upcast(x_hat).dtype)[:, None] * (upcast(e0) - x_hat).pow(2).sum(-1)

    def loss(self, model, batch: torch.Tensor, gen: torch.Generator | None = None,
             fixed: torch.Tensor | None = None) -> LossOutput:
        """Monte Carlo NELBO (all three terms), nats per token, of the last L tokens of each
        (B, L+1) window. ``fixed`` positions (a prompt) are not scored; they are noised like the
        rest, as the samplers do with fixed text (the replacement method)."""
        x0 = batch[:, 1:]
        _, loss_mask = scored(fixed)
        B, device = x0.shape[0], x0.device
        embeddings = model.embeddings()  # (V, d), differentiable: the ELBO trains the embeddings too
        e0 = F.embedding(x0, embeddings)  # (B, L, d); its CPU backward is deterministic, indexing's is not
        first, total = batch_rows(gen, B)  # the split and the times are the whole batch's (RowShard)
        k, w_recon, w_diffusion = self._split(total, gen, device)
        t = torch.zeros(total, device=device)
        t[k:] = stratified_uniform(total - k, self.antithetic, plain(gen), device)
        t = t[first : first + B]
        z = self.corrupt(e0, t, gen)
        x_sc = None
        if self.self_cond and torch.rand(1, generator=plain(gen), device=device).item() < 0.5:
            x_sc = self._first_pass(model, z, t, embeddings)
        logits = self.denoise(model, z, t, x_sc)
        diffusion = self._diffusion_term(e0, self.x0_estimate(logits, embeddings), t)
        recon = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")  # (B, L)
        is_recon = (torch.arange(first, first + B, device=device) < k)[:, None]
        per_token = torch.where(is_recon, w_recon * recon, w_diffusion * diffusion) + self.prior_kl(e0)
        return LossOutput.mean_over(per_token, loss_mask)

    def _logits(self, model, z, t, embeddings):
        x_sc = self._first_pass(model, z, t, embeddings) if self.self_cond else None
        return self.denoise(model, z, t, x_sc)

    @torch.no_grad()
    def nelbo(self, model, batch: torch.Tensor, gen: torch.Generator | None = None,
              num_samples: int = 1) -> torch.Tensor:
        """(num_samples, B) unbiased estimates of the NELBO, in nats, of the last L tokens of each
        (B, L+1) window: diffusion integral (one t per draw) + reconstruction + prior."""
        x0 = batch[:, 1:]
        B, device = x0.shape[0], x0.device
        embeddings = model.embeddings()
        e0 = F.embedding(x0, embeddings)
        prior = self.prior_kl(e0).sum(1)
        t0 = torch.zeros(B, device=device)
        out = []
        for _ in range(num_samples):
            t = stratified_uniform(B, self.antithetic, gen, device)
            z = self.corrupt(e0, t, gen)
            x_hat = self.x0_estimate(self._logits(model, z, t, embeddings), embeddings)
            diffusion = self._diffusion_term(e0, x_hat, t)
            logits0 = self._logits(model, self.corrupt(e0, t0, gen), t0, embeddings)
            recon = F.cross_entropy(logits0.transpose(1, 2), x0, reduction="none")
            out.append(diffusion.sum(1) + recon.sum(1) + prior)
        return torch.stack(out)

    # reverse process -------------------------------------------------------------------------
    def reverse_step(self, x_hat: torch.Tensor, z_t: torch.Tensor, t: float, s: float,
                     gen: torch.Generator | None = None, deterministic: bool = False) -> torch.Tensor:
        """One step z_t -> z_s (s < t) with x0 replaced by the estimate ``x_hat``.

        Ancestral (DDPM): the Gaussian posterior q(z_s | z_t, x0) = N(mu, (1 - r) sigma_s^2) with
        r = SNR(t) / SNR(s) and mu = r (alpha_s / alpha_t) z_t + alpha_s (1 - r) x0  (VDM eq. 32-33).
        Deterministic (DDIM, eta = 0): keep the implied noise, z_s = alpha_s x0 + sigma_s eps_hat."""
        (a_t, s_t), (a_s, s_s) = self.alpha_sigma(float(t)), self.alpha_sigma(float(s))
        a_t, s_t, a_s, s_s = float(a_t), float(s_t), float(a_s), float(s_s)
        if deterministic:
            eps_hat = (z_t - a_t * x_hat) / s_t
            return a_s * x_hat + s_s * eps_hat
        r = math.exp(float(self.logsnr(torch.tensor(t, dtype=torch.float64)) - self.logsnr(torch.tensor(s, dtype=torch.float64))))
        mean = (r * a_s / a_t) * z_t + a_s * (1.0 - r) * x_hat
        noise = torch.randn(z_t.shape, generator=gen, device=z_t.device)
        return mean + math.sqrt((1.0 - r) * s_s**2) * noise
