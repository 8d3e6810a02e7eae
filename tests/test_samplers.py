import pytest
import torch
from markov import tokenizer

from textdiffusion.config import Config, ModelConfig, ProcessConfig
from textdiffusion.models.transformer import KVCache
from textdiffusion.runs import build_model
from textdiffusion.sampling import build_sampler
from textdiffusion.sampling.filters import filter_logits


def _model(process="masked", time_cond=False):
    cfg = Config(model=ModelConfig(n_layer=2, n_head=2, d_model=32, context=24, time_cond=time_cond),
                 process=ProcessConfig(name=process))
    cfg.model.vocab_size = tokenizer().vocab_size
    torch.manual_seed(0)
    model, objective = build_model(cfg, tokenizer())
    return model.eval(), objective


@pytest.mark.parametrize("process, name, time_cond", [
    ("masked", "ancestral", False), ("masked", "ancestral", True), ("masked", "confidence", False),
    ("masked", "confidence", True), ("uniform", "ancestral", True), ("sedd-absorb", "ancestral", True),
    ("sedd-uniform", "ancestral", True), ("sedd-absorb", "euler", True), ("sedd-uniform", "euler", True),
    ("gaussian", "ddpm", True), ("gaussian", "ddim", True), ("ar", "ar", False)])
def test_sampler_contract(process, name, time_cond):
    model, objective = _model(process, time_cond)
    sampler = build_sampler(name, objective, tokenizer(), temperature=1.0, top_k=5, top_p=0.9)
    prompt = torch.tensor([0, 1, 2])
    run = lambda seed, steps=8: sampler.generate(model, objective, length=12, steps=steps, batch_size=3,  # noqa: E731
                                                 prompt=prompt, gen=torch.Generator().manual_seed(seed))
    out = run(0)
    assert out.tokens.shape == (3, 15)
    assert (out.tokens[:, :3] == prompt).all()  # prompt kept verbatim
    assert (out.tokens <= tokenizer().eot_id).all()  # valid tokens only: nothing left masked
    assert torch.equal(out.tokens, run(0).tokens)  # same seed, same text
    assert not torch.equal(out.tokens, run(1).tokens)
    if name != "ar":
        assert out.nfe <= 8  # never above the step budget
    else:
        assert out.nfe == 12  # one call per token


FAMILIES = [("masked", "ancestral", {}), ("masked", "remdm", {}), ("masked", "confidence", {}),
            ("masked", "semi-ar", {"block_length": 4}), ("masked", "threshold", {"block_length": 4}),
            ("sedd-absorb", "euler", {}), ("uniform", "ancestral", {}), ("gaussian", "ddpm", {}), ("ar", "ar", {})]


@pytest.mark.parametrize("process, name, options", FAMILIES, ids=[f"{p}-{n}" for p, n, _ in FAMILIES])
def test_a_sampler_is_its_options_fixed_when_it_is_built(process, name, options):
    """A sampler is one row's options: once built, none can be set (an AttributeError that says to
    build another), so a sampler shared by a server's requests carries no option and no call's
    state from one into another; and every family generates with that in force (a ``start`` or
    ``step`` keeping a call's state on the sampler would raise).
    Catches: options that can be set after building (planted: ``Sampler.__setattr__`` removed) and
    a call's state kept on the sampler (planted: ``self.grid = grid`` in ``AncestralSampler.start``);
    each seen failing."""
    model, objective = _model(process, time_cond=process not in ("masked", "ar"))
    sampler = build_sampler(name, objective, tokenizer(), **options)
    out = sampler.generate(model, objective, length=8, steps=4, prompt=torch.tensor([0, 1]),
                           gen=torch.Generator().manual_seed(0))
    assert out.tokens.shape == (1, 10)
    with pytest.raises(AttributeError, match="build another sampler"):
        sampler.temperature = 0.5
    assert sampler.temperature == 1.0


def test_ancestral_cache_skips_calls_when_nothing_changes():
    model, objective = _model()
    sampler = build_sampler("ancestral", objective, tokenizer())
    out = sampler.generate(model, objective, length=8, steps=256, gen=torch.Generator().manual_seed(0))
    assert out.nfe <= 8  # at most one call per step in which a token changed
    uncached = build_sampler("ancestral", objective, tokenizer(), cache=False)
    assert uncached.generate(model, objective, length=8, steps=256, gen=torch.Generator().manual_seed(0)).nfe > 100


def test_cache_does_not_change_the_samples():
    """Reusing p(x0|x_t) when x_t did not change is exact: same seed, same tokens."""
    model, objective = _model()
    a = build_sampler("ancestral", objective, tokenizer(), cache=True)
    b = build_sampler("ancestral", objective, tokenizer(), cache=False)
    kw = dict(length=16, steps=64, batch_size=2)
    ta = a.generate(model, objective, gen=torch.Generator().manual_seed(3), **kw).tokens
    tb = b.generate(model, objective, gen=torch.Generator().manual_seed(3), **kw).tokens
    assert torch.equal(ta, tb)


@pytest.mark.parametrize("name", ["ancestral", "remdm"])
def test_top_k_top_p_on_the_drawn_rows_only_give_the_same_samples(name):
    """With a masked model, top-k/top-p are applied only where a token is drawn: the same draws
    as filtering every position's distribution first (the argmax elsewhere is unchanged)."""
    model, objective = _model()
    kw = dict(length=16, steps=64, batch_size=3, prompt=torch.tensor([0, 1, 2]))  # steps > tokens: cached steps too
    deferred = build_sampler(name, objective, tokenizer(), temperature=0.9, top_k=6, top_p=0.7)
    full = build_sampler(name, objective, tokenizer(), temperature=0.9, top_k=6, top_p=0.7)
    object.__setattr__(full, "_row_filter", lambda process: None)  # the whole-tensor filter (past the freeze)
    assert deferred._row_filter(objective) is not None
    a = deferred.generate(model, objective, gen=torch.Generator().manual_seed(5), trace=True, **kw)
    b = full.generate(model, objective, gen=torch.Generator().manual_seed(5), trace=True, **kw)
    assert torch.equal(a.tokens, b.tokens) and (a.tokens[:, :3] == torch.tensor([0, 1, 2])).all()
    if name == "ancestral":
        assert a.nfe < 64  # some steps reused the cached prediction, filtered again where drawn
    assert len(a.trace) == len(b.trace) and all(torch.equal(x, y) for x, y in zip(a.trace, b.trace))
    loose = build_sampler(name, objective, tokenizer(), temperature=0.9)
    assert not torch.equal(a.tokens, loose.generate(model, objective, gen=torch.Generator().manual_seed(5), **kw).tokens)


def test_kv_cache_decoding_matches_full_recompute():
    model, _ = _model("ar")
    x = torch.randint(0, 8, (2, 20))
    full = model(x)
    cache = KVCache()
    # prefill, then a multi-token chunk on top of a filled cache, then one token at a time
    pieces = [model(x[:, :5], kv_cache=cache), model(x[:, 5:9], kv_cache=cache)]
    pieces += [model(x[:, i : i + 1], kv_cache=cache) for i in range(9, 20)]
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-5)
    assert cache.length == 20


def test_confidence_needs_a_masked_model():
    model, objective = _model("uniform", True)
    with pytest.raises(ValueError, match="masked"):
        build_sampler("confidence", objective, tokenizer())


def test_samplers_refuse_the_wrong_kind_of_process():
    with pytest.raises(ValueError, match="needs a gaussian model"):
        build_sampler("ddim", _model("masked")[1], tokenizer())
    with pytest.raises(ValueError, match="default sampler is ddpm"):
        build_sampler("ancestral", _model("gaussian", True)[1], tokenizer())
    assert build_sampler(None, _model("gaussian", True)[1], tokenizer()).name == "ddpm"


def test_too_long_prompt_is_an_error():
    model, objective = _model()
    sampler = build_sampler("confidence", objective, tokenizer())
    with pytest.raises(ValueError, match="exceeds the model context"):
        sampler.generate(model, objective, length=20, steps=4, prompt=torch.zeros(10, dtype=torch.long))


def test_filters():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    p = filter_logits(logits, top_p=0.7).exp()[0]
    assert p[0] > 0 and p[1] > 0 and p[2] == 0  # 0.64 < 0.7 needs the second token
    greedy = filter_logits(logits, temperature=0).exp()[0]
    assert greedy.tolist() == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        build_sampler("ancestral", _model()[1], tokenizer(), top_p=0)
    with pytest.raises(ValueError, match="unknown sampler"):
        build_sampler("nope", _model()[1], tokenizer())


@pytest.mark.parametrize("process, name", [("masked", "ancestral"), ("masked", "confidence"), ("uniform", "ancestral"),
                                           ("gaussian", "ddpm"), ("ar", "ar")])
def test_trace_and_step_hook(process, name):
    """Every step reaches the on_step hook and the trace; the last state is the result."""
    model, objective = _model(process, process in ("uniform", "gaussian"))
    sampler = build_sampler(name, objective, tokenizer())
    seen = []
    out = sampler.generate(model, objective, length=10, steps=10, batch_size=2, trace=True,
                           gen=torch.Generator().manual_seed(0), on_step=lambda i, step: seen.append(i))
    assert seen == list(range(len(out.trace))) and len(seen) >= 1
    assert torch.equal(out.trace[-1], out.tokens)


def test_readme_sampler_table_is_the_registry():
    """The README's sampler table is generated from the registry; a sampler added, renamed or
    given a new option without regenerating it fails here."""
    from pathlib import Path

    from textdiffusion.sampling.registry import markdown_table

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("<!-- samplers: generated from src/textdiffusion/sampling/registry.py -->\n")
    table = readme[start:].split("\n", 1)[1].split("\n<!-- /samplers -->")[0]
    assert table == markdown_table()


def test_registry_checks_options_naming_the_flag_without_torch():
    """Options are typed and checked by the registry with the flag in the message on the command
    line (the option's own name elsewhere), and listing
    samplers or checking a card imports no torch (a fresh interpreter)."""
    import subprocess
    import sys

    from textdiffusion.sampling.registry import make_options, options_named

    assert make_options("threshold", {"threshold": 0.5, "kv_cache": None}).kv_cache == "dual"
    with options_named("name"), pytest.raises(ValueError, match="^kv_cache must be none"):  # the Python API's name
        make_options("threshold", {"kv_cache": "sideways"})
    for name, given, message in [("threshold", {"kv_cache": "sideways"}, "--kv-cache must be none, prefix or dual"),
                                 ("remdm", {"eta": 2.0}, "--eta must be <= 1"),
                                 ("semi-ar", {"block_length": 0}, "--block-length must be >= 1"),
                                 ("semi-ar", {"order": "sideways"}, "--order must be confidence, margin, entropy or random"),
                                 ("ancestral", {"top_p": 0.0}, "--top-p must be > 0"),
                                 ("ancestral", {"threshold": 0.5}, "takes no threshold option"),
                                 ("nope", {}, "unknown sampler")]:
        with options_named("flag"), pytest.raises(ValueError, match=message):  # as the command line names them
            make_options(name, given)
    code = ("import sys; from textdiffusion.sampling import SAMPLERS; from textdiffusion.sampling.cards import "
            "check_settings; check_settings({'sampler': 'threshold', 'threshold': 0.8}, 'card'); "
            "print(len(SAMPLERS), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["17", "False"], out.stderr


def test_every_process_answers_the_protocol():
    """Every process a run can have satisfies processes.base.Process (the AR twin: Objective, it
    corrupts nothing), so samplers read its capabilities instead of probing for them; and every
    process has a default sampler that fits it. Catches a process missing a capability
    attribute (mask_id = None on the uniform process removed: planted and seen failing)."""
    from textdiffusion.config import PROCESSES
    from textdiffusion.processes.base import Objective, Process
    from textdiffusion.sampling.registry import DEFAULTS, SAMPLERS

    for name in PROCESSES:
        _, process = _model(name, name in ("uniform", "gaussian"))
        assert isinstance(process, Objective) and isinstance(process, Process) == (name != "ar"), name
        assert (process.mask_id is not None) == (name in ("masked", "block", "sedd-absorb"))
        assert (process.block_size is not None) == (name == "block")
        assert name in SAMPLERS[DEFAULTS[name]].fits
