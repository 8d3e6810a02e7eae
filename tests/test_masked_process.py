import math

import pytest
import torch

from textdiffusion.processes.block import BlockDiffusionProcess
from textdiffusion.processes.masked import MaskedProcess
from textdiffusion.processes.schedules import Cosine, LogLinear
from textdiffusion.processes.score_entropy import ScoreEntropyProcess
from textdiffusion.processes.uniform import UniformProcess


def test_masked_fraction_matches_one_minus_alpha():
    for schedule in ("loglinear", "cosine"):
        proc = MaskedProcess(vocab_size=20, mask_id=17, schedule=schedule)
        gen = torch.Generator().manual_seed(0)
        x0 = torch.randint(0, 16, (64, 512), generator=gen)
        for t in (0.05, 0.3, 0.5, 0.8, 0.99):
            xt = proc.corrupt(x0, torch.full((64,), t), gen)
            frac = (xt == 17).float().mean().item()
            expected = 1 - proc.schedule.alpha(torch.tensor(t)).item()
            n = x0.numel()
            sd = math.sqrt(expected * (1 - expected) / n)
            assert abs(frac - expected) < 5 * sd + 1e-9, (schedule, t, frac, expected)
            # unmasked positions are carried over unchanged
            keep = xt != 17
            assert torch.equal(xt[keep], x0[keep])


def test_schedule_endpoints_and_weights():
    for sched in (LogLinear(), Cosine()):
        assert sched.alpha(torch.tensor(0.0)).item() == 1.0
        assert sched.alpha(torch.tensor(1.0)).item() == 0.0
        # the ELBO weight is -alpha'(t) / (1 - alpha(t)); check against a finite difference
        for t in (0.1, 0.5, 0.9):
            h = 1e-4
            tt = torch.tensor([t - h, t + h], dtype=torch.float64)
            a = sched.alpha(tt)
            deriv = (a[1] - a[0]) / (2 * h)
            w = -deriv / (1 - sched.alpha(torch.tensor(t, dtype=torch.float64)))
            assert abs(sched.weight(torch.tensor(t, dtype=torch.float64)).item() - w.item()) < 1e-4
            assert abs(sched.time_of(sched.alpha(torch.tensor(t))).item() - t) < 1e-5


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_forward_rate_of_the_uniform_and_sedd_processes_is_minus_dlog_alpha(schedule):
    """beta(t) = -alpha'(t) / alpha(t), the forward jump rate the uniform and SEDD bounds and
    reverse steps use, against a central finite difference of log alpha, for the schedule each
    process is built with. Catches a wrong cosine rate, e.g. (pi/2) tan(pi t) or (pi/2) sin/cos
    of the wrong angle (no uniform or SEDD test used the cosine schedule before)."""
    for proc in (UniformProcess(8, 11, schedule=schedule), ScoreEntropyProcess("uniform", 11, 10, schedule=schedule),
                 ScoreEntropyProcess("absorb", 11, 10, schedule=schedule)):
        for t in (0.05, 0.3, 0.5, 0.8, 0.95):
            h = 1e-6
            tt = torch.tensor([t - h, t + h], dtype=torch.float64)
            log_a = proc.schedule.alpha(tt).log()
            rate = -(log_a[1] - log_a[0]) / (2 * h)
            got = proc.schedule.rate(torch.tensor(t, dtype=torch.float64))
            assert abs(got.item() - rate.item()) < 1e-6 * max(1.0, rate.item()), (proc.name, schedule, t, got, rate)


def test_antithetic_times_cover_the_interval():
    proc = MaskedProcess(20, 17, antithetic=True)
    t = proc.sample_t(8, torch.Generator().manual_seed(1))
    assert ((t >= proc.eps) & (t <= 1)).all()
    # exactly one sample in each of the 8 equal-width strata
    strata = ((t - proc.eps) / (1 - proc.eps) * 8).floor().long()
    assert sorted(strata.tolist()) == list(range(8))


def test_subs_gives_mask_zero_probability():
    proc = MaskedProcess(10, 9)
    logp = proc.log_probs(torch.randn(2, 5, 10))
    assert torch.isinf(logp[..., 9]).all()
    assert torch.allclose(logp.exp().sum(-1), torch.ones(2, 5))


class _Oracle(torch.nn.Module):
    """A 'model' that knows x0: predicts it with probability p at every position (the rest spread
    evenly over the other non-mask ids). A block model reads [x_t; x0]: the same prediction for both
    halves. ``shift`` is added to every logit (SEDD's absorbing scores carry log(V - 1))."""

    def __init__(self, x0, p, vocab, shift=0.0):
        super().__init__()
        self.x0, self.p, self.vocab, self.shift = x0, p, vocab, shift

    def forward(self, xt, t=None, **kw):
        target = self.x0.repeat(1, xt.shape[1] // self.x0.shape[1])
        logits = torch.full((*xt.shape, self.vocab), math.log((1 - self.p) / (self.vocab - 2)))
        return logits.scatter(-1, target[..., None], math.log(self.p)) + self.shift


def _masked_like(kind, vocab, schedule, eps):
    if kind == "masked":
        return MaskedProcess(vocab, 9, schedule=schedule, eps=eps)
    if kind == "block":
        return BlockDiffusionProcess(vocab, 9, block_size=4, schedule=schedule, eps=eps)
    return ScoreEntropyProcess("absorb", vocab, 9, schedule=schedule, eps=eps)


@pytest.mark.parametrize("kind", ["masked", "block", "sedd-absorb"])
@pytest.mark.parametrize("eps", [1e-3, 0.2])
def test_nelbo_of_a_fixed_predictor_is_its_cross_entropy(kind, eps):
    """With a predictor whose p(x0|x_t) does not depend on x_t, the integral of w(t)(1-alpha(t))
    over [eps, 1] is alpha(eps) and the reconstruction term at eps adds 1 - alpha(eps) (the masked
    fraction there), so the NELBO equals L * (-log p) for either schedule and any eps: for masked
    diffusion, for block diffusion (per block) and for SEDD's absorbing score entropy (whose
    integrand for normalised scores is w(t) (-log p)). At eps = 0.2 the reconstruction term is
    20 % of the bound (loglinear): this catches a bound without it (masked, block and SEDD each
    planted and seen failing), which at eps = 1e-3 is off by only 0.1 %."""
    vocab, p = 10, 0.7
    x0 = torch.randint(0, 8, (64, 33), generator=torch.Generator().manual_seed(0))
    model = _Oracle(x0[:, 1:], p, vocab, math.log(vocab - 1) if kind == "sedd-absorb" else 0.0)
    for schedule in ("loglinear", "cosine"):
        proc = _masked_like(kind, vocab, schedule, eps)
        est = proc.nelbo(model, x0, torch.Generator().manual_seed(0), num_samples=32)  # (S, B)
        per_token = est.mean().item() / 32
        assert abs(per_token - (-math.log(p))) < 0.03 * -math.log(p), (kind, schedule, per_token)
