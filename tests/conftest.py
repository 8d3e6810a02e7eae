import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
# Every process a test starts (the CLI, torchrun's workers, bench scripts) imports this checkout's
# src/, not whichever textdiffusion is installed: a bug planted in src/ must fail the tests that
# spawn processes too (pyproject's pythonpath does the same for this process).
SRC = str(Path(__file__).resolve().parent.parent / "src")
os.environ["PYTHONPATH"] = os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])])
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _torch_threads():
    """Each test starts at the suite's thread count (Pipeline.from_pretrained picks its own, from the load)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _token_cache(tmp_path_factory, monkeypatch):
    """Tokenized-corpus cache in a temporary folder: tests never touch ~/.cache."""
    monkeypatch.setenv("TEXTDIFFUSION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def train_cycle(out, process: str = "masked"):
    """A tiny run of "abcdefgh" repeated (context 24, 150 steps) into ``out``."""
    import numpy as np
    from markov import ALPHABET, tokenizer

    from textdiffusion.config import Config, ModelConfig, ProcessConfig, TrainConfig
    from textdiffusion.training.trainer import train

    data = np.arange(40_000) % len(ALPHABET)
    cfg = Config(model=ModelConfig(n_layer=2, n_head=4, d_model=64, context=24), process=ProcessConfig(name=process),
                 train=TrainConfig(batch_size=64, max_steps=150, lr=3e-3, min_lr=3e-4, warmup_steps=20,
                                   eval_every=150, ckpt_every=150, log_every=50))
    train(cfg, out, {"train": data[:36_000], "val": data[36_000:]}, tokenizer(), progress=False)
    return out


@pytest.fixture(scope="session")
def cycle_dir(tmp_path_factory):
    """A tiny masked run of "abcdefgh" repeated (context 24): greedy decoding continues the cycle,
    and the hole of "ab[MASK:3]fgh" is "cde". Shared by the pipeline, server and browser tests."""
    return train_cycle(tmp_path_factory.mktemp("cycle"))
