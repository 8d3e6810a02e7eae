"""Score-entropy discrete diffusion (SEDD; Lou, Meng & Ermon 2024), absorbing and uniform.

The network outputs log concrete scores, log s_theta(x_t)_{l, y} ~ log p_t(x_t with token l set to
y) / p_t(x_t), instead of an x0 distribution. With forward rates R(y -> z) and
r_y = q_t(y | x0) / q_t(z | x0), the denoising score entropy bound (SEDD thm. 3.6) is

    NELBO = int_0^1 E_q sum_l sum_{y != z_l} R(y -> z_l) [ s_y - r_y log s_y + K(r_y) ] dt + end terms,
    K(r) = r (log r - 1),

which is the generalised KL between the true and the model's reverse rates, as for ``uniform``.

Parameterisation. Absorbing: only masked positions count, r_{x0} = alpha / (1 - alpha) and
R(y -> mask) = beta = -alpha'/alpha; the log score is the network output plus log r (SEDD's
"scale by sigma") minus the constant log(V - 1) (so an output near zero is normalised), and with
l = output - log(V - 1) the integrand is w(t) [sum_y e^{l_y} - l_{x0} - 1] with MDLM's weight
w(t): MDLM's loss plus a penalty for unnormalised outputs. Uniform: R(y -> z) = beta / N and
s_y = exp(l_y - l_z) (a score is a ratio, so s_z = 1).

End terms for a true bound: the prior KL at the top (zero for absorbing, exact for uniform) and
the reconstruction at eps with the decoder p(x0 = y | z) proportional to q_eps(z | y) s_y.
The samplers use the analytic step: absorbing is MDLM's reverse step with p(x0) = softmax(l);
uniform turns the scores into the x0 estimate they imply, then takes the exact posterior mixture.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .base import LossOutput, keep_clean, sample_categorical, scored, upcast
from .masked import MaskedProcess
from .uniform import UniformProcess


class ScoreEntropyProcess:
    @classmethod
    def from_config(cls, p, tokenizer) -> ScoreEntropyProcess:
        """``p.name`` is sedd-absorb or sedd-uniform."""
        return cls(p.name.split("-")[1], tokenizer.vocab_size, tokenizer.mask_id, schedule=p.schedule,
                   antithetic=p.antithetic)

    def __init__(self, kind: str, vocab_size: int, mask_id: int, schedule: str = "loglinear",
                 antithetic: bool = True, eps: float = 1e-3):
        if kind not in ("absorb", "uniform"):
            raise UsageError(f"SEDD transition must be absorb or uniform; got {kind!r}")
        self.kind = kind
        self.name = f"sedd-{kind}"
        self.num_steps = 0  # continuous time only
        # the forward process (corruption, prior, time sampling) is that of the matching process
        self.forward = (MaskedProcess(vocab_size, mask_id, schedule, antithetic, eps) if kind == "absorb"
                        else UniformProcess(vocab_size, vocab_size, schedule, antithetic, eps))
        self.schedule, self.eps, self.vocab_size = self.forward.schedule, eps, vocab_size
        self.mask_id = mask_id if kind == "absorb" else None
        self.supports_cache = kind == "absorb"
        self.block_size = None
        self.exact_likelihood = False
        self.continuous = False
        self.keeps_decided = kind == "absorb"
        self.left_to_right = False
        self.draws_revealed_only = False  # the analytic step may draw every position (SEDD's own draw)

    def prior(self, shape, device=None, gen=None):
        return self.forward.prior(shape, device, gen)

    def corrupt(self, x0, t, gen=None):
        return self.forward.corrupt(x0, t, gen)

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Normalised log scores: for absorbing, p(x0 | x_t) at a masked position (the mask
        excluded); for uniform, ratios between candidates are all that matter."""
        logits = upcast(logits).clone()  # never written into the caller's logits
        if self.kind == "absorb":
            logits[..., self.mask_id] = float("-inf")
        return F.log_softmax(logits, dim=-1)

    # the score entropy integrand ---------------------------------------------------------------
    def _score_entropy(self, logits: torch.Tensor, xt: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, L) sum_{y != z} R(y -> z) [s_y - r_y log s_y + K(r_y)] per token, nats per unit time."""
        logits = upcast(logits)
        if self.kind == "absorb":
            # a fixed shift by -log(V - 1): a network that starts near zero starts with normalised
            # scores, instead of a penalty of about V that swamps the first updates
            logits = logits - math.log(self.vocab_size - 1)
            logits[..., self.mask_id] = float("-inf")
            masked = (xt == self.mask_id).float()
            w = self.schedule.weight(t)[:, None]  # beta * r = -alpha'/(1 - alpha)
            l_x0 = logits.gather(-1, x0[..., None]).squeeze(-1)
            return masked * w * (torch.logsumexp(logits, -1).exp() - l_x0 - 1.0)
        N = self.vocab_size
        alpha = self.schedule.alpha(t)[:, None]
        beta = self.schedule.rate(t)[:, None]
        rho = (1.0 - alpha + N * alpha) / (1.0 - alpha)  # x_bar's high / low value
        log_s = logits - logits.gather(-1, xt[..., None])  # (B, L, N), log s_z = 0
        sum_s = log_s.exp().sum(-1) - 1.0  # over y != z
        sum_log_s = log_s.sum(-1)  # the z entry is 0
        log_s_x0 = log_s.gather(-1, x0[..., None]).squeeze(-1)
        hit = (xt == x0).float()
        # r_y: at z = x0 every y != z has 1/rho; otherwise r_{x0} = rho and the rest 1
        sum_r_log_s = hit * sum_log_s / rho + (1.0 - hit) * (sum_log_s + (rho - 1.0) * log_s_x0)
        k_rho, k_inv = rho * (rho.log() - 1.0), (1.0 / rho) * (-rho.log() - 1.0)
        sum_k = hit * (N - 1) * k_inv + (1.0 - hit) * (k_rho - (N - 2))  # K(1) = -1
        return (beta / N) * (sum_s - sum_r_log_s + sum_k)

    def _decoder_nll(self, logits: torch.Tensor, x_eps: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, L) -log p(x0 | x_eps) with p(x0 = y | z) proportional to q_eps(z | y) s_y (a valid
        distribution, so the bound stays valid; near the exact posterior for small eps)."""
        logits = upcast(logits)
        alpha = self.schedule.alpha(t).view(-1, 1, 1)
        if self.kind == "absorb":
            nll = -self.log_probs(logits).gather(-1, x0[..., None]).squeeze(-1)
            return nll * (x_eps == self.mask_id)  # unmasked tokens are exact
        N = self.vocab_size
        q_z = alpha * F.one_hot(x_eps, N) + (1.0 - alpha) / N  # q(z | y) as a function of y
        log_dec = F.log_softmax(q_z.log() + logits, dim=-1)
        return -log_dec.gather(-1, x0[..., None]).squeeze(-1)

    # objective -----------------------------------------------------------------------------
    def _integral_draw(self, model, x0, gen, keep=None) -> torch.Tensor:
        t = self.forward.sample_t(x0.shape[0], gen, x0.device)
        xt = keep_clean(self.corrupt(x0, t, gen), x0, keep)
        span = (1.0 - self.eps) if self.kind == "absorb" else (1.0 - 2 * self.eps)
        return span * self._score_entropy(model(xt, t), xt, x0, t)

    def loss(self, model, batch: torch.Tensor, gen: torch.Generator | None = None,
             fixed: torch.Tensor | None = None) -> LossOutput:
        """Monte Carlo score-entropy bound over t, nats per token, on the last L tokens of (B, L+1);
        ``fixed`` positions are kept clean and not scored."""
        keep, loss_mask = scored(fixed)
        per_token = self._integral_draw(model, batch[:, 1:], gen, keep)
        return LossOutput.mean_over(per_token, loss_mask)

    @torch.no_grad()
    def nelbo(self, model, batch: torch.Tensor, gen: torch.Generator | None = None,
              num_samples: int = 1) -> torch.Tensor:
        """(num_samples, B) NELBO estimates in nats: integral + reconstruction at eps + prior KL."""
        x0 = batch[:, 1:]
        B, L = x0.shape
        eps_t = torch.full((B,), self.eps, device=x0.device)
        prior = 0.0 if self.kind == "absorb" else self.forward.prior_kl(L)
        out = []
        for _ in range(num_samples):
            integral = self._integral_draw(model, x0, gen).sum(1)
            x_eps = self.corrupt(x0, eps_t, gen)
            recon = self._decoder_nll(model(x_eps, eps_t), x_eps, x0, eps_t).sum(1)
            out.append(integral + recon + prior)
        return torch.stack(out)

    # reverse process (analytic) ------------------------------------------------------------------
    def _x0_probs(self, log_scores: torch.Tensor, x_t: torch.Tensor, t: float) -> torch.Tensor:
        """Uniform: normalised scores are the model's p_t(token l = y | the rest); the x0
        distribution they imply is p(x0 = y | z) ~ q(z | y) p0(y) with p0 = (p_t - (1 - alpha)/N) /
        alpha, its negative parts clipped (exact for exact scores)."""
        N = self.vocab_size
        # at t = 1 the scores carry no information about x0 (p0 = 0/0): read them just below
        a = float(self.schedule.alpha(torch.tensor(min(t, 1.0 - self.eps), dtype=torch.float64)))
        p_t = log_scores.double().exp()  # rows of log_softmax: they sum to one
        q_z = a * F.one_hot(x_t, N).double() + (1.0 - a) / N  # q(z | y)
        x0_probs = (q_z * (p_t - (1.0 - a) / N)).clamp_min(0.0)
        x0_probs = x0_probs + 1e-30 * (x0_probs.sum(-1, keepdim=True) == 0)  # never all zero
        return x0_probs / x0_probs.sum(-1, keepdim=True)

    def reverse_step(self, log_scores: torch.Tensor, x_t: torch.Tensor, t: float, s: float,
                     gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Absorbing: MDLM's reverse step (p(x0 | masked) is proportional to the score); uniform:
        the exact posterior mixture over the x0 estimate the scores imply. Returns (x_s, x0_pred)."""
        if self.kind == "absorb":
            return self.forward.reverse_step(log_scores, x_t, t, s, gen)
        return self.forward.reverse_step(self._x0_probs(log_scores, x_t, t).log(), x_t, t, s, gen)

    def reverse_probs(self, log_scores: torch.Tensor, x_t: torch.Tensor, t: float, s: float) -> torch.Tensor:
        """(B, L, N) float64 p(x_s | x_t) of the uniform analytic step (absorbing steps draw only
        the tokens that unmask, so they have no such table)."""
        if self.kind == "absorb":
            raise UsageError("the absorbing SEDD step draws only unmasking tokens; it has no full table")
        return self.forward.reverse_probs(self._x0_probs(log_scores, x_t, t).log(), x_t, t, s)

    def euler_probs(self, log_scores: torch.Tensor, x_t: torch.Tensor, t: float, s: float) -> torch.Tensor:
        """(B, L, V) float64 first-order (Euler / tau-leaping) transition probabilities: token l
        jumps z -> y with probability (t - s) R_theta(z -> y), where R_theta(z -> y) = R(y -> z) s_y;
        the jump probabilities are scaled down if they exceed one."""
        dt = t - s
        # uniform: beta(1) is infinite, so read the rate just below t = 1 (absorbing: w(1) is finite)
        t_vec = torch.tensor([t if self.kind == "absorb" else min(t, 1.0 - self.eps)], dtype=torch.float64)
        z = F.one_hot(x_t, log_scores.shape[-1]).double()
        if self.kind == "absorb":  # only masked tokens move, each to y at rate w(t) p(y)
            rate = float(self.schedule.weight(t_vec)) * log_scores.double().exp()
            rate = rate * (x_t == self.mask_id)[..., None]
        else:  # (beta / N) s_y with s_y = p_t(y) / p_t(z) from the normalised scores
            p_t = log_scores.double().exp()
            ratios = p_t / p_t.gather(-1, x_t[..., None]).clamp_min(1e-30)
            rate = float(self.schedule.rate(t_vec)) / self.vocab_size * ratios * (1.0 - z)
        jump = dt * rate
        jump = jump / jump.sum(-1, keepdim=True).clamp_min(1.0)  # at most probability one of leaving
        return (jump + z * (1.0 - jump.sum(-1, keepdim=True))).clamp_min(0.0)

    def euler_step(self, log_scores: torch.Tensor, x_t: torch.Tensor, t: float, s: float,
                   gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One draw of ``euler_probs``; the last step (s = 0) is the analytic one, so no mask is
        left. Returns (x_s, x0_pred)."""
        if s <= 0.0:
            return self.reverse_step(log_scores, x_t, t, s, gen)
        return sample_categorical(self.euler_probs(log_scores, x_t, t, s).log(), gen), log_scores.argmax(-1)
