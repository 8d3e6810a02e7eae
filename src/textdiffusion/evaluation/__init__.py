"""Evaluation outside the model: likelihood bounds, DUEL's exact likelihood of a masked sampler,
sample quality and diversity, speed."""

from .duel import DuelReport, duel_log_likelihood, evaluate_duel
from .likelihood import LikelihoodReport, evaluate_likelihood
from .quality import bleu, distinct_n, judge_perplexity, self_bleu, unigram_entropy

__all__ = ["DuelReport", "LikelihoodReport", "bleu", "distinct_n", "duel_log_likelihood", "evaluate_duel",
           "evaluate_likelihood", "judge_perplexity", "self_bleu", "unigram_entropy"]
