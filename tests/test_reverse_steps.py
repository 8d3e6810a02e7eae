"""Reverse steps against known answers: what one step t -> s must do, per process.

The marginal of x_s alone cannot tell a step conditioned on x_t from one conditioned on anything
else (on i.i.d. data both give q_s); the joint (x_t, x_s) counts can. The first-order (Euler /
tau-leaping) steps must approach the analytic ones as dt -> 0, and ReMDM's remasking must keep
the masked fraction of the forward process at every step."""

import math

import pytest
import torch
import torch.nn.functional as F

from textdiffusion.processes import MaskedProcess, UniformProcess
from textdiffusion.processes.score_entropy import ScoreEntropyProcess
from textdiffusion.sampling.remasking import ReMDMSampler

N = 6
P = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04], dtype=torch.float64)  # i.i.d. token law
MASK = N + 1
V = N + 4  # masked models: the mask id among the vocabulary


def _alpha(proc, t: float) -> float:
    return float(proc.schedule.alpha(torch.tensor(t, dtype=torch.float64)))


def _counts_within(counts: torch.Tensor, expected: torch.Tensor, n: int, what) -> None:
    """Every cell of a frequency table within 5 standard deviations of its expected probability."""
    freq = counts.double() / n
    sd = (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() <= 5 * sd + 1e-9).all(), (what, freq, expected)


@pytest.mark.parametrize("kind", ["masked", "sedd-absorb"])
@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_masked_reverse_step_unmasks_the_right_fraction_with_the_models_values(kind, schedule):
    """Known answer (MDLM eq. 7): from t to s a masked token stays masked with probability
    (1 - alpha_s) / (1 - alpha_t); a token that unmasks takes a value drawn from p_theta(x0 | x_t)
    (here a fixed, lopsided law Q), and a clean token never changes. Catches an unmask probability
    of (alpha_s - alpha_t) / alpha_t, values set to the argmax instead of drawn, and clean tokens
    redrawn (each planted and seen failing)."""
    proc = (MaskedProcess(V, MASK, schedule) if kind == "masked"
            else ScoreEntropyProcess("absorb", V, MASK, schedule))
    gen = torch.Generator().manual_seed(0)
    B, L = 64, 1024
    x_t = torch.randint(0, N, (B, L), generator=gen)
    masked = torch.rand(B, L, generator=gen) < 0.6
    x_t[masked] = MASK
    Q = torch.tensor([0.05, 0.5, 0.1, 0.2, 0.1, 0.05], dtype=torch.float64)
    logits = torch.full((B, L, V), -1e9, dtype=torch.float64)
    logits[..., :N] = Q.log()
    t, s = 0.6, 0.25
    x_s, _ = proc.reverse_step(proc.log_probs(logits), x_t, t, s, gen)
    assert torch.equal(x_s[~masked], x_t[~masked])  # clean tokens stay
    n = int(masked.sum())
    stay = (1 - _alpha(proc, s)) / (1 - _alpha(proc, t))
    was_masked = x_s[masked]
    expected = torch.cat([(1 - stay) * Q, torch.tensor([stay], dtype=torch.float64)])  # values 0..N-1, then mask
    observed = torch.cat([torch.bincount(was_masked[was_masked < N], minlength=N),
                          (was_masked == MASK).sum()[None]])
    assert int(observed.sum()) == n  # a masked token becomes a value or stays masked, nothing else
    _counts_within(observed, expected, n, (kind, schedule))
    last, _ = proc.reverse_step(proc.log_probs(logits), x_t, t, 0.0, gen)
    assert not (last == MASK).any()  # the last step unmasks everything left


class _Oracle(torch.nn.Module):
    """The exact denoiser of i.i.d. tokens from P: x0 log-probabilities (uniform process) or log
    concrete scores (SEDD uniform: the ratios of the marginal p_t)."""

    def __init__(self, proc):
        super().__init__()
        self.proc = proc

    def forward(self, xt, t):
        a = self.proc.schedule.alpha(t.double())[:, None, None]
        if isinstance(self.proc, UniformProcess):
            return (P * (a * F.one_hot(xt, N) + (1 - a) / N)).log()  # p(x0) q(x_t | x0)
        return (a * P + (1 - a) / N).log().expand(*xt.shape, N)  # log p_t(y)


@pytest.mark.parametrize("kind", ["uniform", "sedd-uniform"])
@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_uniform_reverse_step_is_conditioned_on_x_t(kind, schedule):
    """Known answer: with the exact denoiser, (x_t, x_s) after one step is distributed as the
    forward process's joint, q(x_t = z, x_s = y) = sum_x0 P(x0) q_s(y | x0) q_{t|s}(z | y), checked
    cell by cell over the N x N table. The marginal of x_s is the same for a step conditioned on
    the wrong token (tests checked only that), the joint is not: catches the posterior reading
    x_t shifted by one position (marginal still exact), and SEDD's x0
    estimate without its q(z | y) factor (each planted and seen failing)."""
    proc = UniformProcess(N, N, schedule) if kind == "uniform" else ScoreEntropyProcess("uniform", N, MASK, schedule)
    gen = torch.Generator().manual_seed(1)
    B, L = 64, 1024
    x0 = torch.multinomial(P.float(), B * L, replacement=True, generator=gen).view(B, L)
    t, s = 0.7, 0.35
    x_t = proc.corrupt(x0, torch.full((B,), t), gen)
    x_s, _ = proc.reverse_step(proc.log_probs(_Oracle(proc)(x_t, torch.full((B,), t))), x_t, t, s, gen)
    a_t, a_s = _alpha(proc, t), _alpha(proc, s)
    eye = torch.eye(N, dtype=torch.float64)
    q_s = a_s * eye + (1 - a_s) / N  # [x0, y]
    q_ts = (a_t / a_s) * eye + (1 - a_t / a_s) / N  # [y, z]
    joint = torch.einsum("x,xy,yz->zy", P, q_s, q_ts)  # [z, y]
    counts = torch.bincount((x_t * N + x_s).flatten(), minlength=N * N).view(N, N)
    _counts_within(counts, joint, B * L, (kind, schedule))


def _random_x0_law(gen, shape) -> torch.Tensor:
    return torch.distributions.Dirichlet(torch.ones(N, dtype=torch.float64)).sample(shape)


@pytest.mark.parametrize("kind", ["uniform", "sedd-uniform", "sedd-absorb"])
def test_euler_step_approaches_the_analytic_step_as_dt_shrinks(kind):
    """Known answer: a first-order step's jump probabilities are dt times the reverse rates, and
    the analytic step's are dt times the same rates plus O(dt^2). So, off the diagonal,
    |euler - analytic| / analytic shrinks like dt: below 2 % at dt = 1e-3 and ten times smaller
    at dt = 1e-4. Catches rates missing the 1/N, a score ratio inverted (p_z / p_y), the absorbing
    rate read as beta instead of -alpha'/(1 - alpha) (each an O(1) error that no dt removes;
    planted and seen failing)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    B, L, t = 4, 16, 0.6
    if kind == "sedd-absorb":
        proc = ScoreEntropyProcess("absorb", V, MASK, "cosine")  # (log-linear: first order is exact)
        x_t = torch.full((B, L), MASK)
        log_scores = proc.log_probs(torch.randn(B, L, V, generator=gen, dtype=torch.float64))
    else:
        proc = UniformProcess(N, N, "cosine") if kind == "uniform" else ScoreEntropyProcess("uniform", N, MASK, "cosine")
        x_t = torch.randint(0, N, (B, L), generator=gen)
        p0 = _random_x0_law(gen, (B, L))  # a model's x0 estimate, different at every position
        a = _alpha(proc, t)
        if kind == "uniform":
            log_scores = proc.log_probs(p0.log())
        else:  # normalised scores p_t = a p0 + (1 - a) / N: every implied x0 law is unclipped
            log_scores = (a * p0 + (1 - a) / N).log()

    def analytic(s):
        if kind != "sedd-absorb":
            return proc.reverse_probs(log_scores, x_t, t, s)
        u = proc.forward.unmask_probability(t, s)
        probs = u * log_scores.exp()
        probs[..., MASK] = 1 - u
        return probs

    off = F.one_hot(x_t, log_scores.shape[-1]) == 0
    if kind == "sedd-absorb":
        off &= torch.arange(V) < N  # the reachable values
    errors = {}
    for dt in (1e-3, 1e-4):
        exact, euler = analytic(t - dt), proc.euler_probs(log_scores, x_t, t, t - dt)
        assert torch.allclose(euler.sum(-1), torch.ones(B, L, dtype=torch.float64))
        errors[dt] = float(((euler - exact).abs() / exact)[off].max())
    assert errors[1e-3] < 0.02 and errors[1e-4] < errors[1e-3] / 5, (kind, errors)


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_remdm_keeps_the_forward_masked_fraction_at_every_step(schedule):
    """Known answer (ReMDM, Wang et al. 2025, eq. 3 with sigma capped at eta): revealing with
    (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t) and re-masking decoded tokens with sigma keeps
    the masked fraction at 1 - alpha_s after every step, as the forward process has it, while a
    sigma share of the decoded tokens does go back. Catches re-masking that never happens (the
    fraction drops by sigma alpha_t) and a reveal probability without the (1 - sigma) factor (the
    fraction rises by it), each planted and seen failing."""
    proc = MaskedProcess(V, MASK, schedule)
    sampler = ReMDMSampler(eta=0.1)
    steps, B, L = 8, 64, 1024
    grid = sampler.timesteps(steps)
    gen = torch.Generator().manual_seed(3)
    x = torch.full((B, L), MASK)
    log_p = proc.log_probs(torch.zeros(B, L, V, dtype=torch.float64))
    remasked_any = False
    for i in range(steps):
        t, s = float(grid[i]), float(grid[i + 1])
        out = sampler.transition(log_p, x, t, s, proc, gen)
        back = (x != MASK) & (out.x_prev == MASK)
        decoded = int((x != MASK).sum())
        if decoded:
            _, sigma = sampler.probabilities(proc, t, s)
            _counts_within(back.sum()[None], torch.tensor([sigma], dtype=torch.float64), decoded, ("remask", i))
            remasked_any |= bool(back.any())
        x = out.x_prev
        expected = 1 - _alpha(proc, s)
        frac_sd = math.sqrt(max(expected * (1 - expected), 1e-12) / x.numel())
        frac = float((x == MASK).double().mean())
        assert abs(frac - expected) <= 5 * frac_sd + 1e-9, (schedule, i, frac, expected)
    assert remasked_any and not (x == MASK).any()


def test_a_remasking_candidate_is_drawn_from_its_distribution_by_one_uniform():
    """``inverse_cdf`` (the remasking family's candidate draw: one float64 uniform a position)
    picks the token whose cumulative interval holds u * total: at the interval edges exactly,
    never a token of zero probability (one between two others, and the last, where u * total
    rounded up to the total would land), and with each token's probability over many draws.
    Catches: ``searchsorted`` without ``right=True`` (u on an edge picks the token before it,
    and u = 0 picks a zero-probability first token), no fallback for the rounded-up total (the
    zero-probability last token), an off-by-one pick (every frequency shifted), and a NaN
    distribution drawn from instead of refused; each seen failing."""
    from textdiffusion.sampling.remasking import inverse_cdf

    probs = torch.tensor([0.0, 0.5, 0.0, 0.2, 0.3, 0.0], dtype=torch.float64)
    log_p = probs.log()[None].expand(6, -1)
    u = torch.tensor([0.0, 0.25, 0.5, 0.7, 1.0 - 2.0**-53, 1.0], dtype=torch.float64)
    assert inverse_cdf(log_p, u).tolist() == [1, 1, 3, 4, 4, 4]  # (u = 1: a total rounded up)
    law = torch.softmax(torch.randn(12, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2, -1)
    law[[0, 11]] = 0.0  # the first and last tokens impossible
    n = 60_000
    draws = inverse_cdf((law / law.sum()).log()[None].expand(n, -1),
                        torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))
    _counts_within(torch.bincount(draws, minlength=12), law / law.sum(), n, "inverse-cdf draws")
    broken = torch.tensor([[0.0, float("nan"), -1.0]], dtype=torch.float64)  # a network's NaN: refused, as multinomial does
    with pytest.raises(RuntimeError, match="nan"):
        inverse_cdf(broken, torch.tensor([0.5], dtype=torch.float64))
