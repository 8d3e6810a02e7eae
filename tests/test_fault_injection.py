"""Fault injection (bench/fault_injection.py): a tiny training run killed at random moments and
recovered as a user would, each trial ending byte for byte where the uninterrupted run ends."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "fault_injection.py"


def test_killed_at_random_moments_every_run_recovers_exactly(tmp_path):
    """10 SIGKILLs, a SIGTERM and a SIGHUP at random moments of `textdiffusion train` (start-up,
    data preparation, steps, checkpoint swaps), each followed by `--resume` (or the original
    command when the folder holds nothing): every trial finishes with the uninterrupted run's
    weights, EMA weights, optimizer and RNG state, byte for byte, and its metrics.jsonl. Catches a
    checkpoint written in place instead of beside the old one and swapped in (planted: a kill
    mid-write left an unloadable checkpoint in 1 of the 12 trials). The narrower windows (the
    metrics rewrite, the first config write) have their own tests (test_reliability.py)."""
    r = subprocess.run([sys.executable, str(BENCH), "--trials", "10", "--term", "1", "--hup", "1", "--seed", "3",
                        "--workdir", str(tmp_path), "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode in (0, 1), r.stderr
    result = json.loads(r.stdout)
    failed = [t for t in result["trials"] if not t["ok"]]
    assert not failed, failed
    assert result["total"] == 12
    # the moments hit both sides of the first checkpoint: some trials resumed, some started again
    how = {t["recovered_by"][0] for t in result["trials"] if t["recovered_by"]}
    assert "resume" in how, result["trials"]
