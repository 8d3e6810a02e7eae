"""Train a classifier of noisy inputs x_t for classifier guidance (``textdiffusion train-classifier``).

The classifier belongs to one diffusion run: it reads that run's tokenizer and that run's noisy
inputs (x_t drawn from the run's own forward process at t ~ U[0.02, 1]; for the Gaussian process,
the run's scaled noisy embeddings). Labelled data is JSONL of ``{"text", "label"}``, each
label's documents packed into windows as in ``--labels`` training. A classifier directory holds::

    classifier.json          labels, the diffusion run it belongs to, its model config, accuracy
    classifier.safetensors   the weights
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..config import MAX_LR, ModelConfig
from ..data import label_rows, label_windows, labelled_documents
from ..errors import UsageError, first_line
from ..models.classifier import NoisyClassifier
from ..processes.registry import PROCESSES
from ..runs import load_run
from ..runs.checkpoint import CheckpointError, write_safetensors

T_MIN = 0.02
GUIDABLE = tuple(s.name for s in PROCESSES.values() if s.guidable)  # processes a noisy-input classifier steers


def noisy_inputs(run, x0: torch.Tensor, t: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """What the run's denoiser reads at time t: token ids x_t, or scaled noisy embeddings."""
    process = run.process
    if process.continuous:
        with torch.no_grad():
            e0 = run.model.embeddings()[x0]
        return process.corrupt(e0, t, gen) * process.input_scale(t).float().view(-1, 1, 1)
    return process.corrupt(x0, t, gen)


@dataclasses.dataclass
class LoadedClassifier:
    model: NoisyClassifier
    labels: list[str]
    run_dir: str
    info: dict

    def label_id(self, name: str) -> int:
        if name not in self.labels:
            raise UsageError(f"unknown label {name!r} (the classifier knows {', '.join(self.labels)})")
        return self.labels.index(name)


def _config(run, layers: int | None) -> ModelConfig:
    cfg = dataclasses.replace(run.cfg.model, time_cond=True, num_labels=0)
    if layers:
        cfg = dataclasses.replace(cfg, n_layer=layers)
    return cfg


def _input_dim(run) -> int | None:
    return run.process.embed_dim if run.process.continuous else None


def train_classifier(run_dir: str | Path, data: str, out: str | Path, *, steps: int = 300, batch_size: int = 32,
                     lr: float = 1e-3, layers: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Train and save a classifier of ``run_dir``'s noisy inputs; returns its ``classifier.json``."""
    out = Path(out)
    if not (math.isfinite(lr) and 0 < lr <= MAX_LR):  # nan failed inside torch; inf trained NaN weights
        raise UsageError(f"lr must be a positive, finite number at most {MAX_LR:g} (typical: 1e-4 to 1e-2); got {lr}")
    if (out / "classifier.safetensors").exists():
        raise CheckpointError(f"{out} already holds a classifier: choose another --out")
    run = load_run(run_dir)
    if run.process.name not in GUIDABLE:
        raise UsageError(f"classifier guidance is for {', '.join(GUIDABLE)} runs; this one is {run.process.name!r}")
    docs = labelled_documents(data)
    labels = sorted({d.label for split in docs.values() for d in split})
    if len(labels) < 2:
        raise UsageError(f"a classifier needs at least two labels; {data} has {labels}")
    L = run.cfg.model.context
    rows = {k: label_windows(docs[k], labels, run.tokenizer, L) for k in ("train", "val")}
    torch.manual_seed(seed)
    cfg = _config(run, layers)
    model = NoisyClassifier(cfg, len(labels), _input_dim(run))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed + 1)
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, disable=not progress, unit="step", file=sys.stderr, dynamic_ncols=True)
    train_rows = rows["train"]
    for step in range(steps):
        lr_now = lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr_now
        idx = torch.randint(0, len(train_rows), (batch_size,), generator=gen).numpy()
        x0 = torch.from_numpy(train_rows.tokens[idx, 1:])
        y = torch.from_numpy(train_rows.labels[idx])
        t = T_MIN + (1 - T_MIN) * torch.rand(batch_size, generator=gen)
        loss = F.cross_entropy(model(noisy_inputs(run, x0, t, gen), t), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    accuracy = {str(t): evaluate_accuracy(run, model, rows["val"], t) for t in (0.0, 0.25, 0.5, 0.75)}
    info = {"labels": labels, "diffusion_run": str(Path(run_dir).resolve()), "model": dataclasses.asdict(cfg),
            "process": run.process.name, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
            "val_accuracy_at_t": accuracy, "val_documents": len(rows["val"])}
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(out / "classifier.safetensors", model.state_dict())
    (out / "classifier.json").write_text(json.dumps(info, indent=2))
    return info


@torch.no_grad()
def evaluate_accuracy(run, model: NoisyClassifier, rows, t: float, seed: int = 0) -> float:
    """Accuracy on ``rows`` with inputs noised to time t (t = 0: clean text)."""
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    right = 0
    for i in range(0, len(rows), 64):
        x0 = torch.from_numpy(rows.tokens[i : i + 64, 1:])
        tt = torch.full((len(x0),), float(t))
        pred = model(noisy_inputs(run, x0, tt, gen) if t > 0 else _clean(run, x0), tt).argmax(-1)
        right += int((pred == torch.from_numpy(rows.labels[i : i + 64])).sum())
    model.train()
    return right / max(len(rows), 1)


def _clean(run, x0):
    return noisy_inputs(run, x0, torch.zeros(len(x0))) if run.process.continuous else x0


def load_classifier(path: str | Path, device="cpu") -> LoadedClassifier:
    path = Path(path)
    try:
        info = json.loads((path / "classifier.json").read_text())
        cfg = ModelConfig(**info["model"])
        input_dim = None
        if PROCESSES[info["process"]].backbone == "embedding":  # (KeyError: an unknown process, reported below)
            input_dim = json.loads((Path(info["diffusion_run"]) / "config.json").read_text())["process"]["embed_dim"]
        model = NoisyClassifier(cfg, len(info["labels"]), input_dim)
        model.load_state_dict(load_file(str(path / "classifier.safetensors")))
    except FileNotFoundError as exc:
        raise CheckpointError(f"not a classifier directory: {path} ({Path(exc.filename).name} missing)") from None
    except (json.JSONDecodeError, KeyError, TypeError, SafetensorError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt classifier in {path}: {first_line(exc)}") from None
    return LoadedClassifier(model.to(device).eval(), info["labels"], info["diffusion_run"], info)


def classify(run, clf: LoadedClassifier, texts: list[str]) -> np.ndarray:
    """(N, num_labels) probabilities of clean texts (t = 0), each cut/padded to the run's context."""
    from ..data import Document

    rows = label_rows([Document(str(i), t, clf.labels[0]) for i, t in enumerate(texts)], clf.labels, run.tokenizer,
                      run.cfg.model.context)
    with torch.no_grad():
        x0 = torch.from_numpy(rows.tokens[:, 1:])
        logits = clf.model(_clean(run, x0), torch.zeros(len(x0)))
    return logits.softmax(-1).numpy()
