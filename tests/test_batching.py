"""The batching invariant the server relies on (sampling/base.py): under the same per-row
generator (and at temperature 0 with no generator at all) a row gives the same tokens alone,
batched with other rows, batched with rows of other lengths (right-padded: padding must be
invisible to attention) that joined steps later and run other options of the same family, and
the first row of ``num=3`` is the text of ``num=1``.

Models are random, float64 and sharpened (logits far from uniform), so a row's draws hang on its
own inputs: a batch whose rows leaked into each other, or any float difference of batch
composition amplified by a draw, would show. Float64 keeps batch-size-dependent rounding (1e-16)
away from the draws, as in the golden test.
"""

from __future__ import annotations

import pytest
import torch
from golden.cases import float64 as _float64
from markov import tokenizer

from textdiffusion.config import Config, ModelConfig, ProcessConfig
from textdiffusion.runs import build_model
from textdiffusion.sampling import build_sampler
from textdiffusion.sampling.base import Canvas, prompt_canvas


def _model(process: str, time_cond: bool = False):
    cfg = Config(model=ModelConfig(n_layer=2, n_head=2, d_model=32, context=32, time_cond=time_cond),
                 process=ProcessConfig(name=process, block_size=4))
    cfg.model.vocab_size = tokenizer().vocab_size
    torch.manual_seed(0)
    with _float64():
        model, proc = build_model(cfg, tokenizer())
    with torch.no_grad():  # sharpen: logits far from uniform, so each row's choices hang on its inputs
        head = model.net.head if hasattr(model, "net") else model.head
        head.weight.mul_(6.0)
        for name, p in model.named_parameters():  # adaLN starts at zero (blocks = identity): wake it up,
            if ".ada." in name:                    # so the time and the context matter
                p.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(1))
    return model.eval(), proc


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _canvas(prompt: list[int], free: int) -> Canvas:
    return prompt_canvas(torch.tensor(prompt) if prompt else None, 1, free, "cpu")


# (process, sampler, options, time-conditioned, may rows join a batch in flight)
FAMILIES = [
    ("masked", "ancestral", {}, True, True),
    ("masked", "remdm", {"eta": 0.2}, False, True),
    ("masked", "confidence", {"schedule": "cosine"}, True, True),
    ("masked", "semi-ar", {"block_length": 4}, False, True),
    ("masked", "threshold", {"block_length": 4, "kv_cache": "none", "threshold": 0.6}, False, True),
    ("masked", "threshold", {"block_length": 4, "kv_cache": "dual", "threshold": 0.2}, False, True),
    ("masked", "threshold", {"block_length": 4, "kv_cache": "prefix", "threshold": 0.2}, False, True),
    ("uniform", "euler", {}, True, True),
    ("sedd-absorb", "ancestral", {}, True, True),
    ("gaussian", "ddpm", {}, True, True),
    ("gaussian", "ddim", {}, True, True),
    ("block", "block", {"kv_cache": "none"}, False, True),
    ("block", "block", {"kv_cache": "exact", "order": "confidence"}, False, True),
    ("ar", "ar", {}, False, True),
]
IDS = [f"{p}-{s}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for p, s, o, _, _ in FAMILIES]
PROMPT, FREE, STEPS = [0, 1, 2], 12, 12
# (threshold 0.2 on these models: rows of one batch finish a block at different steps, so a step
# runs a subset of the rows against the shared cache)


def _dists(out, b: int) -> dict[int, torch.Tensor]:
    """Row b's step distribution, position -> (V,) log-probabilities, from a step's record."""
    if out.log_probs is None:
        return {}
    lp, o = out.log_probs[b], out.offset
    return {o + w: lp[w] for w in range(lp.shape[0]) if bool(lp[w].ne(0).any())}


class _Steps(list):
    """An on_step hook keeping each step's distributions of row ``b``."""

    def __init__(self, b: int = 0):
        super().__init__()
        self.b = b

    def __call__(self, i, out):
        self.append(_dists(out, self.b))


def _same_dists(got: list[dict], want: list[dict], what: str) -> None:
    assert len(got) == len(want), f"{what}: {len(got)} steps against {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.keys() == w.keys(), f"{what}, step {i}: other positions"
        for pos in w:
            finite = torch.isfinite(w[pos])
            assert torch.equal(finite, torch.isfinite(g[pos])) and torch.allclose(g[pos][finite], w[pos][finite], atol=1e-9), \
                f"{what}, step {i}, position {pos}: another distribution"


@pytest.mark.parametrize("process, name, options, time_cond, joins", FAMILIES, ids=IDS)
def test_a_row_is_the_same_alone_batched_and_joined(process, name, options, time_cond, joins):
    """Alone = in a batch of three under the same per-row generators, tokens and every step's
    distribution (and the first of num=3 is num=1's row when the batch's generators come from one
    seed); for the families that take rows in flight also = joined two steps late into a batch of
    a longer row (padding; for AR a shorter prompt, so the cache is left-padded) running another
    option. Catches rows sharing one generator (every
    batched row differs), padding that attention can see, one row's time used for the whole
    batch (time-conditioned rows at other steps get another distribution), and a shared cache
    read in the wrong row order when only some rows take a step; each planted and seen failing."""
    model, proc = _model(process, time_cond)
    smp = build_sampler(name, proc, tokenizer(), **options)
    seeds = [11, 12, 13]
    with _float64(), torch.no_grad():
        alone, alone_steps = [], []
        for s in seeds:
            hook = _Steps()
            alone.append(smp.generate(model, proc, canvas=_canvas(PROMPT, FREE), steps=STEPS, gen=_gens([s]),
                                      on_step=hook).tokens[0])
            alone_steps.append(hook)
        hooks = [_Steps(b) for b in range(3)]
        batched = smp.generate(model, proc, length=FREE, steps=STEPS, batch_size=3, prompt=torch.tensor(PROMPT),
                               gen=_gens(seeds), on_step=lambda i, out: [h(i, out) for h in hooks]).tokens
        for b in range(3):
            assert torch.equal(batched[b], alone[b]), f"row {b}: batched differs from alone"
            _same_dists([d for d in hooks[b] if d][: len(alone_steps[b])], alone_steps[b], f"batched row {b}")
        one = smp.generate(model, proc, length=FREE, steps=STEPS, prompt=torch.tensor(PROMPT),
                           gen=torch.Generator().manual_seed(4)).tokens
        three = smp.generate(model, proc, length=FREE, steps=STEPS, batch_size=3, prompt=torch.tensor(PROMPT),
                             gen=torch.Generator().manual_seed(4)).tokens
        assert torch.equal(three[0], one[0]) and not torch.equal(three[1], three[2])
        if not joins:
            return
        other = build_sampler(name, proc, tokenizer(), **{**options, "temperature": 0.7})
        long_canvas, long_steps = _canvas([3], FREE + 6), STEPS + 2
        long_hook = _Steps()
        long_run = other.generate(model, proc, canvas=long_canvas, steps=long_steps, gen=_gens([21]), on_step=long_hook)
        long_alone = long_run.tokens[0]
        first_nfe = smp.generate(model, proc, canvas=_canvas(PROMPT, FREE), steps=STEPS, gen=_gens([seeds[0]])).nfe
        state = smp.start(model, proc, _canvas(PROMPT, FREE), STEPS, _gens([seeds[0]]))
        state.report = True
        late = other.start(model, proc, long_canvas, long_steps, _gens([21]))
        first, second = [], []
        for _ in range(2):
            first.append(_dists(smp.step(state, model), 0))
        state.join(late)
        while not state.finished:
            out = smp.step(state, model)
            first.append(_dists(out, 0))
            second.append(_dists(out, 1))
        assert torch.equal(state.rows[0].tokens, alone[0]), "the row that started first differs"
        assert torch.equal(state.rows[1].tokens, long_alone), "the longer row that joined late differs"
        _same_dists([d for d in first if d], [d for d in alone_steps[0] if d], "the first row")
        _same_dists([d for d in second if d], [d for d in long_hook if d], "the row that joined")
        assert state.calls < first_nfe + long_run.nfe  # the steps they took together ran as one call each


@pytest.mark.parametrize("process, name, options, time_cond, joins", FAMILIES, ids=IDS)
def test_finished_rows_leave_the_batch_and_the_others_go_on(process, name, options, time_cond, joins):
    """``State.release()`` after every step (what a server does: answer a request the moment its
    rows are done) takes a finished row out while a longer one that joined later goes on: both
    give the tokens they give alone, and the batch holds only unfinished rows. Catches a release
    that drops or reorders a running row's cache entries or data (planted: releasing every row
    but the last after each step changes the tokens or fails)."""
    model, proc = _model(process, time_cond)
    smp = build_sampler(name, proc, tokenizer(), **options)
    long_canvas, long_steps = _canvas([3], FREE + 6), STEPS + 6
    with _float64(), torch.no_grad():
        short_alone = smp.generate(model, proc, canvas=_canvas(PROMPT, FREE), steps=STEPS, gen=_gens([11])).tokens[0]
        long_alone = smp.generate(model, proc, canvas=long_canvas, steps=long_steps, gen=_gens([21])).tokens[0]
        state = smp.start(model, proc, _canvas(PROMPT, FREE), STEPS, _gens([11]))
        short = state.rows[0]
        smp.step(state, model)
        late = smp.start(model, proc, long_canvas, long_steps, _gens([21]))
        long = late.rows[0]
        state.join(late)
        released = []
        while not state.finished:
            smp.step(state, model)
            released += state.release()
            assert all(not r.done for r in state.rows)
        released += state.release()
    assert released[0] is short and released[-1] is long and not state.rows
    assert torch.equal(short.tokens[: short.length if short.end is None else short.end], short_alone[: short.end])
    assert torch.equal(long.tokens[: long.end], long_alone[: long.end])


@pytest.mark.parametrize("process, name, options", [
    ("masked", "confidence", {}), ("masked", "semi-ar", {"block_length": 4}),
    ("masked", "threshold", {"block_length": 4, "kv_cache": "dual"}),
    ("block", "block", {"order": "confidence"}), ("ar", "ar", {})])
def test_greedy_rows_need_no_generator(process, name, options):
    """At temperature 0 the deterministic families give a row the same tokens alone and in a
    batch of different prompts with no generator at all. Catches a batch whose rows read each
    other (a row's tokens would change with its neighbours)."""
    model, proc = _model(process)
    smp = build_sampler(name, proc, tokenizer(), temperature=0.0, **options)
    prompts = torch.tensor([[0, 1, 2], [2, 2, 0], [1, 0, 1]])
    with _float64(), torch.no_grad():
        batched = smp.generate(model, proc, length=FREE, steps=STEPS, batch_size=3, prompt=prompts).tokens
        for b in range(3):
            alone = smp.generate(model, proc, length=FREE, steps=STEPS, prompt=prompts[b]).tokens[0]
            assert torch.equal(batched[b], alone), f"row {b}"
        assert len({tuple(r) for r in batched.tolist()}) > 1  # the prompts matter: rows differ


@pytest.mark.parametrize("process, name, options", [
    ("masked", "semi-ar", {"block_length": 4}), ("masked", "threshold", {"block_length": 4, "kv_cache": "dual"}),
    ("block", "block", {})])
def test_rows_that_stop_at_eot_leave_the_batch(process, name, options):
    """With ``eot_id`` a row that has produced end-of-text at the end of a block is done while the
    others go on: each row equals the row decoded alone (the shared cache drops the finished
    rows' entries: keeping them, or reading the cache in the old row order, changes the others).
    The end-of-text id is chosen as one that a row draws in its first block and another row does
    not, so the rows stop at different blocks."""
    model, proc = _model(process)
    tok = tokenizer()
    prompts, seeds = [[0, 1, 2], [2, 2, 0], [1, 0, 1]], [5, 6, 7]
    canvas = Canvas(torch.tensor([p + [-1] * FREE for p in prompts]),
                    torch.tensor([[True] * 3 + [False] * FREE] * 3))

    def run(canvas, seeds, eot_id):
        smp = build_sampler(name, proc, tok, eot_id=eot_id, **options)
        state = smp.start(model, proc, canvas, STEPS, _gens(seeds))
        while not state.finished:
            smp.step(state, model)
        return state

    with _float64(), torch.no_grad():
        free = run(canvas, seeds, None)
        lo, hi = free.rows[0].data["bounds"][0]
        first = [set(r.tokens[lo:hi].tolist()) for r in free.rows]
        stop, go = next((i, j) for i in range(3) for j in range(3) if first[i] - first[j])
        eot_id = min(first[stop] - first[go])  # row ``stop`` ends after its first block, row ``go`` does not
        state = run(canvas, seeds, eot_id)
        assert state.rows[stop].end == hi and state.rows[go].end != hi
        for b in range(3):
            alone = run(Canvas(canvas.tokens[b : b + 1], canvas.fixed[b : b + 1]), [seeds[b]], eot_id)
            assert torch.equal(state.rows[b].tokens, alone.rows[0].tokens), f"row {b}"
            assert state.rows[b].end == alone.rows[0].end


def test_join_refuses_another_family():
    """Rows batch with rows of their own family only (one step function serves them all)."""
    model, proc = _model("masked")
    with torch.no_grad():
        a = build_sampler("ancestral", proc, tokenizer()).start(model, proc, _canvas(PROMPT, 4), 4)
        c = build_sampler("confidence", proc, tokenizer()).start(model, proc, _canvas(PROMPT, 4), 4)
    with pytest.raises(ValueError, match="cannot join"):
        a.join(c)


# each family's first entry in FAMILIES, a second sampler of its family with other options (row B: another
# temperature, top-k, top-p and transition or cache) and a third (C) that steps the batch without owning a row
_OTHER = dict(temperature=0.8, top_k=6, top_p=0.9)
_DECOY = dict(temperature=1.7, top_k=2, top_p=0.5)
OWN_OPTIONS = [
    ("masked", ("ancestral", {}), ("remdm", {"eta": 0.3, **_OTHER}), ("remdm", {"eta": 0.9, **_DECOY}), True),
    ("masked", ("remdm", {"eta": 0.2}), ("ancestral", _OTHER), ("ancestral", {"cache": False, **_DECOY}), False),
    ("masked", ("confidence", {"schedule": "cosine"}), ("margin", {"schedule": "linear", **_OTHER}),
     ("entropy", {"schedule": "dream", **_DECOY}), True),
    ("masked", ("semi-ar", {"block_length": 4}), ("semi-ar", {"block_length": 4, "order": "margin", **_OTHER}),
     ("semi-ar", {"block_length": 4, "order": "random", **_DECOY}), False),
    ("masked", ("threshold", {"block_length": 4, "kv_cache": "none", "threshold": 0.6}),
     ("threshold", {"block_length": 4, "kv_cache": "dual", "threshold": 0.2, **_OTHER}),
     ("threshold", {"block_length": 4, "kv_cache": "prefix", "threshold": 0.95, **_DECOY}), False),
    ("masked", ("threshold", {"block_length": 4, "kv_cache": "dual", "threshold": 0.2}),
     ("threshold", {"block_length": 4, "kv_cache": "none", "threshold": 0.5, **_OTHER}),
     ("threshold", {"block_length": 4, "kv_cache": "prefix", "threshold": 0.95, **_DECOY}), False),
    ("uniform", ("euler", {}), ("ancestral", _OTHER), ("tau-leaping", _DECOY), True),
    ("sedd-absorb", ("ancestral", {}), ("euler", _OTHER), ("ancestral", _DECOY), True),
    ("gaussian", ("ddpm", {}), ("ddim", _OTHER), ("ddpm", _DECOY), True),
    ("block", ("block", {"kv_cache": "none"}), ("block", {"kv_cache": "exact", "order": "confidence",
                                                          "threshold": 0.5, **_OTHER}),
     ("block", {"kv_cache": "none", "order": "ancestral", **_DECOY}), False),
    ("ar", ("ar", {}), ("ar", _OTHER), ("ar", _DECOY), False),
]


@pytest.mark.parametrize("process, a, b, c, time_cond", OWN_OPTIONS,
                         ids=[f"{p}-{a[0]}-{'-'.join(f'{k}={v}' for k, v in a[1].items())}" for p, a, *_ in OWN_OPTIONS])
def test_each_row_keeps_its_own_options_whoever_steps_it(process, a, b, c, time_cond):
    """Row A and a longer row B that joins two steps late, of one family but other options
    (temperature, top-k, top-p, and the transition, order, schedule or cache), are stepped by a
    third sampler C of the family that owns neither row and has options of its own: each row
    gives exactly the tokens it gives alone (the server steps a batch with one sampler object;
    each row's options must come from the row). Catches a family's ``step`` reading ``self`` for
    an option that is the row's (planted: the ancestral family's filter from ``self``; the
    threshold family's cache mode from ``self``, which made a joined dual-cache row run without
    its cache, and a no-cache row run another's), and per-call state kept on a sampler object.
    (tests/test_blind_spots.py joins many options into the first row's sampler and compares
    tokens; this one compares every step's distribution, which is what caught the cache modes:
    an approximate cache seldom changes a draw.)"""
    model, proc = _model(process, time_cond)
    smp_a, smp_b, smp_c = (build_sampler(n, proc, tokenizer(), **o) for n, o in (a, b, c))
    long_canvas, long_steps = _canvas([3], FREE + 6), STEPS + 2
    with _float64(), torch.no_grad():
        hook_a, hook_b = _Steps(), _Steps()
        alone_a = smp_a.generate(model, proc, canvas=_canvas(PROMPT, FREE), steps=STEPS, gen=_gens([11]),
                                 on_step=hook_a).tokens[0]
        alone_b = smp_b.generate(model, proc, canvas=long_canvas, steps=long_steps, gen=_gens([21]),
                                 on_step=hook_b).tokens[0]
        state = smp_a.start(model, proc, _canvas(PROMPT, FREE), STEPS, _gens([11]))
        state.report = True
        first, second = [], []
        for _ in range(2):
            first.append(_dists(smp_c.step(state, model), 0))
        state.join(smp_b.start(model, proc, long_canvas, long_steps, _gens([21])))
        while not state.finished:
            out = smp_c.step(state, model)
            first.append(_dists(out, 0))
            second.append(_dists(out, 1))
    assert torch.equal(state.rows[0].tokens, alone_a), "row A, stepped by C"
    assert torch.equal(state.rows[1].tokens, alone_b), "row B, joined late and stepped by C"
    _same_dists([d for d in first if d], [d for d in hook_a if d], "row A, stepped by C")
    _same_dists([d for d in second if d], [d for d in hook_b if d], "row B, joined late and stepped by C")
    assert not torch.equal(alone_a[len(PROMPT):], alone_b[1 : 1 + FREE])  # the rows are not one text


def test_the_ancestral_cache_keeps_no_calls_output_alive_for_a_few_rows():
    """A batched ancestral step caches each row's prediction as its slot in the output of the
    call it last took part in; rows that keep theirs for many steps (more steps than tokens) must
    not keep whole outputs alive: after every step, every output a row still holds is used by at
    least a quarter of its rows, and a finished row holds none. Catches: no compaction (planted:
    ``compact(rows)`` removed from ``AncestralSampler._advance``: outputs held by one row of 16)
    and finished rows keeping theirs; each seen failing."""
    model, proc = _model("masked")
    smp = build_sampler("ancestral", proc, tokenizer())
    state = smp.start(model, proc, prompt_canvas(torch.tensor([0, 1]), 16, 6, "cpu"), 48, torch.Generator().manual_seed(2))
    kept_long = False
    with torch.no_grad():
        while not state.finished:
            smp.step(state, model)
            users: dict[int, list] = {}
            for r in state.rows:
                source = r.data.get("source")
                if r.done:
                    assert source is None, "a finished row keeps a call's output"
                elif source is not None:
                    users.setdefault(id(source[0]), [source[0], 0])[1] += 1
            for out, n in users.values():
                assert 4 * n >= out.shape[0], f"an output of {out.shape[0]} rows kept alive by {n}"
            kept_long |= len(users) > 1
    assert kept_long, "no row kept an older prediction: the check above saw nothing"
