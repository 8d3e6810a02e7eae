"""The GPU efficiency options, on the CPU where they run: each leaves the training it speeds up
unchanged; MFU and TensorBoard are written with the metrics; bench/gpu.py runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from markov import MarkovChain, tokenizer

from textdiffusion.config import Config, ModelConfig, ProcessConfig, TrainConfig
from textdiffusion.errors import UsageError
from textdiffusion.runs import build_model
from textdiffusion.training import mfu
from textdiffusion.training.trainer import train

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def splits():
    mc = MarkovChain()
    return {"train": mc.sample(20_000, seed=1), "val": mc.sample(4_000, seed=2)}


def _cfg(process: str = "masked", **train_cfg) -> Config:
    # dropout: activation checkpointing must recompute the same dropout masks in backward
    return Config(model=ModelConfig(n_layer=2, n_head=2, d_model=32, context=16, dropout=0.1),
                  process=ProcessConfig(name=process),
                  train=TrainConfig(**{"batch_size": 8, "max_steps": 6, "warmup_steps": 2, "eval_every": 3,
                                       "eval_batches": 2, "ckpt_every": 3, "log_every": 1, "device": "cpu",
                                       **train_cfg}))


def _losses(run: Path) -> list[tuple]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in records]


def _assert_same(got: list[tuple], want: list[tuple]) -> None:
    assert [s for s, _, _ in got] == [s for s, _, _ in want]
    for (step, a, va), (_, b, vb) in zip(got, want):
        for x, y in ((a, b), (va, vb)):
            assert (x is None) == (y is None) and (x is None or x == pytest.approx(y, rel=1e-5)), (step, x, y)


@pytest.fixture(scope="module")
def baseline(splits, tmp_path_factory):
    out = {}
    for process in ("masked", "ar"):
        run = tmp_path_factory.mktemp(f"base-{process}")
        train(_cfg(process), run, splits, tokenizer(), progress=False)
        out[process] = _losses(run)
    return out


@pytest.mark.parametrize("process", ["masked", "ar"])
@pytest.mark.parametrize("options", ["fused_adamw=on", "activation_checkpointing=true", "sdpa=math"])
def test_efficiency_options_train_the_same_model(splits, baseline, tmp_path, process, options):
    """Fused AdamW, activation checkpointing (with dropout) and a forced attention kernel give the
    losses of the default run. Catches checkpointing that does not restore the RNG for its
    recomputation (other dropout masks in backward: the gradients, then the losses, change) and a
    fused optimizer given other hyper-parameters."""
    settings = dict(option.split("=") for option in options.split(","))
    settings = {k: {"true": True}.get(v, v) for k, v in settings.items()}
    train(_cfg(process, **settings), tmp_path, splits, tokenizer(), progress=False)
    _assert_same(_losses(tmp_path), baseline[process])


def test_activation_checkpointing_recomputes_inside_the_forced_kernel(splits, tmp_path):
    """Checkpointing with train.sdpa=math and no dropout (where torch's own choice would be the
    flash kernel): the same losses as math alone. Catches the kernel context around the forward
    only: the recomputation in backward then runs flash and torch refuses its saved tensors."""
    runs = []
    for i, settings in enumerate(({"sdpa": "math"}, {"sdpa": "math", "activation_checkpointing": True})):
        cfg = _cfg(**settings)
        cfg.model.dropout = 0.0
        train(cfg, tmp_path / str(i), splits, tokenizer(), progress=False)
        runs.append(_losses(tmp_path / str(i)))
    _assert_same(runs[1], runs[0])


def test_a_forced_attention_kernel_this_device_lacks_is_one_line(splits, tmp_path):
    """train.sdpa=efficient on the CPU (a CUDA-only kernel): a UsageError naming the fix, not
    torch's RuntimeError."""
    with pytest.raises(UsageError, match="train.sdpa=efficient has no kernel .* use train.sdpa=auto"):
        train(_cfg(sdpa="efficient"), tmp_path, splits, tokenizer(), progress=False)


def test_flops_per_token_and_the_datasheet_peaks():
    """Known answers: 6 x the per-token matmul weights + 12 x layers x width x context (PaLM's
    count), twice over a doubled sequence for block diffusion (it reads a noisy and a clean copy);
    datasheet peaks by GPU name, the specific name first (an H100 PCIe is not an H100 SXM)."""
    cfg = _cfg("masked").model
    cfg.vocab_size = 12
    model, proc = build_model(Config(model=cfg), tokenizer())
    per_block = 3 * 32 * 32 + 32 * 32 + 2 * 32 * 128 + 4 * 32  # qkv, proj, mlp (no biases), two LayerNorms
    matmul = 2 * per_block + 2 * 32 + 32 * 12  # the final norm, the head (the embedding is a lookup)
    assert model.num_params() == matmul
    assert mfu.flops_per_token(model, proc, 16) == 6 * matmul + 12 * 2 * 32 * 16
    block, bproc = build_model(Config(model=cfg, process=ProcessConfig(name="block", block_size=4)), tokenizer())
    assert mfu.flops_per_token(block, bproc, 16) == 2 * (6 * matmul + 12 * 2 * 32 * 32)
    assert mfu.mfu(1000.0, 2e9, 4e12, devices=2) == pytest.approx(0.25)
    assert mfu.datasheet_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert mfu.datasheet_peak("NVIDIA H100 PCIe") == 756e12
    assert mfu.datasheet_peak("NVIDIA H200") == 989e12
    assert mfu.datasheet_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert mfu.datasheet_peak("NVIDIA L40S") == 362e12 and mfu.datasheet_peak("NVIDIA L4") == 121e12
    assert mfu.datasheet_peak("Some future GPU") is None


def test_mfu_and_tensorboard_follow_the_metrics(splits, tmp_path):
    """Every logged step has its MFU against train.peak_flops, and the TensorBoard event file
    holds the same values as metrics.jsonl, once per step after a resume (the events logged
    past the checkpoint are dropped with the metrics).

    Bug caught: a resume that appends a new event file with purge_step (as SummaryWriter offers)
    -- TensorBoard reads files in name order, and a resume in the same second whose writer count
    went from 9 to 10 sorts before the file it replaces, so steps 5 and 6 vanished in CI."""
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def cfg():
        return _cfg(peak_flops=1e12, tensorboard="on")

    train(cfg(), tmp_path, splits, tokenizer(), progress=False, until=2)
    shutil.copytree(tmp_path / "checkpoint", tmp_path / "at-2")
    train(cfg(), tmp_path, splits, tokenizer(), progress=False, until=4, resume=True)  # logs 3 and 4
    shutil.rmtree(tmp_path / "checkpoint")  # a crash after step 4 was logged, with the checkpoint of step 2
    (tmp_path / "at-2").rename(tmp_path / "checkpoint")
    train(cfg(), tmp_path, splits, tokenizer(), progress=False, resume=True)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    assert [r["step"] for r in logged] == list(range(1, 7))
    assert all(r["peak_flops"] == 1e12 and 0 < r["mfu"] < 1 for r in logged)
    files = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1  # rebuilt from metrics.jsonl: no reading order can bring back stale events
    board = EventAccumulator(str(files[0]))
    board.Reload()
    events = board.Scalars("train/loss")
    assert [e.step for e in events] == list(range(1, 7))
    assert [e.value for e in events] == pytest.approx([r["loss"] for r in logged], rel=1e-6)
    speed = [e.value for e in board.Scalars("train/tokens_per_second")]
    assert speed == pytest.approx([r["tokens_per_second"] for r in logged], rel=1e-6)
    assert [e.step for e in board.Scalars("val/loss")] == [3, 6]


def test_gpu_benchmark_runs_end_to_end_with_smoke(tmp_path):
    """bench/gpu.py --smoke: the prepared GPU script trains, samples and prints its one JSON
    summary on the CPU in seconds, so it is known to work before a GPU is lent. Six steps each (a
    count: a 2-second budget fitted fewer than the five steps that log an MFU on a busy machine)."""
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--train-steps", "6",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary == json.loads(out.read_text())
    assert [r["process"] for r in summary["training"]] == ["masked", "ar", "block"]
    assert [r["steps"] for r in summary["training"]] == [6, 6, 6]
    assert all(r["tokens_per_second"] > 0 and r["mfu"] > 0 for r in summary["training"])
    assert summary["diffusion_vs_ar_tokens_per_second"] > 0
    assert {(r["process"], r["batch"]) for r in summary["sampling"]} == {
        (p, b) for p in ("ar", "block", "masked") for b in (1, 4)}
    assert torch.__version__ == summary["torch"]
