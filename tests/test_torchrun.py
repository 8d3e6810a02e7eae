"""torchrun with 2 CPU processes (gloo): DDP and FSDP2 compute what one process computes, sharded
checkpoints resume exactly (at 2 processes and at 1), export consolidates them, and a killed
process ends the run with one line in bounded time. Every launch listens on localhost only
(``--standalone``) and runs under a timeout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchrun_job
from markov import ALPHABET, MarkovChain

from textdiffusion.runs import build_model, read_run
from textdiffusion.runs.checkpoint import checkpoint_dir, is_sharded_checkpoint, load_weights

JOB = Path(__file__).with_name("torchrun_job.py")
LAUNCH_TIMEOUT = 240  # seconds; a launch takes about 10 here


def torchrun(*args, n: int = 2, timeout: float = LAUNCH_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1",  # the job module beside the code under test (conftest's PYTHONPATH)
           "PYTHONPATH": os.pathsep.join([str(JOB.parent), os.environ["PYTHONPATH"]])}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def cli(*args, timeout: float = LAUNCH_TIMEOUT) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "textdiffusion", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def history(run_dir: Path) -> list[tuple]:
    """(step, training loss, validation loss) of every metrics line, in order."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in records]


def assert_same_history(got: list[tuple], want: list[tuple], rel: float = 2e-5) -> None:
    assert [s for s, _, _ in got] == [s for s, _, _ in want]
    for (step, loss, val), (_, loss_w, val_w) in zip(got, want):
        for a, b in ((loss, loss_w), (val, val_w)):
            assert (a is None) == (b is None), step
            if a is not None:
                assert a == pytest.approx(b, rel=rel), (step, a, b)


def weights(run_dir: Path, ema: bool) -> dict[str, torch.Tensor]:
    """Raw (or EMA) weights of a run, whole, whatever its checkpoint's format."""
    cfg, tok = read_run(run_dir)
    cfg.model.vocab_size = tok.vocab_size
    model, _ = build_model(cfg, tok)
    load_weights(model, checkpoint_dir(run_dir), prefer_ema=ema)
    return model.state_dict()


def assert_same_weights(a: Path, b: Path) -> None:
    """Equal to 1e-5 (the weights are ~0.02): summation order changes gradients in the 7th digit,
    and Adam turns a near-zero gradient's rounding into up to 3e-6 here; a wrong batch, noise or
    weighting moves thousands of weights by ~lr = 1e-3."""
    for ema in (False, True):
        x, y = weights(a, ema), weights(b, ema)
        assert x.keys() == y.keys()
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=1e-4, atol=1e-5, msg=f"{k} (ema={ema})")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "markov.txt"
    path.write_text("".join(ALPHABET[i] for i in MarkovChain().sample(30_000, seed=1)))
    return path


def cli_settings(process: str, mode: str) -> list[str]:
    """torchrun_job's config as command-line settings."""
    cfg = torchrun_job.config(process, mode)
    out = ["--process", process, "--set", "data.tokenizer=char"]
    for section in ("model", "train"):
        for key in ("n_layer", "n_head", "d_model", "context") if section == "model" else (
                "batch_size", "grad_accum", "max_steps", "warmup_steps", "eval_every", "eval_batches", "ckpt_every",
                "log_every", "ema", "device", "distributed"):
            out += ["--set", f"{section}.{key}={getattr(getattr(cfg, section), key)}"]
    key = "fim_rate" if process == "ar" else "infill_rate"
    return out + ["--set", f"data.{key}={getattr(cfg.data, key)}", "--quiet"]


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory):
    """The reference: `textdiffusion train` in one process, per process kind (DDP's config; the
    mode changes nothing in one process but the checkpoint format)."""
    out = {}
    for process in ("masked", "ar"):
        run = tmp_path_factory.mktemp(f"one-{process}") / "run"
        cli("train", "--data", corpus, "--out", run, *cli_settings(process, "ddp"))
        out[process] = run
    return out


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
@pytest.mark.parametrize("process", ["masked", "ar"])
def test_torchrun_two_processes_compute_what_one_computes(corpus, one_process, tmp_path, process, mode):
    """`torchrun --nproc_per_node 2 -m textdiffusion train` with the same config as one process:
    the same per-step training and validation losses and the same final raw and EMA weights
    (float rounding apart), with gradient accumulation, infilling spans / FIM windows and EMA.
    Catches each process training on the whole batch (or the same rows as the other: losses
    differ from step 2), a loss averaged per process instead of per scored token (infilling
    shares differ in tokens), accumulation that all-reduces a half batch, and a learning rate
    or batch size scaled by the number of processes."""
    run = tmp_path / "run"
    torchrun("-m", "textdiffusion", "train", "--data", corpus, "--out", run, *cli_settings(process, mode))
    assert_same_history(history(run), history(one_process[process]))
    assert_same_weights(run, one_process[process])
    assert is_sharded_checkpoint(checkpoint_dir(run)) == (mode == "fsdp")


def test_fsdp_checkpoint_resumes_exactly_at_two_processes_and_at_one(tmp_path):
    """An FSDP run stopped at step 3 (its sharded checkpoint written by both processes) and
    resumed with 2 processes, or with 1, gives the uninterrupted run's losses and weights; the
    sharded run is consolidated by `export` into a model that `generate` loads. Catches a
    sharded checkpoint missing the optimizer moments, EMA or data/noise RNG state, one saved by
    rank 0 alone (half the parameters), and resharding that does not reassemble the shards."""
    whole = tmp_path / "whole"
    torchrun_job.run(whole, "masked", "fsdp")  # one process: the reference
    part = tmp_path / "part"
    torchrun(JOB, part, "masked", "fsdp", "--until", 3)
    assert is_sharded_checkpoint(checkpoint_dir(part))
    assert len(list((checkpoint_dir(part) / "sharded").glob("*.safetensors"))) == 2  # a shard from each process
    assert history(part)[-1][0] == 3
    shutil.copytree(part, tmp_path / "part1")
    torchrun(JOB, part, "masked", "fsdp", "--resume")  # 2 -> 2
    assert_same_history(history(part), history(whole))
    assert_same_weights(part, whole)
    torchrun_job.run(tmp_path / "part1", "masked", "fsdp", resume=True)  # 2 -> 1
    assert_same_history(history(tmp_path / "part1"), history(whole))
    assert_same_weights(tmp_path / "part1", whole)

    model = tmp_path / "model"
    cli("export", part, "--out", model, "--dtype", "float32")
    assert (model / "checkpoint" / "model.safetensors").exists() and not (model / "checkpoint" / "sharded").exists()
    exported, ema = weights(model, ema=False), weights(part, ema=True)  # the run's EMA weights are the model's
    assert exported.keys() == ema.keys() and all(torch.equal(exported[k], ema[k]) for k in ema)
    text = json.loads(cli("generate", "--model", model, "--num", "2", "--length", "12", "--seed", "0", "--json").stdout)
    assert len(text["texts"]) == 2


def test_ddp_checkpoint_from_two_processes_resumes_in_one(tmp_path):
    """A DDP run's checkpoint (rank 0's safetensors) stopped with 2 processes continues in 1 with the
    uninterrupted run's losses: the data and noise generators are the whole run's, not rank 0's share."""
    whole = tmp_path / "whole"
    torchrun_job.run(whole, "ar", "ddp")
    part = tmp_path / "part"
    torchrun(JOB, part, "ar", "ddp", "--until", 3)
    torchrun_job.run(part, "ar", "ddp", resume=True)
    assert_same_history(history(part), history(whole))
    assert_same_weights(part, whole)


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int | None:
    """The pid of the worker with RANK=rank among the launcher's children."""
    try:
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    except OSError:
        return None
    for pid in children:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(pid)
    return None


def test_a_killed_process_ends_the_run_with_one_line_in_bounded_time(corpus, tmp_path):
    """SIGKILL one of the two processes mid-run: the other stops within seconds (no hang until a
    timeout) with one line naming what happened and how to continue, and no traceback of ours
    (torchrun then prints its own failure summary)."""
    run = tmp_path / "run"
    args = cli_settings("masked", "ddp") + ["--set", "train.max_steps=100000", "--set", "train.eval_every=100000"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "textdiffusion", "train", "--data", str(corpus), "--out", str(run), *args]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and launcher.poll() is None:  # until both train (steps logged)
            metrics = run / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
                break
            time.sleep(0.2)
        victim = _rank_pid(launcher, 1)
        assert victim is not None and launcher.poll() is None, "the run did not start"
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        _, err = launcher.communicate(timeout=90)
        took = time.monotonic() - killed
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()
    assert launcher.returncode != 0
    assert took < 60, f"the survivors took {took:.0f}s to stop"
    ours = [line for line in err.splitlines() if line.startswith("textdiffusion: error:")]
    assert len(ours) == 1 and "another process of this run stopped" in ours[0] and "--resume" in ours[0], err[-2000:]
    assert "/textdiffusion/" not in "".join(line for line in err.splitlines() if line.strip().startswith("File ")), \
        err[-3000:]
