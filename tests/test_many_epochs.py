"""Many-epoch training: train.epochs, the best checkpoint (RUN/best, --checkpoint best), early
stopping (train.patience) across a resume, and the regularization knobs (dropout, attention
dropout, weight decay, input-token corruption), each shown to change the computation."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from markov import MarkovChain, tokenizer

from textdiffusion.config import Config, ModelConfig, ProcessConfig, TrainConfig
from textdiffusion.data import Rows
from textdiffusion.runs import load_run
from textdiffusion.training.regularization import corrupt_inputs, replacement_ids
from textdiffusion.training.trainer import _validate, _validation_batches, train

CONTEXT = 16


def _cfg(process: str = "masked", model: dict | None = None, **train_cfg) -> Config:
    return Config(model=ModelConfig(n_layer=1, n_head=2, d_model=32, context=CONTEXT, **(model or {})),
                  process=ProcessConfig(name=process),
                  train=TrainConfig(**{"batch_size": 8, "max_steps": 6, "warmup_steps": 2, "eval_every": 3,
                                       "eval_batches": 2, "ckpt_every": 3, "log_every": 1, "device": "cpu",
                                       "threads": 1, **train_cfg}))


@pytest.fixture(scope="module")
def splits():
    mc = MarkovChain()
    return {"train": mc.sample(2_000, seed=1), "val": mc.sample(1_000, seed=2)}


@pytest.fixture(scope="module")
def overfitting():
    """400 training tokens of one chain, validation from another: the validation loss falls while
    the model learns what the two share, then rises as it memorises the training tokens."""
    return {"train": MarkovChain(seed=0).sample(400, seed=1), "val": MarkovChain(seed=3).sample(1_000, seed=2)}


def _records(run: Path, key: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if key in r]


def test_epochs_set_the_steps_from_the_training_data(splits, tmp_path):
    """train.epochs = E trains ceil(E x tokens / (batch x grad_accum x context)) steps (windows) or
    ceil(E x rows / (batch x grad_accum)) (SFT rows), saved in config.json, and logs each record's
    epoch. Catches steps per epoch counted without grad_accum (twice the steps), with the window's
    context + 1 tokens, or from rows' tokens instead of rows."""
    tok = tokenizer()
    result = train(_cfg(epochs=0.5, grad_accum=2, eval_every=100, ckpt_every=100), tmp_path / "w", splits, tok,
                   progress=False)
    want = math.ceil(0.5 * len(splits["train"]) / (8 * 2 * CONTEXT))  # 2000 tokens: 4 steps
    assert result.step == want == 4
    assert json.loads((tmp_path / "w" / "config.json").read_text())["train"]["max_steps"] == want
    epochs = [r["epoch"] for r in _records(tmp_path / "w", "loss")]
    assert epochs == pytest.approx([s * 8 * 2 * CONTEXT / len(splits["train"]) for s in range(1, want + 1)], abs=1e-4)

    n = 40  # SFT-style rows: an epoch is the rows once
    rows = Rows(np.asarray(splits["train"][: n * (CONTEXT + 1)]).reshape(n, CONTEXT + 1),
                np.zeros((n, CONTEXT + 1), dtype=bool))
    val = Rows(np.asarray(splits["val"][: 8 * (CONTEXT + 1)]).reshape(8, CONTEXT + 1), np.zeros((8, CONTEXT + 1), dtype=bool))
    result = train(_cfg(epochs=3, eval_every=100, ckpt_every=100), tmp_path / "r", {"train": rows, "val": val}, tok,
                   progress=False)
    assert result.step == math.ceil(3 * n / 8) == 15


def test_early_stopping_and_the_best_checkpoint_survive_a_resume(overfitting, tmp_path):
    """With train.patience = 2 a run stops at the second validation in a row without a new best,
    the step that the full run's own validation curve says; RUN/best holds the weights of the best
    validation (re-scored: exactly its recorded loss); a run interrupted before that and resumed
    stops at the same step with the same best. Catches a patience counter that is not saved in the
    checkpoint (the resumed run stops later), a best checkpoint written from the weights after the
    next step, and a counter reset by any non-worse validation."""
    tok = tokenizer()
    settings = dict(max_steps=60, eval_every=4, ckpt_every=4, lr=3e-2, warmup_steps=1)
    full = tmp_path / "full"
    train(_cfg(**settings), full, overfitting, tok, progress=False)
    curve = [(r["step"], r["val_loss"]) for r in _records(full, "val_loss")]
    best, since, want_stop = math.inf, 0, None
    for step, loss in curve:  # the rule, written out
        if loss < best:
            best, best_step, since = loss, step, 0
        else:
            since += 1
        if since >= 2:
            want_stop = step
            break
    assert want_stop is not None and want_stop < 60, curve  # the data overfits well inside the run

    stopped = tmp_path / "stopped"
    result = train(_cfg(patience=2, **settings), stopped, overfitting, tok, progress=False)
    assert (result.step, result.stopped_early, result.best_step) == (want_stop, True, best_step)
    assert result.best_val_loss == pytest.approx(best, rel=1e-6)
    state = json.loads((stopped / "best" / "checkpoint" / "state.json").read_text())
    assert state["step"] == best_step
    run = load_run(stopped / "best")  # the best weights, scored again on the same validation batches
    val = _validation_batches(overfitting["val"], CONTEXT, run.cfg.train)
    rescored = _validate(run.model, None, run.process, val, torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False))
    assert rescored == pytest.approx(best, rel=1e-5)

    resumed = tmp_path / "resumed"
    cut = want_stop - 4  # a checkpoint after the first validation without a new best
    train(_cfg(patience=2, **settings), resumed, overfitting, tok, progress=False, until=cut)
    result = train(_cfg(patience=2, **settings), resumed, overfitting, tok, progress=False, resume=True)
    assert (result.step, result.best_step, result.stopped_early) == (want_stop, best_step, True)
    again = train(_cfg(patience=2, **settings), resumed, overfitting, tok, progress=False, resume=True)
    assert again.step == want_stop  # resuming a stopped run does not train on


def test_checkpoint_best_reaches_generate_eval_and_export(overfitting, tmp_path):
    """--checkpoint best makes eval score RUN/best (the same figure as naming RUN/best) and not the
    last weights; export --checkpoint best writes those weights. Catches a flag that is parsed but
    not applied (eval scores the last weights)."""
    tok = tokenizer()
    run = tmp_path / "run"
    train(_cfg(max_steps=40, eval_every=4, ckpt_every=4, lr=3e-2, warmup_steps=1), run, overfitting, tok,
          progress=False)
    state = json.loads((run / "best" / "checkpoint" / "state.json").read_text())
    assert state["step"] < 40  # the last weights are not the best ones
    data = tmp_path / "val.txt"
    data.write_text(tok.decode(overfitting["val"].tolist()))

    def bits(*args: str) -> float:
        out = subprocess.run([sys.executable, "-m", "textdiffusion", "eval", *args, "--data", str(data),
                              "--num-samples", "0", "--max-windows", "8", "--json", "--threads", "1"],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["bits_per_token"]

    best = bits(str(run), "--checkpoint", "best")
    assert best == bits(str(run / "best"))
    assert best != bits(str(run))
    out = subprocess.run([sys.executable, "-m", "textdiffusion", "export", str(run), "--checkpoint", "best", "--out",
                          str(tmp_path / "exported"), "--dtype", "float32"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert bits(str(tmp_path / "exported")) == best
    out = subprocess.run([sys.executable, "-m", "textdiffusion", "generate", "--model", str(tmp_path / "exported"),
                          "--checkpoint", "best"], capture_output=True, text=True)
    assert out.returncode == 2 and "no best checkpoint" in out.stderr and "Traceback" not in out.stderr


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoint" / "model.safetensors"))


@pytest.mark.parametrize("process", ["masked", "ar"])
@pytest.mark.parametrize("knob", ["model.dropout", "model.attn_dropout", "train.weight_decay", "train.input_noise"])
def test_each_regularization_knob_changes_the_training(splits, tmp_path, process, knob):
    """Three steps with a knob on end at other weights than the same run with it off, and the run
    with it set to 0 is the baseline to the bit (so the difference is the knob, not the seed).
    Attention dropout alone (model.dropout = 0): catches attention that reads only model.dropout;
    input noise: catches a wrapper that is never applied (or only at validation)."""
    section, name = knob.split(".")
    value = {"dropout": 0.3, "attn_dropout": 0.3, "weight_decay": 0.5, "input_noise": 0.3}[name]

    def run(v: float | None, tag: str) -> dict[str, torch.Tensor]:
        model = {name: v} if section == "model" and v is not None else {}
        extra = {name: v} if section == "train" and v is not None else {}
        out = tmp_path / tag
        train(_cfg(process, model=model, max_steps=3, eval_every=100, ckpt_every=100, lr=1e-2,
                   **({"weight_decay": 0.0} | extra)), out, splits, tokenizer(), progress=False)
        return _weights(out)

    base, off, on = run(None, "base"), run(0.0, "off"), run(value, "on")
    assert all(torch.equal(base[k], off[k]) for k in base)
    assert any(not torch.equal(base[k], on[k]) for k in base)


def test_input_noise_replaces_the_given_share_and_never_masks_or_padding():
    """corrupt_inputs at rate 0.3 replaces about 0.3 (K-1)/K of the ordinary tokens (a draw may
    give the same token back), never a mask or padding input, and only with text ids. Catches
    protected ids that are replaced, specials among the replacements, and a rate applied twice."""
    K, mask, pad, eot = 8, 9, 10, 8
    ids = replacement_ids(12, (mask, pad, 11, eot))
    assert ids.tolist() == list(range(K))
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, K, (64, 256), generator=torch.Generator().manual_seed(1))
    x[:, ::4] = mask
    x[:, 1::8] = pad
    y = corrupt_inputs(x, 0.3, ids, (mask, pad), gen)
    assert torch.equal(y[x == mask], x[x == mask]) and torch.equal(y[x == pad], x[x == pad])
    free = (x != mask) & (x != pad)
    changed = float((y != x)[free].float().mean())
    n = int(free.sum())
    want = 0.3 * (K - 1) / K
    assert abs(changed - want) < 5 * math.sqrt(want * (1 - want) / n)  # 5 standard errors (n ~ 10,000)
    assert int(y[free].max()) < K
