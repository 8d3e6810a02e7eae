"""The ``textdiffusion`` command: one module per command, each with ``NAME``, ``PARSER`` (its
help), ``add_arguments(parser)`` and ``main(args)``, a thin call into the library. This table
lists them, in ``--help`` order; ``app.py`` builds the parser and turns errors into messages."""

from __future__ import annotations

COMMANDS = ("generate", "export", "models", "train", "sample", "eval", "infill", "edit", "train_classifier", "chat")

from .app import build_parser, main  # noqa: E402  (app reads COMMANDS)

__all__ = ["COMMANDS", "build_parser", "main"]
