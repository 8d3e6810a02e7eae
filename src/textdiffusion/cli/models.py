"""textdiffusion models: list the shipped models."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "models"
PARSER = dict(help="list the shipped models")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")


def main(args) -> int:
    from ..sampling.cards import available

    models = available()
    if args.json:
        print(json.dumps(models))
    elif not models:
        print("no shipped models are installed; any run directory works with --model DIR", file=sys.stderr)
    else:
        for name, info in models.items():
            print(f"{name:10s} {info.get('description', '')}  ({info['path']})")
    return 0
