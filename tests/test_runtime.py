"""CPU threads: the cores not already busy (a 2-core machine with one busy core gets one thread)."""

import torch

from textdiffusion.runtime import auto_threads, set_threads


def test_auto_threads_leaves_the_busy_cores_alone():
    """Known answers: cores minus the rounded load average, between 1 and the cores. Catches the
    load ignored (torch's default: every core, several times slower on a busy machine) and a
    machine more than fully loaded getting zero threads."""
    assert auto_threads(cores=2, load=0.0) == 2
    assert auto_threads(cores=2, load=0.6) == 1
    assert auto_threads(cores=2, load=1.4) == 1
    assert auto_threads(cores=2, load=7.0) == 1
    assert auto_threads(cores=8, load=2.5) == 5


def test_set_threads_sets_torch():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_threads(0) == torch.get_num_threads() >= 1
    finally:
        torch.set_num_threads(before)
