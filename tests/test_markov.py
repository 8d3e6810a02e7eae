"""Known answers: on a Markov chain with known entropy, the trained diffusion ELBO and the AR
twin's NLL must sit at or above the true entropy, far below the untrained values, and samples
must reproduce the chain's transition statistics."""

import pytest
import torch
from markov import MarkovChain, tokenizer

from textdiffusion.config import Config, ModelConfig, ProcessConfig, TrainConfig
from textdiffusion.evaluation import evaluate_likelihood
from textdiffusion.runs import build_model, load_run
from textdiffusion.sampling import build_sampler
from textdiffusion.training.trainer import train

CONTEXT = 32


# Gaussian embedding diffusion learns more slowly (its ELBO estimator is noisier: rare decoding
# errors weighted by the SNR); it gets a longer run, the same model and data
# and its samples sit a little further from the chain at that budget (TV 0.12-0.14 against 0.05 for
# the chain's own samples, where the discrete processes reach 0.08-0.12)
STEPS = {"gaussian": 1000}
TV_SLACK = {"gaussian": 0.15}


def _config(process: str) -> Config:
    steps = STEPS.get(process, 300)
    return Config(
        model=ModelConfig(n_layer=2, n_head=4, d_model=64, context=CONTEXT),
        process=ProcessConfig(name=process),
        train=TrainConfig(batch_size=64, max_steps=steps, lr=3e-3, min_lr=3e-4, warmup_steps=20,
                          eval_every=steps, ckpt_every=steps, log_every=50),
    )


@pytest.fixture(scope="module")
def chain():
    mc = MarkovChain()
    return mc, {"train": mc.sample(100_000, seed=1), "val": mc.sample(20_000, seed=2)}


@pytest.fixture(scope="module")
def trained(chain, tmp_path_factory):
    _, splits = chain
    runs = {}
    for process in ("masked", "uniform", "gaussian", "sedd-absorb", "sedd-uniform", "block", "ar"):
        out = tmp_path_factory.mktemp(process)
        train(_config(process), out, splits, tokenizer(), progress=False)
        runs[process] = load_run(out)
    return runs


def _likelihood(model, objective, tokens):
    return evaluate_likelihood(model, objective, tokens, tokenizer().token_bytes(), context=CONTEXT,
                               mc_samples=4, max_windows=256, seed=0)


def _untrained(process):
    cfg = _config(process)
    cfg.model.vocab_size = tokenizer().vocab_size
    torch.manual_seed(0)
    model, objective = build_model(cfg, tokenizer())
    return model.eval(), objective


@pytest.mark.parametrize("process, slack", [("masked", 0.2), ("uniform", 0.2), ("gaussian", 0.4),
                                            ("sedd-absorb", 0.25), ("sedd-uniform", 0.3), ("block", 0.2)])
def test_diffusion_elbo_bounds_the_true_entropy(chain, trained, process, slack):
    """The bound of a trained model lies above the chain's true entropy (1.993 bits/token) and
    within ``slack`` of it: what these models reach (2026-12-01, AVX-512 and AVX2 kernels alike:
    masked 2.063, uniform 2.054, gaussian 2.201/2.232, sedd-absorb 2.095, sedd-uniform 2.125,
    block 2.075; standard errors 0.03-0.11) plus a margin of 3-5 standard errors. The untrained
    models score 3.5 bits (uniform 15): the slacks were 0.35-0.6, a quarter to a third of the
    1.5 learnable bits."""
    mc, splits = chain
    run = trained[process]
    report = _likelihood(run.model, run.process, splits["val"])
    true_bits = mc.window_entropy_bits(CONTEXT)  # no context before a window: (H(pi) + (L-1) h) / L
    untrained = _likelihood(*_untrained(process), splits["val"])
    assert report.bits_per_token >= true_bits - 3 * report.stderr_bits_per_token, (report, true_bits)
    assert report.bits_per_token < true_bits + slack, (report, true_bits)  # it learned most of the chain
    assert report.bits_per_token < untrained.bits_per_token - 1.0, (report, untrained)


def test_ar_nll_bounds_the_entropy_rate(chain, trained):
    mc, splits = chain
    run = trained["ar"]
    report = _likelihood(run.model, run.process, splits["val"])
    h = mc.entropy_rate_bits()  # AR predicts every scored token from the one before: h exactly
    assert report.exact
    assert report.bits_per_token >= h - 3 * report.stderr_bits_per_token, (report, h)
    assert report.bits_per_token < h + 0.1
    untrained = _likelihood(*_untrained("ar"), splits["val"])
    assert report.bits_per_token < untrained.bits_per_token - 1.0


MODE_SEEKING = ("confidence", "semi-ar", "threshold")  # commit the likeliest tokens first
# order positions by certainty but keep sampled values: between ancestral and confidence decoding
CERTAINTY_ORDERS = ("margin", "entropy")


@pytest.mark.parametrize("process, sampler_name, options", [
    ("masked", "ancestral", {}), ("masked", "confidence", {}), ("masked", "margin", {}), ("masked", "entropy", {}),
    ("masked", "random", {}), ("masked", "remdm", {}), ("masked", "semi-ar", {"block_length": 8}),
    ("masked", "threshold", {"block_length": 8, "kv_cache": "dual"}),
    ("uniform", "ancestral", {}), ("uniform", "euler", {}), ("gaussian", "ddpm", {}), ("gaussian", "ddim", {}),
    ("sedd-absorb", "ancestral", {}), ("sedd-uniform", "ancestral", {}), ("sedd-absorb", "euler", {}),
    ("sedd-uniform", "euler", {}), ("block", "block", {}), ("ar", "ar", {})])
def test_samples_reproduce_the_chain(chain, trained, process, sampler_name, options):
    mc, _ = chain
    run = trained[process]
    tok = tokenizer()
    sampler = build_sampler(sampler_name, run.process, tok, **options)
    out = sampler.generate(run.model, run.process, length=CONTEXT, steps=CONTEXT, batch_size=64,
                           gen=torch.Generator().manual_seed(0))
    tv = mc.bigram_tv(out.new_tokens.tolist())
    model, objective = _untrained(process)
    untrained = sampler.generate(model, objective, length=CONTEXT, steps=CONTEXT, batch_size=64,
                                 gen=torch.Generator().manual_seed(0))
    tv_untrained = mc.bigram_tv(untrained.new_tokens.tolist())
    # reference: the same number of transitions drawn from the true chain
    reference = mc.bigram_tv([mc.sample(CONTEXT, seed=100 + i).tolist() for i in range(64)])
    if sampler_name in MODE_SEEKING:
        # confidence-type ordering is mode-seeking (it commits the likeliest tokens first), so it does
        # not reproduce the transition rows; its samples must instead be at least as likely
        # under the true chain as the chain's own samples, and far likelier than untrained ones
        bits = mc.transition_bits(out.new_tokens.tolist())
        assert bits < mc.entropy_rate_bits(), bits
        assert bits < mc.transition_bits(untrained.new_tokens.tolist()) - 1.0
        assert tv < tv_untrained
    elif sampler_name in CERTAINTY_ORDERS:
        # near the chain's own likelihood (within 0.3 bits of the entropy rate, against > 1 bit
        # more for untrained samples) and clearly closer to its transition rows than untrained
        bits = mc.transition_bits(out.new_tokens.tolist())
        assert bits < mc.entropy_rate_bits() + 0.3, bits
        assert bits < mc.transition_bits(untrained.new_tokens.tolist()) - 1.0
        assert tv < 0.5 * tv_untrained, (tv, tv_untrained)
    else:
        assert tv < 0.5 * tv_untrained, (tv, tv_untrained)
        assert tv < reference + TV_SLACK.get(process, 0.1), (tv, reference)
