"""Control: templates with holes anywhere and span edits. Fixed text is never changed by any
sampler; edits never touch text outside their span; on data where each token fixes the next, a
briefly trained model recovers masked spans exactly (far above an untrained one), from the right
context too, and picks the right length for a variable-length hole."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from markov import ALPHABET, tokenizer

from textdiffusion.config import Config, ModelConfig, ProcessConfig, TrainConfig
from textdiffusion.control import Hole, Template, edit, infill, split_marked
from textdiffusion.runs import build_model, load_run
from textdiffusion.sampling import build_sampler
from textdiffusion.sampling.base import HOLE, Canvas
from textdiffusion.training.trainer import train

CONTEXT = 24


def _run(process="masked", time_cond=False):
    cfg = Config(model=ModelConfig(n_layer=2, n_head=2, d_model=32, context=CONTEXT, time_cond=time_cond),
                 process=ProcessConfig(name=process, block_size=4))
    cfg.model.vocab_size = tokenizer().vocab_size
    torch.manual_seed(0)
    model, objective = build_model(cfg, tokenizer())
    return SimpleNamespace(model=model.eval(), process=objective, tokenizer=tokenizer(), cfg=cfg)


def test_template_parsing():
    t = Template.parse("ab[MASK]c[MASK:3]d[MASK:2-5]")
    assert t.parts == ["ab", Hole(1, 1), "c", Hole(3, 3), "d", Hole(2, 5)]
    canvas, spans = t.sized([1, 3, 4]).canvas(tokenizer(), batch=2)
    assert canvas.tokens.shape == (2, 2 + 1 + 1 + 3 + 1 + 4)
    assert spans == [(2, 3), (4, 7), (8, 12)]
    assert (canvas.tokens[:, 2] == HOLE).all() and not canvas.fixed[:, 4:7].any() and canvas.fixed[:, 7].all()
    with pytest.raises(ValueError, match="no hole"):
        Template.parse("no holes here")
    with pytest.raises(ValueError, match="bad hole"):
        Template.parse("a[MASK:5-2]")
    with pytest.raises(ValueError, match="size the variable holes"):
        t.canvas(tokenizer())
    assert split_marked("ab[EDIT]cd[/EDIT]ef") == ("abcdef", 2, 4)
    with pytest.raises(ValueError, match="exactly one span"):
        split_marked("abcdef")


@pytest.mark.parametrize("text", ["a[MASK:x]b", "a[mask:3]b", "a[MASK:", "a [MASK:3-]", "a[Mask:2]", "[MASK ]", "a[Mask]b"])
def test_malformed_holes_are_errors_that_name_them(text):
    """Anything meant as a hole but not written as one is an error naming it (it was kept as
    text, silently, while [MASK:0] was an error)."""
    with pytest.raises(ValueError, match="malformed hole"):
        Template.parse(text)


def test_lower_case_mask_without_a_size_stays_text():
    t = Template.parse("keep = values[mask] + [MASK:2]")
    assert t.parts == ["keep = values[mask] + ", Hole(2, 2)]


def test_bpe_holes_take_over_the_space_before_them():
    from textdiffusion.tokenizers import train_tokenizer

    corpus = ["def add(a, b):\n    return a + b\n", "the cat sat on the mat and the dog sat on the log\n"] * 50
    bpe = train_tokenizer("bpe", corpus, vocab_size=300)
    t = Template.parse("    return [MASK:2] + b")
    assert t.healed(bpe) == [True] and Template.parse("[MASK]x [MASK]y").healed(bpe) == [False, True]
    assert Template.parse("a [MASK]").healed(tokenizer()) == [False]  # char-level: a space is its own token
    canvas, spans = t.canvas(bpe)
    before = bpe.encode("    return").tolist()  # not "    return" + a lone " ": no such token stream in training
    assert canvas.tokens[0, : len(before)].tolist() == before and spans == [(len(before), len(before) + 2)]
    # the fill's leading space is the template's own: fixed text verbatim, no double space
    assert t.assemble([" a"], [True]) == ("    return a + b", ["a"])
    assert t.assemble(["(a)"], [True]) == ("    return (a) + b", ["(a)"])
    assert Template.parse("x [MASK] y").assemble([" z"], [False]) == ("x  z y", [" z"])
    # the AR fill-in-the-middle twin sees the same text: its prefix gives the space to the hole too
    from textdiffusion.control.filling import fim_prompt

    ids, healed = fim_prompt(t, bpe)
    assert healed == [True]
    assert ids == [bpe.eot_id, *before, bpe.pad_id, *bpe.encode(" + b").tolist(), bpe.mask_id]
    ids, healed = fim_prompt(Template.parse("    return[MASK:2]"), bpe)
    assert healed == [False] and ids[1 : 1 + len(before)] == before


TEMPLATE_CASES = [
    ("masked", "ancestral", {}), ("masked", "confidence", {}), ("masked", "margin", {"schedule": "cosine"}),
    ("masked", "remdm", {"eta": 0.3}), ("masked", "semi-ar", {"block_length": 4}),
    ("masked", "threshold", {"block_length": 4, "kv_cache": "prefix"}),
    ("masked", "threshold", {"block_length": 4, "kv_cache": "dual", "threshold": 0.3}),
    ("uniform", "ancestral", {}), ("uniform", "euler", {}), ("sedd-absorb", "ancestral", {}),
    ("sedd-uniform", "tau-leaping", {}), ("gaussian", "ddpm", {}), ("gaussian", "ddim", {}),
]


@pytest.mark.parametrize("process, name, options", TEMPLATE_CASES)
def test_every_sampler_keeps_fixed_text_and_fills_every_hole(process, name, options):
    run = _run(process, time_cond=process == "uniform")
    sampler = build_sampler(name, run.process, run.tokenizer, **options)
    canvas, spans = Template.parse("[MASK:3]abc[MASK]de[MASK:5]fgh").canvas(tokenizer(), batch=3)
    out = sampler.generate(run.model, run.process, steps=6, canvas=canvas, gen=torch.Generator().manual_seed(0))
    assert out.tokens.shape == canvas.tokens.shape
    assert torch.equal(out.tokens[canvas.fixed], canvas.tokens[canvas.fixed])  # fixed text verbatim
    holes = out.tokens[~canvas.fixed]
    assert ((holes >= 0) & (holes <= tokenizer().eot_id)).all()  # real tokens: no mask, pad or hole left
    assert 1 <= out.nfe <= 6
    assert out.generated == 3 * 9


@pytest.mark.parametrize("process, name", [("block", "block"), ("ar", "ar")])
def test_left_to_right_models_refuse_to_infill(process, name):
    run = _run(process)
    sampler = build_sampler(name, run.process, run.tokenizer)
    canvas, _ = Template.parse("ab[MASK:3]cd").canvas(tokenizer())
    with pytest.raises(ValueError, match="only the text to the left"):
        sampler.generate(run.model, run.process, steps=4, canvas=canvas)
    # a template that only continues a prompt is fine
    canvas, _ = Template.parse("ab[MASK:8]").canvas(tokenizer())
    out = sampler.generate(run.model, run.process, steps=8, canvas=canvas)
    assert out.tokens.shape == (1, 10) and out.tokens[0, :2].tolist() == tokenizer().encode("ab").tolist()


@pytest.mark.parametrize("process, sampler", [("masked", None), ("masked", "confidence"), ("uniform", None),
                                              ("sedd-absorb", None), ("gaussian", "ddim")])
@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_edit_never_touches_text_outside_its_span(process, sampler, strength):
    run = _run(process)
    text = "abcdefghabcdefgh"
    res = edit(run, text, 5, 11, strength=strength, num=4, steps=8, sampler=sampler, seed=3)
    for new in res.texts:
        assert len(new) == len(text) and new[:5] == text[:5] and new[11:] == text[11:]
    fixed = res.generation.fixed
    assert torch.equal(res.generation.tokens[fixed], torch.from_numpy(tokenizer().encode(text)).expand(4, -1)[fixed])
    if strength == 1.0 and process == "masked":
        assert any(new[5:11] != text[5:11] for new in res.texts)  # regenerated from scratch: it changes
    marked = edit(run, "abcde[EDIT]fghabc[/EDIT]defgh", strength=strength, num=4, steps=8, sampler=sampler, seed=3)
    assert marked.texts == res.texts  # [EDIT] marks are the same span as 5:11


def test_edit_and_canvas_errors():
    run = _run("masked")
    with pytest.raises(ValueError, match="span"):
        edit(run, "abc", 2, 9)
    with pytest.raises(ValueError, match="strength"):
        edit(run, "abcdef", 1, 3, strength=0.0)
    with pytest.raises(ValueError, match="start time"):
        Canvas(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.bool), t_start=1.5)
    with pytest.raises(ValueError, match="exceeds the model context"):
        infill(run, "a[MASK:40]")


# -- known answer: each token fixes the next (a b c ... h a b ...) -------------------------------


def _train_cycle(tmp_path_factory, name: str, process: str = "masked", steps: int = 600, **data):
    """A small model trained ``steps`` steps on "abcdefghabcdefgh...", where each token fixes the
    next; ``data``: DataConfig fields (fim_rate, infill_rate). Returns (loaded run, TrainResult).
    600 steps: at 250 the diffusion models filled 84-100 % of the known-answer holes exactly over
    three sampling seeds (against a 0.9 threshold: luck); at 600, 97-100 % on both kinds of CPU kernels."""
    tokens = np.arange(40_000) % len(ALPHABET)
    cfg = Config(model=ModelConfig(n_layer=2, n_head=4, d_model=64, context=CONTEXT),
                 process=ProcessConfig(name=process),
                 train=TrainConfig(batch_size=64, max_steps=steps, lr=3e-3, min_lr=3e-4, warmup_steps=20,
                                   eval_every=steps, ckpt_every=steps, log_every=50))
    for key, value in data.items():
        setattr(cfg.data, key, value)
    out = tmp_path_factory.mktemp(name)
    result = train(cfg, out, {"train": tokens[:36_000], "val": tokens[36_000:]}, tokenizer(), progress=False)
    return load_run(out), result


@pytest.fixture(scope="module")
def cycle_run(tmp_path_factory):
    return _train_cycle(tmp_path_factory, "cycle")[0]


def _exact(texts, truth):
    return np.mean([t == truth for t in texts])


@pytest.mark.parametrize("sampler", ["ancestral", "confidence"])
@pytest.mark.parametrize("trained", ["cycle_run", "cycle_infill"])  # plain windows; half infilling windows
def test_infill_recovers_deterministic_spans(request, trained, sampler):
    """A model that learned the chain fills both holes exactly (97-100 % over sampling seeds and CPU
    kernels after 600 steps; the first hole is determined by its right context alone). Catches a
    reverse step that leaves tokens masked (unmasking with half of (alpha_s - alpha_t) /
    (1 - alpha_t): 19 % exact) or draws them from the wrong distribution."""
    truth = "cdefghabcdefghabcdefgh"
    # a hole in the middle, and one at the very start that only the right context determines
    template = "[MASK:4]ghabcd[MASK:6]cdefgh"
    res = infill(request.getfixturevalue(trained), template, num=32, steps=10, sampler=sampler, seed=0)
    trained = _exact(res.texts, truth)
    untrained = _exact(infill(_run("masked"), template, num=32, steps=10, sampler=sampler, seed=0).texts, truth)
    assert trained >= 0.9, res.texts[:4]
    assert untrained <= 0.1


def test_variable_length_hole_picks_the_length_the_text_needs(cycle_run):
    res = infill(cycle_run, "ab[MASK:1-6]ghab", num=4, steps=8, candidates=6, seed=0)
    assert [f[0] for f in res.fills].count("cdef") >= 3, res.fills
    assert {len(c["sizes"]) for c in res.extra["candidates"]} == {1} and len(res.extra["candidates"]) == 6


# -- the AR twin's infilling baseline: fill-in-the-middle training --------------------------------


def test_fim_order_and_sampler():
    from textdiffusion.data import WindowSampler, fim_order

    w = np.arange(1, 9)
    assert fim_order(w, 2, 5, 100, 101, 102).tolist() == [100, 1, 2, 101, 6, 7, 8, 102, 3, 4, 5]
    tokens = np.arange(1000) % 50
    plain = WindowSampler(tokens, 16, 64, seed=0).next()
    fim = WindowSampler(tokens, 16, 64, seed=0, fim=(1.0, 60, 61, 62)).next()
    assert plain.shape == fim.shape == (64, 17)
    assert (fim[:, 0] == 60).all() and ((fim == 61).sum(1) == 1).all() and ((fim == 62).sum(1) == 1).all()
    half = WindowSampler(tokens, 16, 400, seed=0, fim=(0.5, 60, 61, 62)).next()
    assert 0.4 < (half[:, 0] == 60).float().mean().item() < 0.6


# -- infilling windows for diffusion models (data.infill_rate): the conditional ELBO of a span -------


def test_infill_windows_fix_the_context_around_one_span():
    from textdiffusion.data import WindowSampler

    tokens = np.arange(1000) % 50
    plain = WindowSampler(tokens, 16, 64, seed=0).next()
    batch, fixed = WindowSampler(tokens, 16, 64, seed=0, span_rate=1.0).next()
    assert torch.equal(batch, plain) and fixed.shape == (64, 17)  # the same windows, and their context
    assert not fixed[:, 0].any()
    free = (~fixed[:, 1:]).int()
    starts = (free[:, 1:] - free[:, :-1] == 1).sum(1) + free[:, 0]
    assert (starts == 1).all()  # exactly one span per window, at least one token long
    assert 16 / 3 - 2 < free.sum(1).float().mean() < 16 / 3 + 2  # cut like the FIM twin's middle: L/3 on average
    _, half = WindowSampler(tokens, 16, 400, seed=0, span_rate=0.5).next()
    assert 0.4 < half.any(1).float().mean().item() < 0.6  # the other windows are plain (nothing fixed)


def test_infill_windows_score_only_the_span_and_never_noise_the_context():
    from textdiffusion.data import WindowSampler
    from textdiffusion.processes.masked import MaskedProcess

    seen = []

    class Spy(torch.nn.Module):
        def forward(self, xt, t):
            seen.append(xt)
            return torch.zeros(*xt.shape, 60)

    batch, fixed = WindowSampler(np.arange(1000) % 50, 16, 32, seed=0, span_rate=1.0).next()
    out = MaskedProcess(60, mask_id=59).loss(Spy(), batch, torch.Generator().manual_seed(0), fixed)
    context = fixed[:, 1:]
    assert torch.equal(seen[0][context], batch[:, 1:][context])  # the context is given clean
    assert (seen[0][~context] == 59).any() and out.num_tokens == int((~context).sum())


def test_config_checks_infill_rate():
    from textdiffusion.config import ConfigError, load_config

    assert load_config(None, ["data.infill_rate=0.5"]).data.infill_rate == 0.5
    with pytest.raises(ConfigError, match=r"data.infill_rate must be in \[0, 1\]"):
        load_config(None, ["data.infill_rate=1.5"])
    with pytest.raises(ConfigError, match="data.fim_rate"):
        load_config(None, ["process.name=ar", "model.time_cond=false", "data.infill_rate=0.5"])
    with pytest.raises(ConfigError, match="not with data.sft"):
        load_config(None, ["data.sft=true", "data.infill_rate=0.5"])


@pytest.fixture(scope="module")
def cycle_infill(tmp_path_factory):
    run, result = _train_cycle(tmp_path_factory, "cycle-infill", infill_rate=0.5)
    assert run.cfg.data.infill_rate == 0.5 and result.val_loss < 0.5  # it learned the chain
    return run


@pytest.fixture(scope="module")
def cycle_fim(tmp_path_factory):
    return _train_cycle(tmp_path_factory, "cycle-fim", "ar", steps=250, fim_rate=0.5)[0]


def test_ar_fim_twin_fills_the_middle(cycle_fim):
    """The FIM twin is never told the hole's length (Bavarian et al.'s PSM format has no length
    token), so even a correct twin misses when its guess of where the middle ends is off: 81-100 %
    exact over sampling seeds and CPU kernels (and worse, not better, with longer training: it is
    the length guess, not the chain, that varies). Broken FIM formatting fills none: prefix and
    suffix swapped in the prompt or in the training windows, a wrong sentinel, or the middle not
    generated after [mid] give 0 %. So: at least half of 64 fills, a margin of about 7 standard
    errors either way (it was 0.9 of 16, which a correct twin missed on other seeds)."""
    for template, truth in (("ab[MASK:4]ghabc", "abcdefghabc"), ("[MASK:3]defgh", "abcdefgh")):
        res = infill(cycle_fim, template, num=64, seed=0)
        assert _exact(res.texts, truth) >= 0.5, res.texts[:4]
    with pytest.raises(ValueError, match="one hole"):
        infill(cycle_fim, "a[MASK]c[MASK]e")
    continuation = infill(cycle_fim, "abc[MASK:5]", seed=0)  # a plain continuation decodes left to right
    assert continuation.texts[0].startswith("abc") and len(continuation.texts[0]) == 8
