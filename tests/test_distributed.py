"""Training on several processes computes what one process computes.

Here without torch.distributed: each process draws the whole batch's noise and keeps its rows
(``RowShard``), so the shares' losses, weighted by their scored tokens, are the whole batch's
loss. The torchrun runs (gloo, 2 processes) are in test_torchrun.py."""

import pytest
import torch
from markov import MarkovChain, tokenizer

from textdiffusion.config import Config, ModelConfig, ProcessConfig
from textdiffusion.control.guidance import drop_condition
from textdiffusion.data import WindowSampler
from textdiffusion.processes.base import RowShard
from textdiffusion.runs import build_model

PROCESSES = ["masked", "uniform", "gaussian", "sedd-absorb", "sedd-uniform", "block", "ar"]


def _tiny(process: str, **process_cfg):
    tok = tokenizer()
    cfg = Config(model=ModelConfig(n_layer=1, n_head=2, d_model=16, context=12, vocab_size=tok.vocab_size),
                 process=ProcessConfig(name=process, **process_cfg))
    torch.manual_seed(0)
    model, proc = build_model(cfg, tok)
    return model.double(), proc


def _shared_loss(proc, model, batch, fixed, shares):
    """(loss of the whole batch in one process, the token-weighted loss of its shares)."""
    whole = proc.loss(model, batch, torch.Generator().manual_seed(5), fixed)
    total, tokens = 0.0, 0
    for start, stop in shares:
        gen = RowShard(torch.Generator().manual_seed(5), start, stop, len(batch))
        part = proc.loss(model, batch[start:stop], gen, None if fixed is None else fixed[start:stop])
        total += part.loss.item() * part.num_tokens
        tokens += part.num_tokens
    return whole.loss.item(), total / tokens, whole.num_tokens, tokens


@pytest.mark.parametrize("process", PROCESSES)
@pytest.mark.parametrize("with_fixed", [False, True])
def test_row_shares_add_up_to_the_whole_batch_loss(process, with_fixed):
    """Shares of 3 + 1 + 4 rows of an 8-row batch give the 8-row loss of one process, with and
    without fixed (unscored) positions. Catches a draw made for the local rows only (each process
    would mask its rows with the first rows' noise: masked, uniform, block and SEDD fail), the
    antithetic times spread over the local rows (1/B strata of the wrong B), Gaussian's
    reconstruction rows counted per process (every share would have its own "first k rows"), and
    a mean over each share's tokens instead of the whole batch's."""
    extra = {"self_cond": True} if process == "gaussian" else {}
    model, proc = _tiny(process, **extra)
    batch = torch.from_numpy(MarkovChain().sample(8 * 13, seed=3).astype("int64")).view(8, 13)
    fixed = None
    if with_fixed:
        fixed = torch.zeros(8, 13, dtype=torch.bool)
        fixed[:, :4] = torch.arange(8)[:, None] % 3 == 0  # rows with 3 fixed tokens, others none
    whole, shared, n_whole, n_shared = _shared_loss(proc, model, batch, fixed, [(0, 3), (3, 4), (4, 8)])
    assert n_shared == n_whole
    # float64 models; the AR twin's cross-entropy runs in float32 (its logits.float())
    assert shared == pytest.approx(whole, rel=1e-6 if process == "ar" else 1e-12)


def test_row_shares_redraw_nothing_of_another_share():
    """The noise of rows [3, 8) drawn by the process holding them equals those rows of the whole
    draw: RowShard's draws are the whole batch's, sliced (not redrawn with a shifted state)."""
    from textdiffusion.processes.base import row_rand, row_randint, stratified_uniform

    def shard():
        return RowShard(torch.Generator().manual_seed(1), 3, 8, 8)

    def whole():
        return torch.Generator().manual_seed(1)

    assert torch.equal(row_rand((5, 4), shard()), row_rand((8, 4), whole())[3:])
    assert torch.equal(row_randint(7, (5, 4), shard()), row_randint(7, (8, 4), whole())[3:])
    both = stratified_uniform(8 * 2, True, whole(), per_row=2)
    assert torch.equal(stratified_uniform(5 * 2, True, shard(), per_row=2), both[6:])


def test_a_torch_draw_given_a_row_shard_fails_loudly():
    """A draw that forgets the RowShard helpers cannot quietly use some other noise."""
    with pytest.raises(TypeError):
        torch.rand(3, generator=RowShard(torch.Generator(), 0, 1, 2))


def test_condition_dropping_is_drawn_for_the_whole_batch():
    """Classifier-free-guidance label dropping: each share drops the rows one process drops."""
    labels = torch.arange(8)
    batch = torch.zeros(8, 4, dtype=torch.long)
    _, whole = drop_condition(batch, None, labels, 0.5, torch.Generator().manual_seed(2), 0, 99)
    parts = [drop_condition(batch[a:b], None, labels[a:b], 0.5, RowShard(torch.Generator().manual_seed(2), a, b, 8),
                            0, 99)[1] for a, b in ((0, 5), (5, 8))]
    assert torch.equal(torch.cat(parts), whole)
    assert (whole == 99).any() and (whole != 99).any()


@pytest.mark.parametrize("kind", ["plain", "fim", "infill"])
def test_window_sampler_rows_are_that_share_of_the_one_process_batch(kind):
    """WindowSampler(rows=...) yields exactly those rows of the batch one process draws, for plain,
    fill-in-the-middle and infilling windows, step after step (its generator stays in step)."""
    tokens = MarkovChain().sample(5_000, seed=4)
    kw = {"fim": (0.5, 1, 2, 3)} if kind == "fim" else {"span_rate": 0.5} if kind == "infill" else {}
    one = WindowSampler(tokens, 10, 6, seed=7, **kw)
    shares = [WindowSampler(tokens, 10, 6, seed=7, rows=(a, b), **kw) for a, b in ((0, 2), (2, 6))]
    for _ in range(3):
        want = one.next()
        got = [s.next() for s in shares]
        if isinstance(want, tuple):
            for i in range(2):
                assert torch.equal(torch.cat([g[i] for g in got]), want[i])
        else:
            assert torch.equal(torch.cat(got), want)
