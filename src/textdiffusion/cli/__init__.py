"""The ``textdiffusion`` command: one module per command, each with ``NAME``, ``PARSER`` (its
help), ``add_arguments(parser)`` and ``main(args)``, a thin call into the library. This table
lists them, in ``--help`` order; ``app.py`` builds the parser and turns errors into messages.

``run`` is the installed command's entry point: it imports nothing before Ctrl-C is handled
(interrupts.py), so Ctrl-C at any moment of start-up is one line, not a traceback."""

from __future__ import annotations

import sys

COMMANDS = ("generate", "export", "models", "train", "sample", "eval", "infill", "edit", "train_classifier", "chat",
            "serve", "viz", "lm_eval_cmd")

__all__ = ["COMMANDS", "build_parser", "main", "run"]


def main(argv: list[str] | None = None) -> int:
    from .app import main as _main

    return _main(argv)


def build_parser():
    from .app import build_parser as _build_parser

    return _build_parser()


def run() -> None:
    """``textdiffusion`` on the command line."""
    from .interrupts import install, shutting_down

    install()
    try:
        code = main()
    except KeyboardInterrupt:  # before the command's own handling began (still starting up)
        print("textdiffusion: interrupted", file=sys.stderr)
        code = 130
    if shutting_down() and code == 0:  # a Ctrl-C that came while the last import finished
        print("textdiffusion: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
