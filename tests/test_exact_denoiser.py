"""Exact-denoiser tests of the samplers ("Is Your Diffusion Sampler Actually Correct?",
arXiv:2602.19619): the network is replaced by the exact p(x0_i | x_t) of a known Markov chain
(tests/exact.py), so whatever the samples get wrong is the sampler's own doing.

Data: a 3-state chain with strongly dependent neighbours (MarkovChain(num_states=3,
concentration=0.5, seed=3); the tokenizer's letters a, b, c), sequences of L = 4 tokens from its
stationary start: 81 sequences, whose exact law is a table. Each configuration draws N = 1000
sequences in one batched ``generate`` call (fixed seed) from the masked process exactly as a run
builds it, and is scored by the total variation (TV) between its samples' empirical law and the
exact one.

* ``CORRECT``: configurations that sample the chain's law exactly given a perfect model (one token
  revealed per network call from its full conditional, in an order that does not look at the
  drawn value; or so many steps that two tokens rarely unmask together). They must score within
  the noise of N true chain samples: TV <= mean + 4 SD of the TV of N true samples
  (``reference_tv``: 0.064 + 4 x 0.010 = 0.103 at N = 1000), and every sample must be a chain
  sequence (counted: nothing left masked).
* ``FEW_STEP``: configurations that are NOT exact (several tokens drawn independently in one call,
  or an order that prefers the value it drew). Their error is a known answer, measured over 16
  seeds (mean and SD of one run's TV); a run must land within 4.5 SD of the mean, so a change that
  makes one worse (or better: then re-measure and record it) fails. Each line's comment gives the
  TV of the ideal sampler's exact law (computed by dynamic programming over partial sequences,
  outside this file), which the measured means match (a finite sample adds a little to the TV).
* ``MARGINALS``: time-stepping samplers (ancestral, ReMDM) must keep the forward process's mask
  rate 1 - alpha(t) after every step: a count, exact at any step count. With a perfect model the
  unmask / re-mask probabilities barely touch the final law (any order of one-token reveals is
  exact), so this is where a wrong probability shows.

Adding a sampler configuration is one line: in ``CORRECT`` if it should be exact, or in
``FEW_STEP`` with its measured TV and SD, which ``python tests/test_exact_denoiser.py NAME STEPS
'{"option": value}' [N]`` prints (16 seeds). ``n=`` gives a line its own number of samples (the long
many-step runs take 500; 500 true samples score 0.090 +- 0.013, limit 0.141).

Found here (see the FEW_STEP comments): ``confidence`` (and ``threshold``, ``semi-ar
--order confidence``) is not exact even with one token per step: ranking positions by the
probability of the candidate each one drew prefers likely values (TV 0.35 with 4 steps for 4
tokens, where ``random``, ``margin`` and ``entropy`` are exact). Ancestral and ReMDM are exact only
in the limit of many steps (TV of the ideal sampler ~0.86 / steps here, ReMDM's a little more);
Dream's reveal schedule reveals 0, 1, 1, 2 tokens in 4 steps for 4 tokens (its first call is
wasted), so it is not exact with steps == tokens. ``threshold`` at its default 0.9 is the
``confidence`` order here (one row in 1000 differs), hence the 0.5 below.
"""

import functools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

if __name__ == "__main__":  # run as a script: this checkout's src/, as pytest's pythonpath does
    sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "src"), str(Path(__file__).resolve().parent)]

from exact import (
    ExactDenoiser,
    brute_conditional,
    joint_law,
    masked_process,
    reference_tv,
    sample_chain,
    tv_to_law,
)
from markov import MarkovChain, tokenizer

from textdiffusion.sampling import build_sampler
from textdiffusion.sampling.base import padded_call

L, N = 4, 1000  # tokens per sequence, samples per configuration
CHAIN = MarkovChain(num_states=3, concentration=0.5, seed=3)
S = CHAIN.num_states
LAW = joint_law(CHAIN, L)
REF_MEAN, REF_SD = reference_tv(LAW, N)  # TV of N true samples: 0.064 +- 0.010
TOL_SDS = 4.5  # known answers: |TV - measured mean| <= 4.5 SD of one run (4 SD, widened for the 16-seed estimates)


def denoiser() -> ExactDenoiser:
    tok = tokenizer()
    return ExactDenoiser(CHAIN, tok.vocab_size, tok.mask_id, context=16)


def draw(name: str, steps: int, options: dict, seed: int = 0, n: int = N, trace: bool = False):
    """``n`` sequences of L tokens from sampler ``name`` run with the exact denoiser: one batched call."""
    tok = tokenizer()
    process = masked_process(tok)
    sampler = build_sampler(name, process, tok, **options)
    return sampler.generate(denoiser(), process, length=L, steps=steps, batch_size=n,
                            gen=torch.Generator().manual_seed(seed), trace=trace)


@functools.lru_cache
def limit(n: int) -> float:
    """The most a correct sampler's N samples may score: mean + 4 SD of the TV of ``n`` true samples."""
    mean, sd = reference_tv(LAW, n)
    return mean + 4 * sd


def config(name: str, steps: int, n: int = N, **options):
    """A CORRECT (or MARGINALS) line: sampler ``name``, ``steps`` steps, its ``options``, ``n`` samples."""
    return pytest.param(name, steps, options, n, id=f"{name}-{steps}" + "".join(f"-{k}={v}" for k, v in options.items())
                        + (f"-n={n}" if n != N else ""))


def known(name: str, steps: int, tv: float, sd: float, n: int = N, **options):
    """A FEW_STEP line: its measured TV with ``n`` samples (mean over 16 seeds) and the SD of one run's TV."""
    return pytest.param(name, steps, options, n, tv, TOL_SDS * sd,
                        id=f"{name}-{steps}" + "".join(f"-{k}={v}" for k, v in options.items())
                        + (f"-n={n}" if n != N else ""))


# exact given a perfect model: within the noise of N true samples (measured TV: mean +- SD over 8-16 seeds)
CORRECT = [
    config("ancestral", 64, n=500),  # 16 steps per token; 9% of rows unmask two together (ideal TV 0.013; 0.089 +- 0.014)
    config("remdm", 64, n=500),  # re-masking (eta 0.04) adds reveals (ideal TV 0.019; 0.092 +- 0.014, true 0.090 +- 0.013)
    config("random", 4),  # one token per step at a random position: exact (0.065 +- 0.007)
    config("margin", 4),  # one per step, the order a function of the revealed tokens only: exact (0.066 +- 0.011)
    config("entropy", 4),  # (0.064 +- 0.013)
    config("semi-ar", 4, block_length=2, order="random"),  # blocks [0, 2), [2, 4), one per step (0.064 +- 0.008)
    config("semi-ar", 4, block_length=1, order="confidence"),  # one-token blocks: left to right (0.067 +- 0.006)
]

# not exact: the known answer (mean TV over 16 seeds, SD of one run); "ideal": the TV of the ideal sampler's exact law
FEW_STEP = [
    known("ancestral", 1, 0.6744, 0.0140),  # every token at once, independently (ideal 0.663)
    known("ancestral", 2, 0.3839, 0.0190),  # ideal 0.379
    known("ancestral", 4, 0.2062, 0.0164),  # ideal 0.203
    known("remdm", 4, 0.2066, 0.0150),  # ideal 0.202 (ancestral with 4 steps: 0.203)
    known("random", 2, 0.2902, 0.0145),  # two tokens per step (ideal 0.287)
    known("margin", 2, 0.5111, 0.0131),  # two per step, the two most certain together (ideal 0.509)
    known("confidence", 2, 0.4601, 0.0159),  # ideal 0.451
    known("confidence", 4, 0.3486, 0.0099),  # one token per step, yet not exact: prefers likely values (ideal 0.349)
    known("semi-ar", 4, 0.2354, 0.0103, block_length=2, order="confidence"),  # ideal 0.228
    known("threshold", 4, 0.4312, 0.0134, block_length=4, threshold=0.5, kv_cache="none"),  # ideal 0.434
    known("random", 4, 0.1217, 0.0131, schedule="dream"),  # Dream's count: 0, 1, 1, 2 tokens (ideal 0.103)
]


# time-stepping samplers whose every step keeps the forward process's marginal mask rate (exactly, at any step count)
MARGINALS = [
    config("ancestral", 8, n=500),
    config("remdm", 8, n=500),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: a sampler runs a few tiny ops per row and step, and with two threads on
    busy cores each log_softmax of a (1, 4, 12) row waits ~1 ms for the second thread (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_chain_sequences(tokens: torch.Tensor) -> None:
    """Every sample is L states of the chain: nothing left masked, no other token (counted, not
    left to the TV, where a few stray tokens in N samples would hide in the noise)."""
    assert tokens.shape == (tokens.shape[0], L)
    bad = ((tokens < 0) | (tokens >= S)).any(1)
    assert not bool(bad.any()), f"{int(bad.sum())} of {len(tokens)} samples hold other tokens: {tokens[bad][:5].tolist()}"


def test_exact_denoiser_is_the_chain_conditional():
    """For every partly masked sequence (256: each position masked or one of the 3 states), the
    denoiser's distribution at every masked position is the chain's conditional given the
    unmasked ones, computed by summing the joint law; unmasked positions are one-hot on their
    token, and no other id (other letters, end-of-text, mask, padding) gets any probability.

    Catches: a wrong forward-backward in the reference itself (a transposed P, a missing pi, the
    backward pass off by one position), which would make every test below measure the wrong law."""
    tok = tokenizer()
    model = denoiser()
    rows = torch.tensor(list(np.ndindex(*(S + 1,) * L))) - 1  # -1: masked
    x = torch.where(rows < 0, torch.full_like(rows, tok.mask_id), rows)
    probs = model(x, torch.ones(len(x))).softmax(-1)
    assert probs.shape == (len(x), L, tok.vocab_size)
    assert probs[..., S:].abs().max() == 0  # never a non-state, never the mask
    for b, row in enumerate(rows.tolist()):
        given = {j: v for j, v in enumerate(row) if v >= 0}
        for i in range(L):
            want = np.eye(S)[row[i]] if row[i] >= 0 else brute_conditional(CHAIN, L, given, i)
            np.testing.assert_allclose(probs[b, i, :S].numpy(), want, atol=1e-12, err_msg=f"{row} position {i}")


def test_exact_denoiser_ignores_padding():
    """Rows of different lengths in one call (``padded_call``: right padding under an attention
    mask) get the posteriors they get alone.

    Catches: padding read as observed tokens (a later sampler batching ragged rows would then
    sample a different law and be blamed for it)."""
    tok = tokenizer()
    model = denoiser()
    m = tok.mask_id
    rows = [torch.tensor([m, 1, m, 0]), torch.tensor([2, m]), torch.tensor([m, m, m])]
    together = padded_call(lambda x, mask: model(x, None, **({} if mask is None else {"attn_mask": mask})), rows)
    for r, out in zip(rows, together):
        torch.testing.assert_close(out.softmax(-1), model(r[None], None)[0].softmax(-1), rtol=0, atol=1e-12)


def test_true_chain_samples_are_within_the_reference():
    """N true chain sequences (drawn directly: pi, then P) score like the reference draws, over
    several seeds: the exact law, the cell indexing and the TV are right, and the limit the
    correct samplers are held to is what true samples pass.

    Catches: a wrong exact law (pi left out, P transposed, sequences indexed in another order)."""
    tvs = [tv_to_law(sample_chain(CHAIN, N, L, seed), LAW, S) for seed in range(8)]
    assert max(tvs) <= limit(N), tvs
    assert abs(np.mean(tvs) - REF_MEAN) <= 4 * REF_SD / math.sqrt(len(tvs)), (np.mean(tvs), REF_MEAN, REF_SD)


@pytest.mark.parametrize("name, steps, options, n", CORRECT)
def test_correct_sampler_reproduces_the_chain(name, steps, options, n):
    """A distribution-correct configuration samples the chain's joint law within the noise of N
    true samples, and every sample is a chain sequence (nothing left masked, no other token).

    Catches: a sampler drawing from the argmax (or any other value than a draw of the full
    conditional); tokens left masked at the end (a wrong unmask probability that never reaches
    1, a step grid that stops early); a reveal count off by one (two tokens drawn independently
    in one call); an order that looks at the drawn value; a process or model that offsets the
    distribution (temperature, banned ids leaking probability)."""
    out = draw(name, steps, options, n=n)
    assert out.nfe <= steps
    assert_chain_sequences(out.tokens)
    tv = tv_to_law(out.tokens, LAW, S)
    mean, sd = reference_tv(LAW, n)
    assert tv <= limit(n), (f"{name} with {steps} steps {options}: TV {tv:.4f} from the chain's law; {n} true "
                            f"samples score {mean:.4f} +- {sd:.4f} (limit {limit(n):.4f})")


@pytest.mark.parametrize("name, steps, options, n, tv_known, tolerance", FEW_STEP)
def test_few_step_error_is_the_known_answer(name, steps, options, n, tv_known, tolerance):
    """A few-step configuration's distance from the chain's law is its measured known answer.

    Catches: a changed unmask probability (alpha_s - alpha_t) / (1 - alpha_t) or ReMDM reveal /
    re-mask probability (with a perfect model they only move how many tokens share a step, which
    these few-step errors measure); a reveal count or step grid off by one; a changed order score;
    a sampler drawing from the argmax."""
    tokens = draw(name, steps, options, n=n).tokens
    assert_chain_sequences(tokens)
    tv = tv_to_law(tokens, LAW, S)
    assert abs(tv - tv_known) <= tolerance, (
        f"{name} with {steps} steps {options}: TV {tv:.4f}, known {tv_known:.4f} +- {tolerance:.4f} "
        f"({'worse' if tv > tv_known else 'better: if intended, re-measure and record it'})")


@pytest.mark.parametrize("name, steps, options, n", MARGINALS)
def test_reverse_steps_keep_the_forward_mask_rate(name, steps, options, n):
    """After step i of the grid 1 = t_0 > ... > t_N = 0, each token is masked independently with
    probability 1 - alpha(t_i), the forward process's own marginal: MDLM's unmask probability
    (alpha_s - alpha_t) / (1 - alpha_t) keeps it, and ReMDM's reveal probability is built to
    offset its re-masking exactly. So the masked count over the n x L tokens is
    Binomial(n L, 1 - alpha(t_i)) at every step (a count: exact whatever the step count, no bias
    from tokens sharing a step), within 5 SD at every step.

    Catches: a changed unmask probability (alpha_s - alpha_t) / (1 - alpha_t); ReMDM's reveal
    probability not offsetting its re-masking, or a wrong re-mask probability; a step grid that
    ends early or is off by one. With a perfect model the final law hardly sees these (they only change how many tokens
    share a step), so the tests above catch them at few steps at best."""
    out = draw(name, steps, options, n=n, trace=True)
    process = masked_process()
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)  # the documented grid, not the sampler's own
    alpha = process.schedule.alpha(grid[1:]).tolist()
    assert 1 <= len(out.trace) <= steps
    worst = []
    for i, (x, a) in enumerate(zip(out.trace, alpha)):
        masked, tokens = int((x == process.mask_id).sum()), x.numel()
        if a >= 1.0:
            assert masked == 0, f"{masked} tokens still masked after the last step"
            continue
        z = (masked - tokens * (1 - a)) / math.sqrt(tokens * a * (1 - a))
        worst.append((abs(z), i, masked / tokens, 1 - a))
    z, i, got, want = max(worst)
    assert z <= 5, f"{name}, {steps} steps: after step {i + 1} {got:.4f} of the tokens are masked, the forward process {want:.4f} ({z:.1f} SD)"


def measure(name: str, steps: int, options: dict, n: int = N, seeds: int = 16) -> None:
    """Print a configuration's TV over ``seeds`` seeds: the numbers a FEW_STEP line records."""
    tvs = np.array([tv_to_law(draw(name, steps, options, seed, n).tokens, LAW, S) for seed in range(seeds)])
    mean, sd = reference_tv(LAW, n)
    print(f"{name} {steps} {options} n={n}: TV mean {tvs.mean():.4f} SD {tvs.std(ddof=1):.4f} over {seeds} seeds "
          f"(true samples: {mean:.4f} +- {sd:.4f}, a correct sampler's limit {limit(n):.4f}); "
          f"tolerance {TOL_SDS} SD = {TOL_SDS * tvs.std(ddof=1):.4f}")


if __name__ == "__main__":  # python tests/test_exact_denoiser.py NAME STEPS ['{"option": value}'] [N]
    torch.set_num_threads(1)
    measure(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]) if len(sys.argv) > 3 else {},
            int(sys.argv[4]) if len(sys.argv) > 4 else N)
