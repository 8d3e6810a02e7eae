"""Sample quality and diversity: perplexity under an AR judge model, unigram entropy, distinct-n,
self-BLEU."""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F

from ..errors import UsageError


@torch.no_grad()
def judge_perplexity(judge_model, judge_tokenizer, texts: list[str]) -> float:
    """exp(mean NLL per judge token) of ``texts`` under an AR judge; each text is scored from a
    leading end-of-text token (a fresh document), in windows of the judge's context."""
    if getattr(judge_model, "attn_mode", None) != "causal":
        raise UsageError("the judge must be an AR run (trained with --process ar)")
    device = next(judge_model.parameters()).device
    ctx = judge_model.cfg.context
    total, count = 0.0, 0
    for text in texts:
        ids = judge_tokenizer.encode(text)
        if len(ids) == 0:
            continue
        seq = torch.tensor([judge_tokenizer.eot_id, *ids.tolist()], device=device)
        for start in range(0, len(seq) - 1, ctx):
            chunk = seq[start : start + ctx + 1]
            logits = judge_model(chunk[None, :-1])[0]
            total += F.cross_entropy(logits.float(), chunk[1:], reduction="sum").item()
            count += len(chunk) - 1
    if count == 0:
        raise UsageError("no text to judge")
    return math.exp(total / count)


def unigram_entropy(token_lists: list[list[int]]) -> float:
    """Entropy in bits of the pooled unigram distribution of the samples' tokens. Repetitive,
    degenerate samples score low here even when a judge finds them likely."""
    counts = Counter(t for tokens in token_lists for t in tokens)
    n = sum(counts.values())
    if n == 0:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def distinct_n(token_lists: list[list[int]], n: int = 2) -> float:
    """Fraction of distinct n-grams among all n-grams of the samples."""
    grams = [tuple(tokens[i : i + n]) for tokens in token_lists for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _ngrams(tokens: list[int], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu(hypothesis: list[int], references: list[list[int]], max_n: int = 4) -> float:
    """BLEU of one token sequence against references (Papineni et al. 2002): the geometric mean of
    clipped n-gram precisions for n = 1..max_n, times the brevity penalty (closest reference
    length). A precision with no match counts as 0.1 matches ("method 1" smoothing of Chen &
    Cherry 2014), so short or novel samples score near 0 instead of failing."""
    if not hypothesis or not references:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        hyp = _ngrams(hypothesis, n)
        total = sum(hyp.values())
        if total == 0:
            return 0.0
        best: Counter = Counter()
        for ref in references:
            best |= _ngrams(ref, n)  # the most times each n-gram occurs in any one reference
        matched = sum(min(c, best[g]) for g, c in hyp.items())
        log_p += math.log((matched if matched else 0.1) / total) / max_n
    ref_len = min((len(r) for r in references), key=lambda r: (abs(r - len(hypothesis)), r))
    bp = 1.0 if len(hypothesis) > ref_len else math.exp(1.0 - ref_len / len(hypothesis))
    return bp * math.exp(log_p)


def self_bleu(token_lists: list[list[int]], max_n: int = 4) -> float:
    """Mean BLEU of each sample against all the others (Zhu et al. 2018, Texygen): 1 = every
    sample the same, near 0 = no shared n-grams. Lower is more diverse."""
    if len(token_lists) < 2:
        raise UsageError("self-BLEU needs at least two samples")
    scores = [bleu(h, token_lists[:i] + token_lists[i + 1 :], max_n) for i, h in enumerate(token_lists)]
    return sum(scores) / len(scores)
