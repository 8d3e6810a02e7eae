"""Diversity and quality metrics against answers worked out by hand."""

import math

import pytest

from textdiffusion.evaluation import bleu, distinct_n, self_bleu, unigram_entropy


def test_distinct_n_and_entropy():
    assert distinct_n([[1, 2, 3, 1, 2]], 2) == 3 / 4  # (1,2) twice among four bigrams
    assert distinct_n([[1, 1], [1, 1]], 1) == 1 / 4
    assert distinct_n([[1]], 2) == 0.0
    assert unigram_entropy([[0, 1], [2, 3]]) == 2.0


def test_bleu_by_hand():
    assert bleu([1, 2, 3, 4], [[1, 2, 3, 4]]) == pytest.approx(1.0)
    # precisions 3/4, 2/3, 1/2 and 0/1 (smoothed to 0.1/1); equal lengths: no brevity penalty
    expected = math.exp((math.log(3 / 4) + math.log(2 / 3) + math.log(1 / 2) + math.log(0.1)) / 4)
    assert bleu([1, 2, 3, 4], [[1, 2, 3, 5]]) == pytest.approx(expected)
    # clipping: "1 1 1 1" against "1 2": one 1 counts; brevity penalty exp(1 - 4/2) for the short one
    assert bleu([1, 1, 1, 1], [[1, 2]], max_n=1) == pytest.approx(1 / 4)
    assert bleu([1, 2], [[1, 2, 3, 4]], max_n=2) == pytest.approx(math.exp(1 - 4 / 2))
    # the closest reference length decides the brevity penalty; any reference may supply matches
    assert bleu([1, 2, 3], [[9, 9, 9], [1, 2, 3, 4, 5, 6]], max_n=1) == pytest.approx(1.0)


def test_self_bleu_orders_diversity():
    same = [[1, 2, 3, 4, 5]] * 3
    assert self_bleu(same) == pytest.approx(1.0)
    varied = [[1, 2, 3, 4, 5], [1, 2, 3, 9, 8], [7, 6, 5, 4, 3]]
    disjoint = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15]]
    assert 1.0 > self_bleu(varied) > self_bleu(disjoint)
    assert self_bleu(disjoint) < 0.05
    with pytest.raises(ValueError):
        self_bleu([[1, 2]])


def _unigram_judge(vocab_logits):
    """An AR run whose next-token law ignores the context (head weights zero, the law in the
    bias): every NLL is then a sum of -log p(token) that can be worked out by hand."""
    import torch
    from markov import tokenizer

    from textdiffusion.config import Config, ModelConfig, ProcessConfig
    from textdiffusion.runs import build_model

    cfg = Config(model=ModelConfig(n_layer=1, n_head=2, d_model=16, context=8, time_cond=False),
                 process=ProcessConfig(name="ar"))
    cfg.model.vocab_size = tokenizer().vocab_size
    model, objective = build_model(cfg, tokenizer())
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias = torch.nn.Parameter(vocab_logits.clone())
    return model.eval(), objective, tokenizer()


def test_bits_per_byte_and_standard_error_by_hand():
    """Known answer for evaluate_likelihood on a context-free AR judge: windows of 8 scored tokens
    tile the split after its first token; bits/token = sum(-log2 p) / tokens, bits/byte = the same
    sum / the bytes of the scored tokens, the standard error = the sample std (n - 1) of the
    per-window bits over sqrt(windows), per token. Catches the first token of the split scored
    (off by one), bytes counted over the unscored context token too, the population std, and
    the error bar not divided by the context (each planted and seen failing)."""
    import numpy as np
    import torch

    from textdiffusion.evaluation import evaluate_likelihood

    V = 12
    logits = torch.linspace(-2.0, 1.5, V)
    model, objective, _ = _unigram_judge(logits)
    nll = -torch.log_softmax(logits.double(), -1)  # nats per token id
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 8, size=8 * 5 + 4)  # 5 whole windows and a remainder that is not scored
    token_bytes = rng.integers(1, 4, size=V)
    report = evaluate_likelihood(model, objective, tokens, token_bytes, context=8, batch_size=2)
    scored = tokens[1 : 8 * 5 + 1]
    per_window = nll[torch.from_numpy(scored.reshape(5, 8))].sum(1) / math.log(2)  # bits
    assert report.num_windows == 5 and report.num_tokens == 40 and report.exact
    assert report.num_bytes == int(token_bytes[scored].sum())
    assert report.bits_per_token == pytest.approx(float(per_window.sum()) / 40, rel=1e-6)
    assert report.bits_per_byte == pytest.approx(float(per_window.sum()) / report.num_bytes, rel=1e-6)
    se = float(per_window.std(unbiased=True)) / math.sqrt(5) / 8
    assert report.stderr_bits_per_token == pytest.approx(se, rel=1e-6)


def test_judge_perplexity_by_hand():
    """Known answer: with a context-free judge, perplexity = exp(mean -log p) over the judge tokens
    of every text, each scored after a leading end-of-text that is itself never a target; a text
    longer than the judge's context (8) is scored in windows, every token once. Catches the
    leading end-of-text counted as a target, the last token of each window left out, and
    overlapping windows scoring tokens twice (each planted and seen failing)."""
    import torch

    from textdiffusion.evaluation import judge_perplexity

    V = 12
    logits = torch.linspace(1.0, -3.0, V)
    model, _, tok = _unigram_judge(logits)
    nll = -torch.log_softmax(logits.double(), -1)
    texts = ["abc", "hgfedcbaabcdefghh", "", "ddd"]  # one longer than two windows; an empty one skipped
    ids = [int(i) for text in texts for i in tok.encode(text).tolist()]
    assert len(ids) == 23
    expected = math.exp(float(nll[ids].mean()))
    assert judge_perplexity(model, tok, texts) == pytest.approx(expected, rel=1e-6)
