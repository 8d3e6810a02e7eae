"""CPU threads: the cores not already busy (a 2-core machine with one busy core gets one thread)."""

import pytest
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


def test_the_python_api_picks_threads_from_the_load_as_the_command_line_does(cycle_dir, monkeypatch):
    """Pipeline.from_pretrained gives torch the cores not already busy unless told otherwise (a
    2-core machine at load 2: one thread), keeps what OMP_NUM_THREADS chose, and sets an explicit
    count. Catches the API leaving torch at one thread per core: on a busy machine 3-30x slower
    than one thread (it did, while the CLI already chose from the load)."""
    import os

    from textdiffusion import Pipeline
    from textdiffusion.errors import UsageError

    monkeypatch.setattr(os, "getloadavg", lambda: (2.0, 2.0, 2.0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    Pipeline.from_pretrained(cycle_dir)
    assert torch.get_num_threads() == 1
    Pipeline.from_pretrained(cycle_dir, threads=2)
    assert torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    Pipeline.from_pretrained(cycle_dir)
    assert torch.get_num_threads() == 2
    Pipeline.from_pretrained(cycle_dir, threads=0)  # 0: the load-aware choice, whatever the environment says
    assert torch.get_num_threads() == 1
    with pytest.raises(UsageError, match="threads must be a whole number >= 0"):
        Pipeline.from_pretrained(cycle_dir, threads=-1)
