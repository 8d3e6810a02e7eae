"""Benchmark: the Python API's CPU threads, the load-aware default against torch's own.

    python bench/threads.py --threads auto --batch 1     # Pipeline.from_pretrained() as shipped
    python bench/threads.py --threads torch --batch 16   # torch's default: one thread per core

One process: load the shipped English model, generate ``--batch`` rows of 128 tokens in 32
steps (ancestral), print the seconds of the generate call and the thread count used. Time the
whole process from outside (e.g. ``/usr/bin/time``, or several runs of each, paired A B A B),
on an idle machine and with both cores kept busy (``python3 -c "while True: pass" &`` twice).
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", choices=("auto", "torch"), default="auto",
                   help="auto: the API's default (the cores not already busy); torch: one per core")
    p.add_argument("--batch", type=int, default=1)
    args = p.parse_args()
    from textdiffusion import Pipeline

    cores = len(os.sched_getaffinity(0))
    pipe = Pipeline.from_pretrained("english", threads=None if args.threads == "auto" else cores)
    start = time.perf_counter()
    pipe.generate("ROMEO:", num=args.batch, length=128, steps=32, seed=0)
    print(f"threads={torch.get_num_threads()} batch={args.batch} generate_seconds={time.perf_counter() - start:.3f}")


if __name__ == "__main__":
    main()
