"""What the benchmarks share: the CLI in a measured subprocess, the peak matmul rate, the machine,
and the training settings every model of a comparison gets (same backbone, same budget)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
EXE = Path(sys.executable).parent / "textdiffusion"


def train_overrides(budget: float, max_steps: int, batch_size: int) -> list[str]:
    """--set flags of the benchmark recipe: a wall-clock budget, the LR schedule sized to it."""
    return ["--set", f"train.max_steps={max_steps}", "--set", f"train.max_seconds={budget}",
            "--set", f"train.batch_size={batch_size}", "--set", "train.warmup_steps=50",
            "--set", "train.lr=1.5e-3", "--set", "train.ema=0", "--set", "train.eval_every=100",
            "--set", "train.ckpt_every=100"]


def peak_matmul_flops(sizes=(1024, 2048, 3072), reps: int = 3) -> float:
    """Best fp32 matmul rate over a few square sizes: the denominator of MFU."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def run_measured(args: list[str]) -> tuple[str, int, float]:
    """Like ``run`` but reads the child's rusage (peak RSS) with os.wait4."""
    start = time.perf_counter()
    proc = subprocess.Popen([str(EXE), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"command failed: textdiffusion {' '.join(map(str, args))}\n{err}")
    return out, usage.ru_maxrss * 1024, time.perf_counter() - start


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


class Log:
    """A benchmark's lines: to the screen (stderr) and, with the time, to its log file."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, message: str, screen: bool = True) -> None:
        if screen:
            print(message, file=sys.stderr, flush=True)
        self.raw(f"{datetime.datetime.now().isoformat(timespec='seconds')} {message}\n")

    def raw(self, text: str) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text)

    def fail(self, message: str) -> SystemExit:
        """The error to raise, logged (SystemExit puts it on the screen)."""
        self(message, screen=False)
        return SystemExit(message)
