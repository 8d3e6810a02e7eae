"""Evaluation outside the model: likelihood bounds, sample quality and diversity, speed."""

from .likelihood import LikelihoodReport, evaluate_likelihood
from .quality import bleu, distinct_n, judge_perplexity, self_bleu, unigram_entropy

__all__ = ["LikelihoodReport", "bleu", "distinct_n", "evaluate_likelihood", "judge_perplexity", "self_bleu",
           "unigram_entropy"]
