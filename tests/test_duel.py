"""DUEL's exact likelihood of a masked sampler with a deterministic order (evaluation/duel.py;
Turok, De Sa & Kuleshov 2026, arXiv:2603.01367), checked four ways:

* enumeration: over every text of a tiny vocabulary (a, b and end-of-text; mask, pad and unknown
  are banned) the probabilities sum to one, for every order, one and two tokens per step, with
  and without a prompt, and with the sampler's filters (temperature, top-k, top-p, greedy);
* the real sampler (``build_sampler(...).generate``) draws texts with the frequencies DUEL gives
  them: total variation within the noise of as many draws from DUEL's law (``reference_tv``);
* with an exact denoiser (tests/exact.py) and one token per step, DUEL is the chain rule: the
  Markov chain's own log-probability, for every order; two per step it is not (a KL > 0);
* the command line: ``eval --likelihood duel`` prints DUEL beside the ELBO, in bits/token and in
  bits/byte over the bytes the scored text counts.

Two networks: the project's Transformer, its weights drawn at random, and ``CanvasTable``, whose
logits are a seeded random function of the whole canvas and of the time input, so that every
canvas has its own conditionals (the orders disagree, the time input matters).
"""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from commands import in_process
from exact import ExactDenoiser, joint_law, masked_process, reference_tv, sample_chain, tv_to_law
from markov import MarkovChain
from markov import tokenizer as letters
from torch import nn

from textdiffusion.config import Config, ModelConfig, ProcessConfig
from textdiffusion.errors import UsageError
from textdiffusion.evaluation.duel import duel_log_likelihood
from textdiffusion.runs import build_model
from textdiffusion.sampling import build_sampler
from textdiffusion.sampling.registry import DETERMINISTIC_ORDERS
from textdiffusion.tokenizers import CharTokenizer

TOK = CharTokenizer(list("ab"))  # text ids 0, 1 and end-of-text 2; mask 3, pad 4, unknown 5 are banned
TEXT_IDS = 3


class CanvasTable(nn.Module):
    """logits[b, l] = A[h(z_b), l] + t_b B[h(z_b), l]: A and B seeded Gaussian tables, h a hash of
    the whole canvas z_b. Called like the project's Transformer (``model(x, t)``; ``cfg``; one
    parameter for the device); ``calls`` counts forward passes."""

    def __init__(self, vocab_size: int, context: int = 8, scale: float = 1.0, slope: float = 3.0, seed: int = 0,
                 rows: int = 4099):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.cfg = ModelConfig(n_layer=1, n_head=1, d_model=2, context=context, vocab_size=vocab_size, time_cond=True)
        self.register_buffer("A", scale * torch.randn(rows, context, vocab_size, generator=g, dtype=torch.float64))
        self.register_buffer("B", slope * torch.randn(rows, context, vocab_size, generator=g, dtype=torch.float64))
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)
        self.calls = 0

    def forward(self, tokens: torch.Tensor, t: torch.Tensor, *, attn_mask=None) -> torch.Tensor:
        self.calls += 1
        h = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
        for i in range(tokens.shape[1]):
            h = (h * 31 + tokens[:, i] + 1) % self.A.shape[0]
        T = tokens.shape[1]
        return self.A[h, :T] + t.double()[:, None, None] * self.B[h, :T]


def transformer(process: str = "masked"):
    """A tiny time-conditioned Transformer (as a run builds it), every weight drawn N(0, 0.7^2)
    (the default initialisation's zero adaLN gates would hide the time input)."""
    cfg = Config(model=ModelConfig(n_layer=2, n_head=2, d_model=32, context=8, time_cond=True),
                 process=ProcessConfig(name=process))
    cfg.model.vocab_size = TOK.vocab_size
    model, objective = build_model(cfg, TOK)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.7 * torch.randn(p.shape, generator=g))
    return model.eval(), objective


def every_text(length: int, prompt: list[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """(texts, fixed): every [prompt | length text ids] in base-3 order (tests/exact.py's cells)."""
    free = torch.tensor(list(itertools.product(range(TEXT_IDS), repeat=length)))
    x = torch.cat([torch.tensor(prompt, dtype=torch.long).expand(len(free), len(prompt)), free], 1)
    fixed = torch.zeros_like(x, dtype=torch.bool)
    fixed[:, : len(prompt)] = True
    return x, fixed


# (free length, steps, prompt): one token per step, two per step, a ceil(masked / steps left) mix
SCHEDULES = [(4, 4, []), (4, 2, []), (6, 3, []), (5, 3, []), (4, 2, [1]), (3, 3, [0, 2])]


@pytest.mark.parametrize("order", DETERMINISTIC_ORDERS)
@pytest.mark.parametrize("network", ["transformer", "table", "sedd-absorb"])
def test_duel_sums_to_one_over_every_text(order, network):
    """sum_x q(x) = 1 over every text (to 1e-5), for every order, k = 1 and k = 2 per step and
    the linear schedule's mixes, with a prompt, one network call per step for the whole batch.
    Caught, planted in evaluation/duel.py: ranking the positions by the probability of the text's
    own token there (the ``confidence`` rule with x as the candidate: sums 0.6 to 17); scoring
    with the process's probabilities without the sampler's banned ids (pad and unknown keep
    mass: sums 0.001 to 0.65); the reveal count one step ahead (``step + 1``: 3 calls for 4
    steps). Not caught here, by design: pseudo-likelihood (a product of marginals sums to one
    too; the frequency and chain-rule tests catch it)."""
    torch.set_num_threads(1)  # tiny tensors: a second thread only waits (the suite restores it)
    if network == "table":
        model, process = CanvasTable(TOK.vocab_size), masked_process(TOK)
    else:
        model, process = transformer("masked" if network == "transformer" else network)
    sampler = build_sampler(order, process, TOK)
    for length, steps, prompt in SCHEDULES:
        x, fixed = every_text(length, prompt)
        calls = getattr(model, "calls", 0)
        q = duel_log_likelihood(model, process, x, sampler, steps, fixed).exp()
        assert abs(float(q.sum()) - 1.0) < 1e-5, (length, steps, prompt, float(q.sum()))
        if network == "table":
            assert model.calls - calls == min(steps, length)  # one call per step, all texts at once


@pytest.mark.parametrize("options", [dict(temperature=0.7), dict(top_k=2), dict(top_p=0.8),
                                     dict(temperature=1.3, top_k=2, top_p=0.9), dict(schedule="cosine"),
                                     dict(schedule="dream"), dict(temperature=0)])
def test_duel_sums_to_one_with_the_sampler_filters(options):
    """The filters are the sampler's own (temperature, top-k, top-p, greedy; the cosine and Dream
    reveal counts): q still sums to one, and greedy gives one text all of it. Caught, planted:
    ranking by the text's own token (sums 2.6 to 19); no banned ids (sums down to 0); the
    ``confidence`` order let through as deterministic (it fails: it needs the draw)."""
    torch.set_num_threads(1)
    model, process = CanvasTable(TOK.vocab_size, scale=2.0, slope=2.0, seed=1), masked_process(TOK)
    for order in DETERMINISTIC_ORDERS:
        sampler = build_sampler(order, process, TOK, **options)
        for length, steps, prompt in [(4, 4, []), (4, 3, []), (4, 2, [1])]:
            x, fixed = every_text(length, prompt)
            q = duel_log_likelihood(model, process, x, sampler, steps, fixed).exp()
            assert abs(float(q.sum()) - 1.0) < 1e-5, (order, length, steps, float(q.sum()))
            if options.get("temperature") == 0:
                assert float(q.max()) == 1.0


N = 2000  # sampler draws per configuration: N draws of DUEL's own law score TV 0.004 to 0.05, SD 0.004 to 0.007


@pytest.mark.parametrize("order, steps, prompt, options", [
    ("top-prob", 4, None, {}),                   # one per step
    ("margin", 2, None, {}),                     # two per step
    ("entropy", 3, [1], {}),                     # 2, 1, 1 after a prompt (the time input counts free positions)
    ("left-to-right", 2, [0], {}),
    ("top-prob", 4, None, dict(temperature=2.0)),  # flat: the drawn token is often not the top one
    ("top-prob", 2, [1], dict(temperature=2.0)),
    ("top-prob", 3, None, dict(temperature=0.8, top_k=2)),
    ("margin", 4, [2], dict(top_p=0.85, schedule="cosine")),
    ("entropy", 4, None, dict(top_p=0.7)),       # ranked by the filtered distribution, as the sampler does
])
def test_sampler_draws_texts_as_often_as_duel_says(order, steps, prompt, options):
    """The real sampler (its public ``generate``, N draws, seed 0) against DUEL's law of the same
    sampler: TV <= mean + 6 SD of the TV of N draws from DUEL's law itself (``reference_tv``;
    limits 0.04 to 0.09), every sample one of the enumerated texts. Caught, planted (TV against
    its limit): DUEL scoring every position from the all-mask canvas (pseudo-likelihood: 0.56 to
    1.0, every configuration); DUEL calling the network at t = 1 instead of the sampler's time
    input (0.21 to 0.95, every one); DUEL's time input counting the prompt as free (0.128 / 0.069,
    0.124 / 0.081, 0.121 / 0.101: the prompted ones without top-p); DUEL's reveal count one step
    ahead (0.55 to 1.0, every one); DUEL ranking by the unfiltered distribution (top-p 0.7: 1.0 /
    0.04); the top-prob sampler ranking by the drawn token's probability (LLaDA's confidence:
    0.21 / 0.08 and 0.32 / 0.09 at temperature 2, 0.077 / 0.054 and 0.078 / 0.051 sharper)."""
    torch.set_num_threads(1)
    model, process = CanvasTable(TOK.vocab_size), masked_process(TOK)
    sampler = build_sampler(order, process, TOK, **options)
    p = [] if prompt is None else prompt
    x, fixed = every_text(4, p)
    law = duel_log_likelihood(model, process, x, sampler, steps, fixed).exp().numpy()
    assert abs(law.sum() - 1) < 1e-5
    out = sampler.generate(model, process, length=4, steps=steps, batch_size=N,
                           prompt=None if prompt is None else torch.tensor(prompt), gen=torch.Generator().manual_seed(0))
    assert out.nfe <= steps
    drawn = out.tokens[:, len(p):]
    tv = tv_to_law(drawn, law, TEXT_IDS)  # a sample outside the texts counts in full
    mean, sd = reference_tv(law, N)
    assert tv <= mean + 6 * sd, f"TV {tv:.3f}, limit {mean + 6 * sd:.3f} ({mean:.3f} + 6 x {sd:.3f})"


def test_one_token_per_step_is_the_chain_rule():
    """With the exact denoiser of a Markov chain (tests/exact.py: p(x_l | the revealed tokens)
    exactly) and one token per step, DUEL's log q(x) is the chain's own log P(x) = log pi(x_1) +
    sum log P(x_i, x_(i+1)), for left-to-right (the chain rule, as the AR twin scores) and every
    other order (exact conditionals make every one-at-a-time order exact); two tokens per step it
    is not: KL(P || q) = E_P[log P - log q] = 0.71 to 0.74 nats over every sequence (> 0.01).
    Caught, planted: pseudo-likelihood (every position scored from the all-mask canvas: log q off
    by up to 4.1 nats); the reveal count one step ahead. Not caught here: ranking by the text's own
    token (with exact conditionals every order, even one that peeks at x, gives P(x))."""
    chain = MarkovChain(num_states=3, concentration=0.5, seed=3)
    tok = letters()
    process = masked_process(tok)
    model = ExactDenoiser(chain, tok.vocab_size, tok.mask_id)
    L = 5
    x = torch.tensor(list(itertools.product(range(3), repeat=L)))  # every sequence, base-3 order
    log_p = torch.tensor(np.log(joint_law(chain, L)))
    seen = torch.from_numpy(sample_chain(chain, 64, L, seed=0))  # likely sequences, for the equality
    for order in DETERMINISTIC_ORDERS:
        sampler = build_sampler(order, process, tok)
        calls = model.calls
        one = duel_log_likelihood(model, process, seen, sampler)  # steps: the length
        assert model.calls - calls == L
        index = (seen * 3 ** torch.arange(L - 1, -1, -1)).sum(1)
        assert torch.allclose(one, log_p[index], atol=1e-9, rtol=0), (order, float((one - log_p[index]).abs().max()))
        two = duel_log_likelihood(model, process, x, sampler, steps=3)  # 2, 2, 1 per step
        kl = float((log_p.exp() * (log_p - two)).sum())
        assert kl > 0.01, (order, kl)


# the command line -----------------------------------------------------------------------------
WORDS = "ο γάτος κάθεται στο χαλί. ο σκύλος τρέχει στον κήπο. το πουλί τραγουδά στο δέντρο. "


@pytest.fixture(scope="module")
def greek_runs(tmp_path_factory):
    """Tiny masked, AR and uniform runs on Greek text (two bytes a letter: bytes are not tokens)."""
    from pathlib import Path

    base = tmp_path_factory.mktemp("duel")
    (base / "train.txt").write_text(WORDS * 80, encoding="utf-8")
    (base / "held_out.txt").write_text(WORDS[7:] * 6, encoding="utf-8")
    tiny = Path(__file__).resolve().parent.parent / "configs" / "tiny.toml"
    for process in ("masked", "ar", "uniform"):
        r = in_process("train", "--data", base / "train.txt", "--out", base / process, "--config", tiny,
                       "--process", process, "--set", "train.max_steps=8", "--quiet", env_cache=base / "cache")
        assert r.returncode == 0, r.stderr
    return base


def test_eval_prints_duel_beside_the_elbo(greek_runs):
    """``eval --likelihood duel`` prints both figures, labelled, and gives them in --json as
    separate keys: DUEL's bits/token are the library's on the same windows (the first 4, context
    64: 64 network calls in one batch), its bits/byte divide the same bits by the bytes the scored
    text counts (UTF-8: two a Greek letter), and the ELBO's keys are unchanged. Caught, planted:
    bytes counted as tokens in ``window_report`` (bits/byte = bits/token); DUEL scoring each
    window with its leading context token (65 tokens a window); the reveal count one step ahead
    (fewer network calls than the context)."""
    from textdiffusion.data import eval_windows
    from textdiffusion.runs import load_run

    base, held = greek_runs, greek_runs / "held_out.txt"
    args = ("eval", base / "masked", "--data", held, "--num-samples", "0", "--max-windows", "4",
            "--likelihood", "duel", "--duel-windows", "4")
    r = in_process(*args, "--json", env_cache=base / "cache")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    d = out["duel"]
    assert out["split"] == "all" and out["num_windows"] == 4 and out["exact"] is False  # the ELBO's, as before
    assert d["order"] == "top-prob" and d["steps"] == 64 and d["num_windows"] == 4 and d["network_calls"] == 64
    text = held.read_text(encoding="utf-8")
    assert d["num_tokens"] == 256 and d["num_bytes"] == len(text[1:257].encode()) > 400  # counted, not tokens
    assert d["bits_per_byte"] == pytest.approx(d["bits_per_token"] * 256 / d["num_bytes"], rel=1e-12)
    assert d["elbo_bits_per_token"] == pytest.approx(out["bits_per_token"], rel=1e-12)  # the same 4 windows
    run = load_run(base / "masked", torch.device("cpu"))
    windows = eval_windows(run.tokenizer.encode_documents([text]), 64, 4)[:, 1:]
    nats = -duel_log_likelihood(run.model.eval(), run.process, windows, build_sampler("top-prob", run.process,
                                                                                       run.tokenizer))
    assert d["bits_per_token"] == pytest.approx(float(nats.sum()) / math.log(2) / 256, rel=1e-6)

    r = in_process(*args, env_cache=base / "cache")
    assert r.returncode == 0, r.stderr
    elbo_line, duel_line = r.stdout.strip().splitlines()
    assert "(ELBO bound," in elbo_line and f"{out['bits_per_token']:.4f}" in elbo_line
    assert duel_line.startswith("DUEL exact log-likelihood of the top-prob sampler (one token per step): "
                                f"{d['bits_per_token']:.4f} ± {d['stderr_bits_per_token']:.4f} bits/token, "
                                f"{d['bits_per_byte']:.4f} bits/byte (256 tokens in 4 windows, 64 network calls")
    plain = in_process(*args[:-4], "--json", env_cache=base / "cache")  # the default: no DUEL, nothing added
    assert "duel" not in json.loads(plain.stdout) and set(json.loads(plain.stdout)) == set(out) - {"duel"}


def test_eval_duel_for_other_runs_and_orders(greek_runs):
    """An AR run's NLL is exact already: --likelihood duel says so and gives the same figure; a
    uniform run, the confidence sampler (its order depends on its draws) and greedy decoding are
    one-line errors naming the fix. Caught, planted: check_likelihood sending AR runs to the
    masked path (refused: "this one is ar")."""
    base = greek_runs
    common = ("--data", base / "held_out.txt", "--num-samples", "0", "--max-windows", "2", "--likelihood", "duel")
    r = in_process("eval", base / "ar", *common, "--json", env_cache=base / "cache")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["exact"] and out["duel"]["bits_per_token"] == out["bits_per_token"] and "already exact" in out["duel"]["note"]
    r = in_process("eval", base / "ar", *common, env_cache=base / "cache")
    assert r.stdout.strip().splitlines()[1].startswith("DUEL: an AR run's NLL is already exact")
    for run, extra, message in [
        ("uniform", (), "--likelihood duel is for masked diffusion runs (masked, sedd-absorb) and AR runs; this one "
                        "is uniform"),
        ("masked", ("--duel-order", "confidence"), "the confidence sampler ranks positions by the token it drew"),
        ("masked", ("--duel-order", "random"), "--duel-order must be top-prob, left-to-right, margin, entropy"),
        ("masked", ("--temperature", "0"), "--temperature 0 (greedy) gives one text all the probability"),
    ]:
        r = in_process("eval", base / run, *common, *extra, env_cache=base / "cache")
        assert r.returncode != 0 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_duel_refuses_what_it_cannot_score():
    """The library refuses a sampler whose order depends on its draws, and a masked canvas to score.
    Caught, planted: ``confidence`` among DETERMINISTIC_ORDERS (a TypeError deep inside instead)."""
    model, process = CanvasTable(TOK.vocab_size), masked_process(TOK)
    x, _ = every_text(3)
    for name in ("confidence", "random", "ancestral"):
        with pytest.raises(UsageError, match="does not depend on its draws"):
            duel_log_likelihood(model, process, x, build_sampler(name, process, TOK))
    with pytest.raises(UsageError, match="holds the mask token"):
        duel_log_likelihood(model, process, torch.full((1, 3), TOK.mask_id), build_sampler("margin", process, TOK))


def test_left_to_right_reveals_the_leftmost_masked_positions():
    """The left-to-right sampler reveals the free positions in reading order, k a step, whatever the
    network prefers (after a prompt; two per step here). Caught, planted: the score's sign flipped
    (+position: the rightmost first)."""
    model, process = CanvasTable(TOK.vocab_size), masked_process(TOK)
    out = build_sampler("left-to-right", process, TOK).generate(
        model, process, length=6, steps=3, batch_size=4, prompt=torch.tensor([1]), trace=True,
        gen=torch.Generator().manual_seed(0))
    assert len(out.trace) == 3
    for i, x in enumerate(out.trace):
        revealed = x[:, 1:] != process.mask_id
        assert torch.equal(revealed, (torch.arange(6) < 2 * (i + 1)).expand(4, 6)), (i, revealed)
