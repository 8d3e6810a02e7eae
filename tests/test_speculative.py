"""Known answers for speculative decoding with a diffusion drafter: greedy decoding gives the AR
sampler's tokens for any drafter, and sampling gives exactly the AR model's distribution
(against the distribution computed by enumerating every continuation)."""

import itertools
import math

import pytest
import torch

from textdiffusion.config import Config, ModelConfig, ProcessConfig
from textdiffusion.errors import UsageError
from textdiffusion.models.transformer import RowStore
from textdiffusion.runs import build_model
from textdiffusion.sampling import build_sampler
from textdiffusion.sampling.filters import ban, filter_logits
from textdiffusion.sampling.speculative import SpeculativeSampler, accept, chunks
from textdiffusion.tokenizers import CharTokenizer


def tok(letters="abcdefgh"):
    return CharTokenizer(list(letters))


class Drafter:
    def __init__(self, model, process, tokenizer):
        self.model, self.process, self.tokenizer = model, process, tokenizer


def _model(process, seed, scale=1.0, tokenizer=None, context=40, block_size=4):
    """A tiny model with random weights; ``scale`` sharpens its distributions (an untrained model's
    are near uniform: every draft would be accepted and nothing tested)."""
    tokenizer = tokenizer or tok()
    cfg = Config(model=ModelConfig(n_layer=2, n_head=2, d_model=32, context=context, time_cond=False),
                 process=ProcessConfig(name=process, block_size=block_size))
    cfg.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(seed)
    model, process = build_model(cfg, tokenizer)
    with torch.no_grad():
        model.head.weight.mul_(scale)
    return model.eval(), process


def _speculative(drafter, tokenizer, **options):
    return build_sampler("speculative", _model("ar", 0)[1], tokenizer, draft_run=drafter, **options)


@pytest.mark.parametrize("drafter, draft_len, draft_steps, confidence", [
    (("masked", 1, 1.0), 4, 1, 0.0), (("masked", 2, 30.0), 3, 2, 0.0), (("masked", 3, 30.0), 8, 1, 0.0),
    (("block", 4, 30.0), 6, 3, 0.0), (("block", 5, 1.0), 1, 1, 0.0), (("masked", 3, 8.0), 8, 2, 0.6)])
def test_greedy_output_is_the_ar_samplers_token_for_token(drafter, draft_len, draft_steps, confidence):
    """Greedy speculative decoding returns exactly the AR sampler's tokens, for an untrained
    (near-uniform) drafter and for sharp random ones, masked and block, over several draft
    lengths and chunkings, with and without a prompt, three rows at once. Catches: the KV
    cache not cropped back after a refusal (the next round reads refused drafts' keys), cropped
    one token short, and the correction taken from the drafter instead of the target (planted,
    each seen failing)."""
    t = tok()
    target, process = _model("ar", 0, scale=30.0)
    name, seed, scale = drafter
    dmodel, dprocess = _model(name, seed, scale)
    spec = _speculative(Drafter(dmodel, dprocess, t), t, temperature=0.0, draft_len=draft_len, draft_steps=draft_steps,
                        draft_confidence=confidence)
    ar = build_sampler("ar", process, t, temperature=0.0)
    for prompt in (None, torch.tensor([0, 1, 2, 3, 4])):
        want = ar.generate(target, process, length=30, prompt=prompt, batch_size=3, gen=torch.Generator().manual_seed(0))
        got = spec.generate(target, process, length=30, prompt=prompt, batch_size=3, gen=torch.Generator().manual_seed(0))
        assert torch.equal(got.tokens, want.tokens)
        assert got.stats["rounds"] * (1 + got.stats["mean_accepted"]) >= 90  # a round: its kept drafts and one more
        if confidence:  # a drafter never confident enough: no drafts, every round a plain AR step
            assert got.stats["mean_drafted"] == 0 and got.stats["draft_calls"] == got.stats["rounds"]


class Oracle(torch.nn.Module):
    """The AR target read as a masked-diffusion drafter: position i gets the target's logits
    at i - 1 (the shift). Drafted one token per call it proposes the target's own greedy tokens."""

    def __init__(self, ar):
        super().__init__()
        self.ar, self.cfg = ar, ar.cfg

    def forward(self, x, t=None, attn_mask=None):
        logits = self.ar(x)
        return torch.cat((logits[:, :1], logits[:, :-1]), 1)


@pytest.mark.parametrize("draft_len, draft_steps", [(4, 4), (5, 5), (6, 2)])
def test_a_drafter_that_agrees_is_always_kept(draft_len, draft_steps):
    """With the target itself as the drafter, one token per drafter call, every draft is kept
    and each round adds the bonus token: 30 tokens after a 5-token prompt take ceil(30 / (K + 1))
    AR calls after the prefill; drafted in fewer calls, later drafts are refused and corrected,
    and the tokens are the AR sampler's either way. Catches the bonus token after a fully kept
    draft dropped (planted, seen failing here only: the tokens stay right, the calls do not)."""
    t = tok()
    target, process = _model("ar", 0, scale=30.0)
    _, masked = _model("masked", 1)
    spec = _speculative(Drafter(Oracle(target), masked, t), t, temperature=0.0, draft_len=draft_len,
                        draft_steps=draft_steps)
    prompt = torch.tensor([0, 1, 2, 3, 4])
    want = build_sampler("ar", process, t, temperature=0.0).generate(target, process, length=30, prompt=prompt,
                                                                      batch_size=2)
    got = spec.generate(target, process, length=30, prompt=prompt, batch_size=2)
    assert torch.equal(got.tokens, want.tokens)
    if draft_steps == draft_len:
        assert got.stats["mean_accepted"] == draft_len  # (K + 1 divides 30: no short last round)
        assert got.stats["target_calls"] == 2 * (1 + math.ceil(30 / (draft_len + 1)))
    else:
        assert got.stats["mean_accepted"] < draft_len


def _exact_distribution(model, prompt, length, vocab, banned):
    """Every continuation of ``length`` tokens from ``vocab`` -> its probability under the AR
    model (temperature 1, banned ids removed), by enumeration."""
    seqs = torch.tensor(list(itertools.product(vocab, repeat=length)))
    x = torch.cat((prompt.expand(len(seqs), -1), seqs), 1)
    with torch.no_grad():
        log_p = filter_logits(ban(model(x[:, :-1]), banned))  # position i predicts token i + 1
    P = prompt.shape[0]
    steps = log_p[:, P - 1 :].gather(-1, seqs[..., None]).squeeze(-1).sum(1)
    return {tuple(s.tolist()): float(p) for s, p in zip(seqs, steps.exp())}


def _chi_square(counts, exact, n):
    """Pearson's statistic over cells with an expected count of 5 or more (the rest pooled) and
    the 0.999 quantile of its chi-square distribution (Wilson-Hilferty)."""
    stat, pooled_o, pooled_e, cells = 0.0, 0, 0.0, 0
    for seq, p in exact.items():
        e, o = n * p, counts.get(seq, 0)
        if e >= 5:
            stat += (o - e) ** 2 / e
            cells += 1
        else:
            pooled_o, pooled_e = pooled_o + o, pooled_e + e
    if pooled_e > 0:
        stat += (pooled_o - pooled_e) ** 2 / pooled_e
        cells += 1
    df = cells - 1
    z = 3.09  # one-sided 0.999
    return stat, df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("drafter, draft_steps, confidence", [
    (("masked", 1, 1.0), 1, 0.0), (("masked", 2, 8.0), 2, 0.0), (("block", 3, 8.0), 1, 0.0),
    (("masked", 2, 16.0), 2, 0.7), (("block", 3, 8.0), 1, 0.5)])
def test_sampled_continuations_have_exactly_the_ar_models_distribution(drafter, draft_steps, confidence):
    """With temperature 1, 4000 three-token continuations (drafts of 2: rounds that refuse, that
    correct, that keep everything and add the bonus token) follow the AR model's own distribution
    over all 4^3 continuations of a 4-token vocabulary, computed by enumeration: Pearson's
    chi-square below its 0.999 quantile, for a near-uniform drafter and for sharp ones that
    disagree with the target. Catches: the residual taken as p instead of max(0, p - q), the
    acceptance ratio inverted (q / p), and the ratio read from the target's distribution one
    position off (planted, each seen failing). With --draft-confidence the rounds end their
    drafts early and the distribution is still the AR model's; catches a cut that reads the drawn
    token's own probability instead of the drafter's top one (planted: the drafts it keeps are no
    longer draws from q). Not caught: a drafter filling its chunks right to left (the bias it
    brings is too small for these random drafters to show)."""
    t = tok("abc")  # a, b, c and end-of-text (mask, pad and unknown are never text)
    target, process = _model("ar", 0, scale=6.0, tokenizer=t)
    name, seed, scale = drafter
    dmodel, dprocess = _model(name, seed, scale, tokenizer=t)
    spec = _speculative(Drafter(dmodel, dprocess, t), t, temperature=1.0, draft_len=2, draft_steps=draft_steps,
                        draft_confidence=confidence)
    prompt = torch.tensor([0, 1])
    n, length = 4000, 3
    out = spec.generate(target, process, length=length, prompt=prompt, batch_size=n, gen=torch.Generator().manual_seed(1))
    counts: dict = {}
    for row in out.new_tokens.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    exact = _exact_distribution(target, prompt, length, [0, 1, 2, t.eot_id], list(t.banned_ids))
    assert abs(sum(exact.values()) - 1) < 1e-4
    assert set(counts) <= set(exact)  # never a banned token
    stat, limit = _chi_square(counts, exact, n)
    assert stat < limit, (stat, limit)
    # the test is not blind: the drafter's own (one-round) distribution is far from the target's
    assert 0 < out.stats["mean_accepted"] < 2
    if confidence:  # some rounds end their drafts early (the rounds that draft nothing are plain AR steps)
        assert 0.1 < out.stats["mean_drafted"] < 1.5, out.stats


def test_acceptance_rule_on_a_known_pair():
    """One position, p = (0.5, 0.5, 0), draft 'token 0' from q = (0.9, 0.1, 0): kept with
    probability 0.5/0.9; refused, the correction comes from max(0, p - q) = (0, 0.4, 0), i.e.
    always token 1. Over 20000 draws: P(kept) = 5/9 within 4 standard errors."""
    n = 20000
    p = torch.tensor([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]]).log().expand(n, 2, 3)
    q = torch.tensor([[0.9, 0.1, 0.0]]).log().expand(n, 1, 3)
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    kept = 0
    for k, new in accept(torch.zeros(n, 1, dtype=torch.long), q, p, gens):
        if k == 0:
            assert int(new) == 1
        kept += k
    se = math.sqrt(5 / 9 * 4 / 9 / 20000)
    assert abs(kept / 20000 - 5 / 9) < 4 * se


def test_chunks_go_left_to_right_and_never_cross_a_block():
    assert chunks(5, 6, 2, None) == [(5, 8), (8, 11)]
    assert chunks(5, 7, 3, None) == [(5, 8), (8, 10), (10, 12)]
    assert chunks(5, 6, 1, 4) == [(5, 8), (8, 11)]  # cut at the block boundary 8
    assert chunks(0, 9, 2, 4) == [(0, 4), (4, 5), (5, 8), (8, 9)]
    # a short last round (fewer positions than --draft-steps): one position a chunk, never an
    # empty chunk (one at a block boundary looped forever)
    assert chunks(8, 2, 4, 8) == [(8, 9), (9, 10)]


def test_bad_drafters_are_one_line_errors(tmp_path):
    t = tok()
    ar_model, ar_process = _model("ar", 0)
    with pytest.raises(UsageError, match="needs a drafter: --draft"):
        build_sampler("speculative", ar_process, t)
    with pytest.raises(UsageError, match="must be a masked or block diffusion model"):
        SpeculativeSampler(draft_run=Drafter(ar_model, ar_process, t))
    other = tok("xyz")
    dmodel, dprocess = _model("masked", 1, tokenizer=other)
    with pytest.raises(UsageError, match="another tokenizer"):
        _speculative(Drafter(dmodel, dprocess, other), t)
    short, sprocess = _model("masked", 1, context=8)
    spec = _speculative(Drafter(short, sprocess, t), t)
    with pytest.raises(UsageError, match="exceeds the drafter's context"):
        spec.generate(ar_model, ar_process, length=20)
    with pytest.raises(UsageError, match="cannot exceed --draft-len"):
        _speculative(Drafter(short, sprocess, t), t, draft_len=2, draft_steps=3)
    with pytest.raises(UsageError, match="needs a ar model"):
        build_sampler("speculative", dprocess, t)


def test_a_shared_drafter_is_never_moved_to_another_device():
    """A drafter run given loaded (``Pipeline.draft_with``, a server's ``--draft``) is shared by
    every request: an AR model on another device is refused in one line naming both devices, and
    the drafter stays where it is (the meta device stands in for a GPU here). Catches the old
    ``drafter.model.to(device)`` in ``start``, which moved the shared model under every other
    request (planted: it then fails on meta's missing data, or moves it)."""
    t = tok()
    ar_model, ar_process = _model("ar", 0)
    dmodel, dprocess = _model("masked", 1)
    spec = _speculative(Drafter(dmodel.to("meta"), dprocess, t), t)
    with pytest.raises(UsageError, match="the drafter is on meta and the AR model on cpu: load the drafter on cpu"):
        spec.generate(ar_model, ar_process, prompt=torch.tensor([1, 2]), length=6)
    assert next(dmodel.parameters()).device.type == "meta"


def test_draft_with_a_path_loads_the_drafter_where_the_model_is(cycle_dir):
    """``Pipeline.draft_with(PATH)`` on an AR model on another device (the meta device stands in
    for a GPU) loads the drafter on that device, so generation never meets a drafter on the CPU.
    Catches loading a path on the default device (planted: the sampler's own CPU load, which left
    every GPU pipeline refusing its own drafter)."""
    from markov import tokenizer as cycle_tokenizer

    from textdiffusion import Pipeline
    from textdiffusion.runs import LoadedRun

    t = cycle_tokenizer()
    cfg = Config(model=ModelConfig(n_layer=1, n_head=2, d_model=16, context=24), process=ProcessConfig(name="ar"))
    cfg.model.vocab_size = t.vocab_size
    model, process = build_model(cfg, t)
    pipe = Pipeline(LoadedRun(cycle_dir, cfg, t, model.to("meta"), process, "random"))
    pipe.draft_with(str(cycle_dir), draft_len=4)
    assert next(pipe.drafter.model.parameters()).device.type == "meta"


def test_a_request_cannot_name_a_drafter_to_load():
    """A server's requests may not set --draft (a path the server would load) or a loaded
    drafter: the field is unknown to them (the operator's side)."""
    from textdiffusion.serve.requests import BadRequest, parse

    for field in ("draft", "draft_run"):
        with pytest.raises(BadRequest, match=f"unknown field '{field}'"):
            parse({"prompt": "a", "sampler": "speculative", field: "/etc"}, "completions", context=64, max_steps=64)
    parse({"prompt": "a", "sampler": "speculative", "draft_len": 4}, "completions", context=64, max_steps=64)


def test_rows_of_other_settings_stepped_in_one_batch_keep_their_own_tokens():
    """A server joins the rows of concurrent requests into one batch (``State.join``): rows at
    the same length are drafted and verified together only when their settings agree. Two
    requests of the same prompt, one greedy and one at temperature 1, joined, each give what
    they give alone. Catches a batch key that leaves out the temperature (planted: the sampled
    rows were verified greedily, or the greedy ones sampled) and samplers that each hold a copy of
    the drafter (planted: the registry's dataclasses.asdict deep-copying the options: a copy of
    the drafter's model per request, and no two requests ever batched)."""
    from textdiffusion.sampling.base import resolve_canvas

    t = tok()
    target, process = _model("ar", 0, scale=3.0)  # soft enough that sampling and greedy part at once
    dmodel, dprocess = _model("masked", 3, 3.0)
    drafter = Drafter(dmodel, dprocess, t)
    greedy, sampled = (_speculative(drafter, t, temperature=temp, draft_len=4) for temp in (0.0, 1.0))
    assert greedy.drafter is drafter and sampled.drafter is drafter
    prompt = torch.tensor([0, 1, 2])
    alone = [s.generate(target, process, length=20, prompt=prompt, batch_size=2, gen=torch.Generator().manual_seed(i))
             for i, s in enumerate((greedy, sampled))]
    states = [s.start(target, process, resolve_canvas(target, prompt, 2, 20, None), None, torch.Generator().manual_seed(i))
              for i, s in enumerate((greedy, sampled))]
    states[0].join(states[1])
    while not states[0].finished:
        greedy.step(states[0], target)
    assert torch.equal(states[0].tokens(), torch.cat([a.tokens for a in alone]))
    assert not torch.equal(alone[0].tokens, alone[1].tokens)  # the two settings do differ


def test_the_block_drafters_cache_is_exact():
    """A block drafter keeps the keys/values of the blocks before each round's first draft:
    over rounds that start mid-block, on a block boundary and several blocks on, with chunks
    crossing blocks, its drafts' distributions are those of a drafter that reads the whole prefix
    every call. Catches storing a block that still holds drafts (planted: the store reaching to
    the end of the call: the next round reads refused drafts' keys) and storing the first draft's
    partly known block (planted: keep = n: those keys were computed beside masked positions)."""
    t = tok()
    dmodel, dprocess = _model("block", 4, 3.0)
    spec = _speculative(Drafter(dmodel, dprocess, t), t, temperature=1.0, draft_len=6, draft_steps=3)
    seq = torch.randint(0, 8, (2, 30), generator=torch.Generator().manual_seed(0))
    stores = [RowStore(), RowStore()]
    for n in (3, 5, 8, 9, 15, 16, 22):
        gens = [torch.Generator().manual_seed(n + i) for i in range(2)]
        want = spec.propose(seq[:, :n], 6, gens)
        gens = [torch.Generator().manual_seed(n + i) for i in range(2)]
        got = spec.propose(seq[:, :n], 6, gens, stores)
        assert torch.equal(got[0], want[0]) and got[2] == want[2]
        torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
        assert stores[0].length == (n // 4) * 4  # the finished blocks only
