"""Sample quality: perplexity under an AR judge model, unigram entropy, distinct-n."""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F


@torch.no_grad()
def judge_perplexity(judge_model, judge_tokenizer, texts: list[str]) -> float:
    """exp(mean NLL per judge token) of ``texts`` under an AR judge; each text is scored from a
    leading end-of-text token (a fresh document), in windows of the judge's context."""
    if getattr(judge_model, "attn_mode", None) != "causal":
        raise ValueError("the judge must be an AR run (trained with --process ar)")
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
        raise ValueError("no text to judge")
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
