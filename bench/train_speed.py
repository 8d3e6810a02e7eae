"""Benchmark: training speed of the shipped recipe on the CPU, float32 against bf16 autocast.

    taskset -c 0 python bench/train_speed.py      # one core, as the shipped models were trained

The shipped English model's config (4 x 256, BPE 4096, batch 16 x 256 tokens), masked diffusion
and its AR twin, each with ``train.cpu_bf16`` off and on: the median seconds of an optimisation
step (forward, backward, AdamW) over ``--steps`` timed steps after warm-up, on random tokens.
Writes ``bench/out/train_speed.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, cpu_model  # noqa: E402


def step_seconds(process: str, bf16: bool, steps: int, warmup: int = 3) -> float:
    from textdiffusion import Pipeline
    from textdiffusion.runs import build_model
    from textdiffusion.training.trainer import autocast_for

    pipe = Pipeline.from_pretrained("english")
    cfg = pipe.config
    cfg.process.name = process
    cfg.model.time_cond = process != "ar"
    cfg.train.cpu_bf16 = bf16
    torch.manual_seed(0)
    model, objective = build_model(cfg, pipe.tokenizer)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = autocast_for(cfg.train, torch.device("cpu")) if bf16 else contextlib.nullcontext
    gen = torch.Generator().manual_seed(0)
    vocab, times = pipe.tokenizer.vocab_size, []
    for i in range(warmup + steps):
        # a training batch: windows of context + 1 tokens, as the trainer's window sampler gives
        x = torch.randint(0, vocab - 4, (cfg.train.batch_size, cfg.model.context + 1), generator=gen)
        start = time.perf_counter()
        with autocast():
            loss = objective.loss(model, x, gen, None).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "bench" / "out"))
    args = p.parse_args()
    from textdiffusion import Pipeline
    from textdiffusion.training.trainer import cpu_has_bf16

    torch.set_num_threads(args.threads)
    cfg = Pipeline.from_pretrained("english").config
    tokens = cfg.train.batch_size * cfg.model.context  # per step, counted as the trainer counts them
    rows = []
    for process in ("masked", "ar"):
        for bf16 in (False, True):
            s = step_seconds(process, bf16, args.steps)
            rows.append({"process": process, "cpu_bf16": bf16, "step_seconds": s, "tokens_per_second": tokens / s})
            print(f"{process} cpu_bf16={bf16}: {s:.3f} s/step, {tokens / s:,.0f} tokens/s", file=sys.stderr)
    record = {"date": datetime.date.today().isoformat(), "machine": cpu_model(), "threads": args.threads,
              "torch": torch.__version__, "python": platform.python_version(), "native_bf16": cpu_has_bf16(),
              "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_speed.json").write_text(json.dumps(record, indent=1))
    print(f"Machine: {record['machine']} (native bf16: {record['native_bf16']}), {args.threads} thread(s), "
          f"torch {record['torch']}. Date: {record['date']}.\n")
    print("| process | cpu_bf16 | s / step | tokens / s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['process']} | {r['cpu_bf16']} | {r['step_seconds']:.3f} | {r['tokens_per_second']:,.0f} |")


if __name__ == "__main__":
    main()
