"""textdiffusion train-classifier: train a classifier of a run's noisy inputs (classifier guidance)."""

from __future__ import annotations

import argparse
import sys

from ..config import MAX_LR
from .common import (
    POSITIVE,
    positive_number,
)

NAME = "train-classifier"
PARSER = dict(help="train a classifier of a run's noisy inputs (classifier guidance)",
              description="Train a classifier p(label | x_t) on the noisy inputs of a diffusion run (masked, "
                          "uniform, SEDD or Gaussian), from JSONL of {\"text\", \"label\"}; then steer the "
                          "run with sample/infill/edit --classifier DIR --label NAME --guidance W.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="the diffusion run the classifier will guide")
    p.add_argument("--data", required=True, help="JSONL file of {\"text\", \"label\"} records")
    p.add_argument("--out", required=True, help="classifier directory to create")
    p.add_argument("--steps", type=POSITIVE, default=300, help="optimisation steps (default 300)")
    p.add_argument("--batch-size", type=POSITIVE, default=32, help="documents per step (default 32)")
    p.add_argument("--lr", type=positive_number(MAX_LR, " (typical: 1e-4 to 1e-2)"), default=1e-3,
                   help="peak learning rate (default 1e-3)")
    p.add_argument("--layers", type=POSITIVE, default=None, help="transformer layers (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args) -> int:
    from ..training.classifier import train_classifier

    info = train_classifier(args.run, args.data, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            layers=args.layers, seed=args.seed, progress=not args.quiet)
    acc = ", ".join(f"t={t}: {a:.3f}" for t, a in info["val_accuracy_at_t"].items())
    print(f"classifier of {len(info['labels'])} labels saved in {args.out}; validation accuracy {acc}", file=sys.stderr)
    return 0
