"""Parallel decoding: every sampler's contract, the exactness of the block-diffusion KV cache and of
threshold decoding, the remasking schedules, and the block-diffusion bound."""

import math

import pytest
import torch
from markov import tokenizer

from textdiffusion.config import Config, ModelConfig, ProcessConfig
from textdiffusion.models.transformer import Chunk, RowCache, RowStore
from textdiffusion.processes.block import block_causal_mask
from textdiffusion.runs import build_model
from textdiffusion.sampling import build_sampler
from textdiffusion.sampling.remasking import reveal_count


def _model(process="masked", time_cond=False, block_size=4, context=24):
    cfg = Config(model=ModelConfig(n_layer=2, n_head=2, d_model=32, context=context, time_cond=time_cond),
                 process=ProcessConfig(name=process, block_size=block_size))
    cfg.model.vocab_size = tokenizer().vocab_size
    torch.manual_seed(0)
    model, objective = build_model(cfg, tokenizer())
    return model.eval(), objective


CASES = [
    ("masked", "margin", {}), ("masked", "entropy", {}), ("masked", "random", {}),
    ("masked", "confidence", {"schedule": "cosine"}), ("masked", "remdm", {"eta": 0.2}),
    ("masked", "semi-ar", {"block_length": 4}), ("masked", "semi-ar", {"block_length": 5, "order": "margin"}),
    ("masked", "threshold", {"block_length": 4, "kv_cache": "none"}),
    ("masked", "threshold", {"block_length": 4, "kv_cache": "prefix"}),
    ("masked", "threshold", {"block_length": 4, "kv_cache": "dual", "threshold": 0.5}),
    ("block", "block", {}), ("block", "block", {"order": "confidence"}), ("block", "block", {"kv_cache": "none"}),
    ("uniform", "euler", {}), ("uniform", "tau-leaping", {}),
]


@pytest.mark.parametrize("process, name, options", CASES)
def test_every_sampler_keeps_the_contract(process, name, options):
    model, objective = _model(process, process == "uniform")
    sampler = build_sampler(name, objective, tokenizer(), temperature=1.0, top_k=5, top_p=0.9, **options)
    prompt = torch.tensor([0, 1, 2])
    run = lambda seed: sampler.generate(model, objective, length=12, steps=8, batch_size=3, prompt=prompt,  # noqa: E731
                                        gen=torch.Generator().manual_seed(seed))
    out = run(0)
    assert out.tokens.shape == (3, 15)
    assert (out.tokens[:, :3] == prompt).all()  # prompt kept verbatim
    assert (out.tokens <= tokenizer().eot_id).all()  # valid tokens only, nothing left masked
    assert torch.equal(out.tokens, run(0).tokens)  # same seed, same text
    assert not torch.equal(out.tokens, run(1).tokens)
    assert 1 <= out.nfe <= 8  # never above the step budget
    assert out.tokens_per_second > 0


def test_block_diffusion_kv_cache_is_exact():
    """Decoding with the KV cache of finished blocks gives exactly the tokens of recomputing the
    whole prefix with the block-causal mask at every call, with a prompt that ends mid-block."""
    model, objective = _model("block", block_size=4)
    with torch.no_grad():  # sharp predictions, so any difference in what the network sees changes tokens
        for p in model.parameters():
            p.mul_(4.0)
    for order in ("ancestral", "confidence"):
        tokens = []
        for cache in ("exact", "none"):
            sampler = build_sampler("block", objective, tokenizer(), order=order, kv_cache=cache)
            out = sampler.generate(model, objective, length=17, steps=12, batch_size=4, prompt=torch.tensor([3, 1, 4, 1, 5]),
                                   gen=torch.Generator().manual_seed(7))
            tokens.append(out.tokens)
        assert torch.equal(tokens[0], tokens[1]), order


def _row_call(model, rows: list[tuple[RowStore, Chunk, torch.Tensor]]) -> list[torch.Tensor]:
    """One call: row b runs its tokens as its chunk of its own store (right-padded)."""
    width = max(x.shape[0] for _, _, x in rows)
    batch = torch.stack([torch.nn.functional.pad(x, (0, width - x.shape[0])) for _, _, x in rows])
    out = model(batch, kv_cache=RowCache([r[0] for r in rows], [r[1] for r in rows], width, batch.device))
    return [o[: c.n] for o, (_, c, _) in zip(out, rows)]


def test_row_cache_window_calls_are_exact_while_nothing_changed():
    """Right after a row's refresh pass, its prefix- or dual-window call returns the logits of the
    full pass (the approximation only comes from tokens changing later); rows of other lengths,
    refreshing and windowed in one call, each get their own. Catches a window spliced at the
    wrong columns and padding the other rows can see (each planted and seen failing)."""
    model, _ = _model("masked")
    x = torch.randint(0, 8, (20,), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 8, (14,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full_x, full_y = model(x[None])[0], model(y[None])[0]
        sx, sy = RowStore(), RowStore()
        got = _row_call(model, [(sx, Chunk(0, 20, store=-1), x), (sy, Chunk(0, 14, store=-1), y)])  # both refresh
        assert torch.allclose(got[0], full_x, atol=1e-5) and torch.allclose(got[1], full_y, atol=1e-5)
        assert sx.length == 20 and sy.length == 14
        dual, prefix = _row_call(model, [(sx, Chunk(8, 4, replace=4), x[8:12]), (sy, Chunk(6, 8, replace=8), y[6:])])
        assert torch.allclose(dual, full_x[8:12], atol=1e-5) and torch.allclose(prefix, full_y[6:], atol=1e-5)
        fresh = RowStore()  # a row refreshing beside a windowed one, in the same call
        again, window = _row_call(model, [(fresh, Chunk(0, 14, store=-1), y), (sx, Chunk(12, 4, replace=4), x[12:16])])
        assert torch.allclose(again, full_y, atol=1e-5) and torch.allclose(window, full_x[12:16], atol=1e-5)
        assert sx.length == 20  # windows store nothing


def test_row_cache_block_calls_match_the_full_block_causal_pass():
    """Block diffusion rows at different blocks in one call: each reads its own stored clean
    blocks and gets the logits of its full block-causal pass; the call that starts a block stores
    the finished one. Catches stored keys appended at the wrong length and a chunk pattern
    placed at the wrong columns (each planted and seen failing)."""
    model, _ = _model("block", block_size=4)
    x = torch.randint(0, 8, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(x, None, attn_mask=block_causal_mask(12, 4))
        a, b = RowStore(), RowStore()
        first = _row_call(model, [(a, Chunk(0, 8, store=4, inside=block_causal_mask(8, 4)), x[0, :8]),
                                  (b, Chunk(0, 4, store=0, inside=block_causal_mask(4, 4)), x[1, :4])])
        assert a.length == 4 and b.length == 0
        assert torch.allclose(first[0], full[0, :8], atol=1e-5) and torch.allclose(first[1], full[1, :4], atol=1e-5)
        second = _row_call(model, [(a, Chunk(4, 8, store=4, inside=block_causal_mask(8, 4, offset=4)), x[0, 4:12]),
                                   (b, Chunk(0, 8, store=4, inside=block_causal_mask(8, 4)), x[1, :8])])
        assert a.length == 8 and b.length == 4
        assert torch.allclose(second[0], full[0, 4:12], atol=1e-5) and torch.allclose(second[1], full[1, :8], atol=1e-5)


def test_threshold_above_one_is_one_token_per_step_confidence_decoding():
    model, objective = _model("masked")
    conf = build_sampler("confidence", objective, tokenizer())
    thr = build_sampler("threshold", objective, tokenizer(), threshold=1.5, block_length=16, kv_cache="none")
    a = conf.generate(model, objective, length=16, steps=16, batch_size=3, gen=torch.Generator().manual_seed(1))
    b = thr.generate(model, objective, length=16, steps=16, batch_size=3, gen=torch.Generator().manual_seed(1))
    assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe == 16


def test_threshold_reveals_many_tokens_per_step_when_confident():
    model, objective = _model("masked")
    thr = build_sampler("threshold", objective, tokenizer(), threshold=0.01, block_length=16, kv_cache="dual")
    out = thr.generate(model, objective, length=16, steps=16, batch_size=2, gen=torch.Generator().manual_seed(1))
    assert out.nfe < 16 and (out.tokens != tokenizer().mask_id).all()


def test_remdm_without_remasking_is_ancestral_sampling_and_with_it_remasks():
    model, objective = _model("masked")
    kw = dict(length=16, steps=32, batch_size=2)
    a = build_sampler("ancestral", objective, tokenizer()).generate(model, objective, gen=torch.Generator().manual_seed(2), **kw)
    r = build_sampler("remdm", objective, tokenizer(), eta=0.0).generate(model, objective, gen=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a.tokens, r.tokens)
    remdm = build_sampler("remdm", objective, tokenizer(), eta=0.5)
    out = remdm.generate(model, objective, gen=torch.Generator().manual_seed(2), trace=True, **kw)
    mask = tokenizer().mask_id
    remasked = any(((prev != mask) & (cur == mask)).any() for prev, cur in zip(out.trace[:-1], out.trace[1:]))
    assert remasked and (out.tokens != mask).all()


def test_reveal_schedules():
    start = torch.tensor([64])
    for schedule in ("linear", "cosine"):
        left, counts = start.clone(), []
        for i in range(8):
            k = reveal_count(left, start, i, 8, schedule)
            counts.append(int(k))
            left = left - k
        assert sum(counts) == 64 and int(left) == 0 and min(counts) >= 1
        if schedule == "linear":
            assert counts == [8] * 8
        else:
            assert counts[0] < counts[-1]  # MaskGIT's cosine: few early, many late


@pytest.mark.parametrize("process, name, options", [("masked", "semi-ar", {"block_length": 4}),
                                                     ("masked", "threshold", {"block_length": 4}),
                                                     ("block", "block", {})])
def test_blockwise_decoding_stops_at_end_of_text(process, name, options):
    """Given eot_id, decoding stops after the block in which every row produced end-of-text: here
    the first (end-of-text is made overwhelmingly likely), so 4 of 16 positions and at most 4
    calls. Catches the early stop missing from a sampler (threshold and block had no test; each
    planted and seen failing)."""
    model, objective = _model(process, block_size=4)
    eot = tokenizer().eot_id
    with torch.no_grad():
        model.head.bias = torch.nn.Parameter(torch.zeros(tokenizer().vocab_size))
        model.head.bias[eot] = 50.0
    sampler = build_sampler(name, objective, tokenizer(), eot_id=eot, **options)
    out = sampler.generate(model, objective, length=16, steps=16, batch_size=2, gen=torch.Generator().manual_seed(0))
    assert out.tokens.shape[1] == 4 and out.nfe <= 4 and (out.tokens == eot).all()


def _sharpened(process):
    """A model whose predictions are far from uniform and depend on the context (weights x4), so
    any difference in what the network reads changes the tokens drawn."""
    model, objective = _model(process)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
        top = model(torch.randint(0, 8, (4, 12), generator=torch.Generator().manual_seed(9))).softmax(-1).amax(-1)
    assert float(top.mean()) > 3 / tokenizer().vocab_size  # the premise: far from uniform (1 / V)
    return model, objective


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_threshold_cache_is_exact_when_each_block_decodes_in_one_step(cache):
    """With one step per block every call is a block's first, the full pass that (re)records the
    cache, so prefix- and dual-cached decoding read exactly what no cache reads: the same tokens
    under the same seed. Catches a cache recorded once per sequence instead of once per block
    (later blocks then read the first block's stale keys), planted and seen failing."""
    model, objective = _sharpened("masked")
    tokens = {}
    for kv in ("none", cache):
        sampler = build_sampler("threshold", objective, tokenizer(), block_length=4, kv_cache=kv)
        out = sampler.generate(model, objective, length=16, steps=4, batch_size=3, prompt=torch.tensor([3, 1, 4]),
                               gen=torch.Generator().manual_seed(4))
        assert out.nfe == 4
        tokens[kv] = out.tokens
    assert torch.equal(tokens["none"], tokens[cache])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_ar_tokens_with_kv_cache_equal_full_recompute(temperature):
    """The AR sampler (prefill, then one cached token per call) draws exactly the tokens of
    recomputing the whole sequence for every token with the same draws, on a model whose
    predictions depend on the context. Catches RoPE positions restarting at 0 for cached tokens
    and a prefill of only the last prompt token (each planted and seen failing)."""
    from textdiffusion.sampling.filters import ban, filter_logits, sample_categorical

    model, objective = _sharpened("ar")
    sampler = build_sampler("ar", objective, tokenizer(), temperature=temperature)
    prompt = torch.tensor([3, 1, 4, 1])
    gens = lambda: [torch.Generator().manual_seed(s) for s in (5, 6, 7)]  # noqa: E731  (one per row)
    out = sampler.generate(model, objective, length=14, batch_size=3, prompt=prompt, gen=gens())
    rows = []
    with torch.no_grad():
        for g in gens():
            x = prompt[None]
            for _ in range(14):
                logits = ban(model(x)[:, -1], sampler.banned_ids)
                x = torch.cat([x, sample_categorical(filter_logits(logits, temperature), g)[:, None]], 1)
            rows.append(x[0])
    assert torch.equal(out.tokens, torch.stack(rows))


def test_block_size_one_bound_is_the_block_causal_nll():
    """With blocks of one token the block-diffusion bound is exactly the AR NLL of the network
    reading [mask at i; clean tokens before i], in expectation over t."""
    model, objective = _model("block", block_size=1, context=16)
    batch = torch.randint(0, 8, (8, 17), generator=torch.Generator().manual_seed(0))
    x0 = batch[:, 1:]
    all_masked = torch.full_like(x0, objective.mask_id)
    exact = objective._masked_nll(model, all_masked, x0).sum(1)  # (B,) every single-token block masked
    est = objective.nelbo(model, batch, torch.Generator().manual_seed(1), num_samples=400).double()
    mean, se = est.mean(0), est.std(0) / math.sqrt(est.shape[0])
    assert (((mean - exact.double()).abs()) < 4 * se + 1e-3).all(), (mean, exact, se)


def test_block_training_mask_hides_the_current_and_later_clean_blocks():
    """The prediction for block i reads x_t block i and x0 blocks before i, never x0 block i or later."""
    model, objective = _model("block", block_size=4, context=12)
    x0 = torch.randint(0, 8, (1, 12), generator=torch.Generator().manual_seed(0))
    xt = torch.full_like(x0, objective.mask_id)
    L = 12
    pos = torch.arange(L)
    run = lambda clean: model(torch.cat((xt, clean), 1), None, positions=torch.cat((pos, pos)),  # noqa: E731
                              attn_mask=objective.training_mask(L, x0.device))[:, :L]
    base = run(x0)
    changed = x0.clone()
    changed[0, 4:8] = (changed[0, 4:8] + 1) % 8  # alter the clean copy of block 1
    out = run(changed)
    assert torch.allclose(out[:, :8], base[:, :8], atol=1e-6)  # blocks 0 and 1 cannot see it
    assert not torch.allclose(out[:, 8:], base[:, 8:], atol=1e-4)  # block 2 reads it
