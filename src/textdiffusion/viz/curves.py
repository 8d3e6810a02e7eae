"""Training curves of runs (the ``viz`` extra's matplotlib): validation loss (solid, with the best
point marked) and training loss (faint) against epochs, read from each run's metrics.jsonl.
``textdiffusion train`` writes RUN/curves.png at the end; ``textdiffusion viz --curves RUN...``
draws any runs side by side (a diffusion model and its AR twin on one axis)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError


@dataclass
class Curves:
    name: str
    train: list[tuple[int, float, float]] = field(default_factory=list)  # (step, epoch, loss nats/token)
    val: list[tuple[int, float, float]] = field(default_factory=list)  # (step, epoch, val loss nats/token)

    @property
    def best(self) -> tuple[int, float, float] | None:
        return min(self.val, key=lambda r: r[2]) if self.val else None


def read_curves(run_dir: str | Path) -> Curves:
    """The logged training and validation losses of a run (lines cut short by a crash are skipped).
    Runs logged before epochs were recorded are drawn against steps."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UsageError(f"{run_dir} has no metrics.jsonl: is it a training run directory? (shipped and exported "
                         f"models keep no curves)")
    curves = Curves(run_dir.name if run_dir.name not in ("", ".") else str(run_dir))
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        epoch = record.get("epoch", float(record["step"]))
        for key, into in (("loss", curves.train), ("val_loss", curves.val)):
            value = record.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                into.append((record["step"], float(epoch), float(value)))
    if not curves.val and not curves.train:
        raise UsageError(f"{path} holds no logged losses yet (train for train.log_every steps first)")
    return curves


def write_curves(runs: list[str | Path], path: str | Path, title: str | None = None) -> Path:
    """One PNG: each run's validation loss in bits/token against epochs (training loss faint, the
    best validation marked and labelled with its value and epoch)."""
    from .images import _pyplot

    plt = _pyplot()
    all_curves = [read_curves(r) for r in runs]
    has_epochs = all("epoch" in (Path(r) / "metrics.jsonl").read_text(errors="replace") for r in runs)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for i, c in enumerate(all_curves):
        colour = f"C{i}"
        bits = 1.0 / math.log(2)
        if c.train:
            ax.plot([r[1] for r in c.train], [r[2] * bits for r in c.train], color=colour, alpha=0.25, lw=1,
                    label=f"{c.name} train")
        if c.val:
            ax.plot([r[1] for r in c.val], [r[2] * bits for r in c.val], color=colour, lw=2, marker="o", ms=3,
                    label=f"{c.name} validation")
            step, epoch, loss = c.best
            ax.plot([epoch], [loss * bits], marker="*", ms=14, color=colour, mec="black")
            ax.annotate(f"best {loss * bits:.3f} (step {step})", (epoch, loss * bits), textcoords="offset points",
                        xytext=(6, 8), fontsize=8, color=colour)
    ax.set_xlabel("epochs (training data seen)" if has_epochs else "steps")
    ax.set_ylabel("loss, bits/token (diffusion: the training bound)")
    ax.set_title(title or "training curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
