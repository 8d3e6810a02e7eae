"""Gaussian embedding diffusion against known answers: the forward marginals, the ELBO of the exact
(Bayes) denoiser on i.i.d. tokens (it must equal the entropy, up to the tiny prior mismatch), the
unbiasedness of the training estimator, and reverse steps that land on the data distribution."""

import math

import pytest
import torch

from textdiffusion.config import ModelConfig
from textdiffusion.processes.gaussian import GaussianProcess
from textdiffusion.sampling import ContinuousSampler, DDIMSampler

V, D = 6, 8
P = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
H = float(-(P * P.log()).sum())  # entropy of one i.i.d. token, nats


def _embeddings(seed=0):
    e = torch.randn(V, D, generator=torch.Generator().manual_seed(seed))
    return e / e.norm(dim=-1, keepdim=True)


class _BayesOracle(torch.nn.Module):
    """The exact p(x0 | z_t) for i.i.d. tokens from P with fixed embeddings: the best denoiser.
    The process adds the likelihood of z_t under each token to the network's logits, so the exact
    network answers the prior log P alone."""

    self_cond = False

    def __init__(self, context: int = 64):
        super().__init__()
        self.cfg = ModelConfig(n_layer=1, n_head=1, d_model=2, context=context, vocab_size=V)
        self.register_buffer("E", _embeddings())
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # so next(parameters()) gives the device

    def embeddings(self):
        return self.E

    def forward(self, inputs, t, x_selfcond=None):
        return P.log().expand(*inputs.shape[:2], V)


def test_logits_are_the_exact_posterior_for_the_oracle():
    """The process's logits for the oracle equal log P(v) + log N(z; alpha e_v, sigma^2) up to a
    per-position constant, computed here from the Gaussian density directly."""
    proc = GaussianProcess(V, D)
    oracle = _BayesOracle()
    t = torch.tensor([0.2, 0.5, 0.8])
    z = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(0))
    alpha, sigma = (v.float().view(-1, 1, 1, 1) for v in proc.alpha_sigma(t))
    log_lik = -(z[:, :, None, :] - alpha * _embeddings()).pow(2).sum(-1) / (2 * sigma[..., 0] ** 2)
    expected = (P.log() + log_lik).log_softmax(-1)
    assert torch.allclose(proc.denoise(oracle, z, t).log_softmax(-1), expected, atol=1e-4)


def _iid_batch(batch, length, seed):
    x = torch.multinomial(P, batch * (length + 1), replacement=True,
                          generator=torch.Generator().manual_seed(seed))
    return x.view(batch, length + 1)


def test_schedule_and_forward_marginals_match_the_closed_form():
    proc = GaussianProcess(V, D, logsnr_min=-6, logsnr_max=6)
    a0, s0 = proc.alpha_sigma(torch.tensor(0.0))
    a1, s1 = proc.alpha_sigma(torch.tensor(1.0))
    assert math.isclose(float(a0**2 / s0**2), math.exp(6), rel_tol=1e-9)  # SNR(0) = e^6
    assert math.isclose(float(a1**2 / s1**2), math.exp(-6), rel_tol=1e-9)
    gen = torch.Generator().manual_seed(0)
    e0 = _embeddings()[torch.zeros(4, 4096, dtype=torch.long)]  # every token is token 0
    for t in (0.1, 0.5, 0.9):
        z = proc.corrupt(e0, torch.full((4,), t), gen)
        alpha, sigma = (float(v) for v in proc.alpha_sigma(torch.tensor(t)))
        assert math.isclose(alpha**2 + sigma**2, 1.0, rel_tol=1e-9)  # variance preserving
        n = z.shape[0] * z.shape[1]
        mean, var = z.reshape(n, D).mean(0), z.reshape(n, D).var(0)
        assert ((mean - alpha * e0[0, 0]).abs() < 5 * sigma / math.sqrt(n)).all(), (t, mean)
        assert ((var / sigma**2 - 1).abs() < 5 * math.sqrt(2 / n)).all(), (t, var)
    assert proc.prior((2, 3)).shape == (2, 3, D)


def test_bayes_denoiser_bound_equals_the_entropy():
    """NELBO(exact denoiser) = H(x) + KL(q(z_1) || N(0, I)); the last term is below the prior KL of
    one token (~1e-3 nats), so the bound is the entropy: a wrong SNR weight or a missing
    reconstruction or prior term would miss it by far more than the Monte Carlo error."""
    proc = GaussianProcess(V, D)
    oracle = _BayesOracle()
    batch = _iid_batch(4096, 16, seed=1)
    est = proc.nelbo(oracle, batch, torch.Generator().manual_seed(2), num_samples=16)  # (S, B) nats
    per_window = est.double().mean(0) / 16
    mean, se = float(per_window.mean()), float(per_window.std() / math.sqrt(len(per_window)))
    prior = float(proc.prior_kl(_embeddings()[:1]).squeeze())
    assert 0 < prior < 2e-3
    assert abs(mean - H) < 3 * se + prior, (mean, se, H)
    assert se < 0.015  # the test has teeth: a 3 % error in any term would show


def test_training_estimator_is_unbiased():
    """The training loss (a share of rows scores reconstruction, the rest the integral) has the
    same expectation as the full bound, for batches of many rows and of one row."""
    proc = GaussianProcess(V, D)
    oracle = _BayesOracle()
    gen = torch.Generator().manual_seed(3)
    for rows, draws in ((16, 200), (1, 2000)):
        losses = torch.tensor([float(proc.loss(oracle, _iid_batch(rows, 16, seed=100 + i), gen).loss)
                               for i in range(draws)], dtype=torch.float64)
        mean, se = float(losses.mean()), float(losses.std() / math.sqrt(draws))
        assert abs(mean - H) < 4 * se + 2e-3, (rows, mean, se, H)


@pytest.mark.parametrize("sampler_cls", [ContinuousSampler, DDIMSampler])
def test_reverse_steps_with_the_exact_denoiser_reach_the_data_distribution(sampler_cls):
    proc = GaussianProcess(V, D)
    oracle = _BayesOracle()
    sampler = sampler_cls()
    out = sampler.generate(oracle, proc, length=64, steps=64, batch_size=64, gen=torch.Generator().manual_seed(0))
    assert out.nfe == 64
    freq = torch.bincount(out.tokens.flatten(), minlength=V).double() / out.tokens.numel()
    tv = 0.5 * float((freq - P.double()).abs().sum())
    assert tv < 0.03, (freq, P)
    # halfway, the chain's state has the moments of the forward marginal q(z_t) = sum_v P_v N(alpha e_v, sigma^2)
    gen = torch.Generator().manual_seed(1)
    E = oracle.embeddings()
    z = proc.prior((64, 64), gen=gen)
    grid = torch.linspace(1.0, 0.5, 33, dtype=torch.float64)
    for t, s in zip(grid[:-1].tolist(), grid[1:].tolist()):
        t_vec = torch.full((64,), t)
        logits = proc.denoise(oracle, z, t_vec)
        z = proc.reverse_step(proc.x0_estimate(logits, E), z, t, s, gen, deterministic=sampler_cls.deterministic)
    alpha, sigma = (float(v) for v in proc.alpha_sigma(torch.tensor(0.5)))
    flat = z.reshape(-1, D)
    mean, second = P @ E * alpha, P @ E.pow(2) * alpha**2 + sigma**2
    assert ((flat.mean(0) - mean).abs() < 5 * flat.std(0) / math.sqrt(len(flat))).all(), (flat.mean(0), mean)
    assert ((flat.pow(2).mean(0) / second - 1).abs() < 0.08).all(), (flat.pow(2).mean(0), second)


def test_reverse_step_is_the_gaussian_posterior():
    """With x_hat = the true x0, the DDPM step from z_t has the mean and variance of
    q(z_s | z_t, x0) computed from the joint Gaussian (z_s, z_t)."""
    proc = GaussianProcess(V, D)
    t, s = 0.6, 0.4
    (a_t, s_t), (a_s, s_s) = ((float(v) for v in proc.alpha_sigma(torch.tensor(x))) for x in (t, s))
    x0 = torch.full((1, 1, D), 0.3)
    z_t = torch.full((1, 1, D), -0.2)
    draws = torch.stack([proc.reverse_step(x0, z_t, t, s, torch.Generator().manual_seed(i)) for i in range(4000)])
    # joint Gaussian: Cov(z_s, z_t) = a_t / a_s * s_s^2, Var(z_t) = s_t^2
    c = a_t / a_s * s_s**2
    mean = a_s * 0.3 + c / s_t**2 * (-0.2 - a_t * 0.3)
    var = s_s**2 - c**2 / s_t**2
    assert abs(float(draws.mean()) - mean) < 5 * math.sqrt(var / draws.numel())
    assert abs(float(draws.var()) / var - 1) < 0.05


def test_self_conditioning_trains_evaluates_and_samples():
    """With self-conditioning the network reads its previous x0 estimate: the estimate changes the
    output, a training step runs through both passes, and the bound and the samplers work."""
    from markov import tokenizer

    from textdiffusion.config import Config, ProcessConfig
    from textdiffusion.runs import build_model

    cfg = Config(model=ModelConfig(n_layer=1, n_head=2, d_model=32, context=16),
                 process=ProcessConfig(name="gaussian", self_cond=True, embed_dim=8))
    cfg.model.vocab_size = tokenizer().vocab_size
    torch.manual_seed(0)
    model, proc = build_model(cfg, tokenizer())
    assert proc.self_cond and model.self_cond
    z, t = torch.randn(2, 16, 8), torch.full((2,), 0.5)
    assert not torch.allclose(proc.denoise(model, z, t), proc.denoise(model, z, t, torch.randn(2, 16, 8)))
    batch = torch.randint(0, 8, (4, 17))
    for seed in range(4):  # both branches of the per-batch coin
        out = proc.loss(model, batch, torch.Generator().manual_seed(seed))
        out.loss.backward()
        assert torch.isfinite(out.loss)
    assert model.embedding.grad is not None and model.net.embed.weight.grad.abs().sum() > 0
    assert torch.isfinite(proc.nelbo(model.eval(), batch, torch.Generator().manual_seed(0), num_samples=2)).all()
    for sampler_cls in (ContinuousSampler, DDIMSampler):
        out = sampler_cls().generate(model, proc, length=8, steps=4, batch_size=2, prompt=torch.tensor([1, 2]),
                                     gen=torch.Generator().manual_seed(0))
        assert out.tokens.shape == (2, 10) and (out.tokens[:, :2] == torch.tensor([1, 2])).all()
