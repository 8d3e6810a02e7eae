"""The command line's entry point: the parser built from the table of commands, and the one place
errors turn into messages. Bad input (the project's own error types, OSError, out of memory) is
one line and exit 2; anything else is a bug, reported as one (exit 70), with --debug for its
traceback."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from pathlib import Path

from . import COMMANDS

EXAMPLES = """examples:
  textdiffusion train --data stdlib --out runs/q --config configs/quickstart.toml
  textdiffusion train --data input.txt --out runs/ar --process ar --set train.max_steps=500
  textdiffusion sample runs/q --prompt "def " --num 4 --steps 64 --sampler confidence
  textdiffusion eval runs/q --data stdlib --judge runs/ar --json
  textdiffusion infill runs/q "def add(a, b):\n    return [MASK:6]\n"
  textdiffusion edit runs/q --text "x = [EDIT]compute(y)[/EDIT] + 1" --strength 0.7
"""



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textdiffusion",
        description="Train, sample and evaluate text diffusion language models, beside an "
                    "autoregressive twin on the same backbone.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"textdiffusion {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print the full traceback of any error (also: TEXTDIFFUSION_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for name in COMMANDS:
        module = importlib.import_module(f".{name}", __package__)
        p = sub.add_parser(module.NAME, **module.PARSER)
        module.add_arguments(p)
        p.set_defaults(func=module.main)
    return parser


def _out_of_memory(exc: BaseException) -> bool:
    """torch's out-of-memory errors (CUDA's OutOfMemoryError is a RuntimeError; the CPU allocator's
    is a plain RuntimeError naming the allocation)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from ..errors import TextDiffusionError, first_line

    debug = args.debug or bool(os.environ.get("TEXTDIFFUSION_DEBUG"))
    try:
        if getattr(args, "sampler", None) is not None:  # a name the registry answers without torch
            from ..sampling.registry import spec

            spec(args.sampler)
        from ..limits.budget import time_limit
        from ..sampling.registry import options_named

        with time_limit(getattr(args, "max_seconds", None)), options_named("flag"):
            return args.func(args)
    except KeyboardInterrupt as exc:  # Ctrl-C; in training also SIGTERM and SIGHUP (trainer.Interrupted)
        signum = getattr(exc, "signum", signal.SIGINT)
        saved = args.command == "train" and any((Path(args.out) / d / "state.json").exists()
                                                for d in ("checkpoint", "checkpoint.old"))
        hint = f"; continue with: {_resume_command(args)}" if saved else ""
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        print(f"textdiffusion: {what}{hint}", file=sys.stderr)
        return 128 + signum  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP
    except (TextDiffusionError, OSError) as exc:  # bad input or a fixable state: one line
        if debug:
            raise
        message = first_line(exc)
        if isinstance(exc, OSError) and exc.filename:
            message = f"{exc.strerror}: {exc.filename}"
        print(f"textdiffusion: error: {message}", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            raise
        if _out_of_memory(exc):
            print("textdiffusion: error: out of memory: use a smaller --num / batch size, a shorter --length, "
                  "or a smaller model", file=sys.stderr)
            return 2
        first = first_line(exc, default="")
        print(f"textdiffusion: internal error (a bug, not your input): {type(exc).__name__}: {first}\n"
              f"  rerun with --debug for the traceback, and please report it", file=sys.stderr)
        return 70  # EX_SOFTWARE


def _resume_command(args) -> str:
    """The command that continues an interrupted training run (resume takes the saved config, so
    --data, --process, --config, --sft, --labels and --init are not repeated)."""
    import shlex

    words = ["textdiffusion", "train", "--out", str(args.out), "--resume"] + (["--quiet"] if args.quiet else [])
    return " ".join(shlex.quote(w) for w in words)
