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
