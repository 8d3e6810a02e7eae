"""Fault injection: kill a tiny training run at random moments, recover it, and check that it
ends exactly where an uninterrupted run ends.

Each trial starts ``textdiffusion train`` into a fresh folder, sends it one signal after a random
delay (uniform over the uninterrupted run's duration, so start-up, data preparation, training
steps and checkpoint swaps are all hit), then recovers the run the way a user would: ``train
--out DIR --resume`` when the folder holds a run (one checkpointed, or one stopped before its
first checkpoint), the original command when it holds nothing. The trial passes when the run
finishes with the uninterrupted run's raw weights, EMA weights and optimizer state, byte for
byte, and the same metrics.jsonl (timings aside). SIGKILL is the hard case (no handler runs);
SIGTERM and SIGHUP must save and exit 143 / 129 once training has begun.

Runs are forked from this process after it imported the command line and torch (never having
run a torch op, so no thread pool is forked), which makes a trial about a second:

    python bench/fault_injection.py --trials 100                 # SIGKILL only
    python bench/fault_injection.py --trials 10 --term 2 --hup 2 --json

The test suite runs 10 SIGKILL trials plus SIGTERM and SIGHUP (tests/test_fault_injection.py);
BENCHMARKS.md has a longer run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

TIMING = ("seconds", "tokens_per_second", "mfu", "peak_flops")  # metrics that differ between any two runs
CONFIG = """
[model]
n_layer = 1
n_head = 2
d_model = 32
context = 32
[data]
tokenizer = "char"
[train]
batch_size = 8
max_steps = 40
warmup_steps = 5
eval_every = 20
eval_batches = 1
ckpt_every = 5
log_every = 2
ema = 0.9
threads = 1
"""


def _forked(argv: list[str]) -> int:
    """Start ``textdiffusion ARGV`` in a forked child; its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        from textdiffusion.cli import run

        sys.argv = ["textdiffusion", *argv]
        try:
            run()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os._exit(code)


def _warm_up() -> None:
    """Import here what a training run imports, so that forked children start warm (no torch op
    runs here: a forked thread pool would hang)."""
    import torch._dynamo  # noqa: F401  (the first optimizer step imports it: 800 modules)
    import torch.optim  # noqa: F401
    from safetensors.torch import load_file  # noqa: F401
    from tokenizers import Tokenizer  # noqa: F401
    from tqdm.auto import tqdm  # noqa: F401

    import textdiffusion.cli.app  # noqa: F401
    import textdiffusion.training.recipe  # noqa: F401
    from textdiffusion.cli import train  # noqa: F401
    from textdiffusion.models import transformer  # noqa: F401
    from textdiffusion.processes.registry import PROCESSES

    for spec in PROCESSES.values():
        spec.load()


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _finished(run_dir: Path) -> dict:
    """What a finished run is: its checkpoint's bytes and its metrics without timings."""
    ckpt = run_dir / "checkpoint"
    files = {name: (ckpt / name).read_bytes() for name in ("model.safetensors", "ema.safetensors",
                                                           "optimizer.safetensors", "rng.safetensors")}
    state = json.loads((ckpt / "state.json").read_text())
    metrics = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
               for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"files": files, "step": state["step"], "metrics": metrics}


def run_trials(kills: int, terms: int = 0, hups: int = 0, seed: int = 0, workdir: Path | None = None) -> dict:
    workdir = Path(workdir or tempfile.mkdtemp(prefix="fault-injection-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["TEXTDIFFUSION_CACHE"] = str(workdir / "cache")
    corpus = workdir / "corpus.txt"
    corpus.write_text("".join(f"the {a} {b} sat on the mat.\n" for a in ("cat", "dog", "fox") for b in ("red", "old"))
                      * 40)
    config = workdir / "config.toml"
    config.write_text(CONFIG)

    def command(out: Path) -> list[str]:
        return ["train", "--data", str(corpus), "--config", str(config), "--out", str(out), "--quiet"]

    _warm_up()
    from textdiffusion.training.recipe import has_checkpoint, stopped_before_first_checkpoint

    started = time.perf_counter()
    code = _wait(_forked(command(workdir / "reference")))
    duration = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"the uninterrupted run failed (exit {code})")
    want = _finished(workdir / "reference")
    rng = random.Random(seed)
    plan = [signal.SIGKILL] * kills + [signal.SIGTERM] * terms + [signal.SIGHUP] * hups
    trials = []
    for i, sig in enumerate(plan):
        out = workdir / f"trial{i}"
        delay = rng.uniform(0.0, duration)
        pid = _forked(command(out))
        time.sleep(delay)
        try:
            os.kill(pid, sig)
        except ProcessLookupError:  # it had already finished
            pass
        first = _wait(pid)
        recoveries = []
        if first != 0:  # recover as a user would
            resumable = has_checkpoint(out) or stopped_before_first_checkpoint(out)
            argv = ["train", "--out", str(out), "--resume", "--quiet"] if resumable else command(out)
            recoveries.append("resume" if resumable else "rerun")
            code = _wait(_forked(argv))
            if code != 0:
                recoveries.append(f"exit {code}")
        trial = {"trial": i, "signal": signal.Signals(sig).name, "delay": round(delay, 3), "exit": first,
                 "recovered_by": recoveries}
        try:
            got = _finished(out)
        except (OSError, ValueError, KeyError) as exc:
            trial.update(ok=False, why=f"unreadable run: {exc}")
        else:
            same_files = [n for n in want["files"] if got["files"][n] != want["files"][n]]
            trial.update(ok=not same_files and got["metrics"] == want["metrics"] and got["step"] == want["step"],
                         differ=same_files, metrics_intact=got["metrics"] == want["metrics"])
        if sig != signal.SIGKILL and first not in (0, 128 + sig, -sig):
            trial.update(ok=False, why=f"exit {first} after {signal.Signals(sig).name}")
        trials.append(trial)
    return {"duration": duration, "trials": trials, "passed": sum(t["ok"] for t in trials), "total": len(trials),
            "workdir": str(workdir)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20, help="SIGKILL trials (default 20)")
    p.add_argument("--term", type=int, default=0, help="SIGTERM trials (default 0)")
    p.add_argument("--hup", type=int, default=0, help="SIGHUP trials (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random moments (default 0)")
    p.add_argument("--workdir", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    result = run_trials(args.trials, args.term, args.hup, args.seed, args.workdir)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"uninterrupted run: {result['duration']:.2f} s")
        for t in result["trials"]:
            print(f"trial {t['trial']:3d} {t['signal']:7s} at {t['delay']:6.3f} s: exit {t['exit']:4d}, "
                  f"recovered by {'+'.join(t['recovered_by']) or 'nothing'}: {'ok' if t['ok'] else 'FAILED ' + str(t)}")
        print(f"{result['passed']} of {result['total']} trials ended exactly as the uninterrupted run")
    return 0 if result["passed"] == result["total"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
