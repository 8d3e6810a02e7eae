"""Evaluation outside the model: likelihood bounds, sample quality, speed."""

from .likelihood import LikelihoodReport, evaluate_likelihood
from .quality import distinct_n, judge_perplexity, unigram_entropy

__all__ = ["LikelihoodReport", "distinct_n", "evaluate_likelihood", "judge_perplexity", "unigram_entropy"]
