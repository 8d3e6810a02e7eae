"""A tiny training run on the Markov chain, started by tests/test_torchrun.py under torchrun (or
imported and run in the test process): ``python -m torch.distributed.run ... torchrun_job.py OUT
PROCESS MODE [--until N] [--resume]``. It calls the trainer directly so that a run can stop at a
chosen step (``until``), as an interruption would, and be resumed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from markov import MarkovChain, tokenizer  # noqa: E402

from textdiffusion.config import Config, DataConfig, ModelConfig, ProcessConfig, TrainConfig  # noqa: E402


def config(process: str, mode: str = "ddp", **train) -> Config:
    """Batch 8 in 2 micro-batches (accumulation), EMA, infilling spans (masked) or FIM (AR): the
    shares have different numbers of scored tokens, so their weighting is exercised too."""
    data = DataConfig(infill_rate=0.5) if process != "ar" else DataConfig(fim_rate=0.5)
    return Config(model=ModelConfig(n_layer=2, n_head=2, d_model=32, context=16), process=ProcessConfig(name=process),
                  data=data,
                  train=TrainConfig(**{"batch_size": 8, "grad_accum": 2, "max_steps": 6, "warmup_steps": 2,
                                       "eval_every": 3, "eval_batches": 2, "ckpt_every": 3, "log_every": 1,
                                       "ema": 0.9, "device": "cpu", "distributed": mode, **train}))


def splits():
    mc = MarkovChain()
    return {"train": mc.sample(20_000, seed=1), "val": mc.sample(4_000, seed=2)}


def run(out, process: str, mode: str, until: int | None = None, resume: bool = False):
    from textdiffusion.training import distributed
    from textdiffusion.training.trainer import train

    cfg = config(process, mode)
    try:
        return train(cfg, out, splits(), tokenizer(), until=until, resume=resume, progress=False,
                     world=distributed.join(cfg.train))
    finally:
        distributed.leave()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("process")
    p.add_argument("mode")
    p.add_argument("--until", type=int)
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    run(a.out, a.process, a.mode, a.until, a.resume)
