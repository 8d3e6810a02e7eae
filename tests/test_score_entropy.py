import math

import pytest
import torch

from textdiffusion.processes.score_entropy import ScoreEntropyProcess

N = 6
P = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
H = float(-(P * P.log()).sum())
V = N + 4  # the absorbing process needs a mask id among the vocabulary: id N + 1
MASK = N + 1


def _proc(kind):
    return ScoreEntropyProcess(kind, V if kind == "absorb" else N, MASK)


def test_uniform_integrand_matches_the_definition():
    """The O(N) closed form equals sum_{y != z} R(y -> z) [s_y - r_y log s_y + K(r_y)] term by term."""
    proc = _proc("uniform")
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, N, (4, 7), generator=gen)
    t = torch.rand(4, generator=gen) * 0.9 + 0.05
    xt = proc.corrupt(x0, t, gen)
    xt[0] = x0[0]  # both cases: z = x0 and z != x0
    logits = torch.randn(4, 7, N, generator=gen)
    closed = proc._score_entropy(logits, xt, x0, t)
    a, beta = 1 - t, 1 / (1 - t)
    brute = torch.zeros(4, 7)
    for b in range(4):
        q = a[b] * torch.eye(N) + (1 - a[b]) / N  # q[x0, y]
        for i in range(7):
            z, x = xt[b, i], x0[b, i]
            for y in range(N):
                if y == z:
                    continue
                s = math.exp(logits[b, i, y] - logits[b, i, z])
                r = float(q[x, y] / q[x, z])
                brute[b, i] += beta[b] / N * (s - r * math.log(s) + r * (math.log(r) - 1))
    assert torch.allclose(closed, brute, atol=1e-4, rtol=1e-4)


class _ExactScores(torch.nn.Module):
    """Exact log scores for i.i.d. tokens drawn from P."""

    def __init__(self, proc):
        super().__init__()
        self.proc = proc

    def forward(self, xt, t):
        if self.proc.kind == "absorb":  # s_y = r p(y): the network part is log p(y) + log(V - 1)
            logits = torch.full((*xt.shape, V), -1e9)
            logits[..., :N] = P.log() + math.log(V - 1)
            return logits
        a = self.proc.schedule.alpha(t)[:, None, None]
        return (a * P + (1 - a) / N).log().expand(*xt.shape, N)  # log p_t(y); ratios are the scores


@pytest.mark.parametrize("kind", ["absorb", "uniform"])
def test_bound_is_tight_with_exact_scores(kind):
    proc = _proc(kind)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.multinomial(P, 256 * 33, replacement=True, generator=gen).view(256, 33)
    est = proc.nelbo(_ExactScores(proc), x0, gen, num_samples=16) / 32
    mean, se = est.mean().item(), est.std().item() / math.sqrt(est.numel())
    assert abs(mean - H) < 4 * se + 0.02, (kind, mean, H, se)


@pytest.mark.parametrize("kind", ["absorb", "uniform"])
def test_score_entropy_is_zero_at_the_truth_and_positive_elsewhere(kind):
    proc = _proc(kind)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randint(0, N, (8, 16), generator=gen)
    t = torch.rand(8, generator=gen) * 0.9 + 0.05
    xt = proc.corrupt(x0, t, gen)
    width = V if kind == "absorb" else N
    random = proc._score_entropy(torch.randn(8, 16, width, generator=gen), xt, x0, t)
    assert (random >= -1e-5).all()
    if kind == "uniform":  # exact x0-conditioned scores: s_y = q_t(y | x0) / q_t(z | x0)
        a = (1 - t)[:, None, None]
        truth = (a * torch.nn.functional.one_hot(x0, N) + (1 - a) / N).log()
        assert proc._score_entropy(truth, xt, x0, t).abs().max() < 1e-4
    else:  # s_{x0} = r exactly: network output log(V - 1) at x0 and -inf elsewhere
        truth = torch.full((8, 16, V), -1e9).scatter(-1, x0[..., None], math.log(V - 1))
        assert proc._score_entropy(truth, xt, x0, t).abs().max() < 1e-4


def test_uniform_analytic_step_with_exact_scores_gives_the_true_marginal():
    proc = _proc("uniform")
    gen = torch.Generator().manual_seed(3)
    x0 = torch.multinomial(P, 64 * 512, replacement=True, generator=gen).view(64, 512)
    t, s = 0.7, 0.3
    xt = proc.corrupt(x0, torch.full((64,), t), gen)
    scores = proc.log_probs(_ExactScores(proc)(xt, torch.full((64,), t)))
    xs, _ = proc.reverse_step(scores, xt, t, s, gen)
    expected = (1 - s) * P + s / N
    freq = torch.bincount(xs.flatten(), minlength=N).float() / xs.numel()
    assert (freq - expected).abs().max() < 0.01, (freq, expected)
