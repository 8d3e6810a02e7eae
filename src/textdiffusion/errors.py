"""The project's own error types (no torch here: the command line imports them first).

Each is bad input or a state the user can fix: the CLI prints its message as one line and exits
2 (an HTTP server answers 4xx). Anything else that escapes is a bug, reported as one, with
``--debug`` for the traceback. All are ValueErrors, so code that catches ValueError still works.
"""

from __future__ import annotations


def first_line(exc: BaseException, default: str | None = None) -> str:
    """An exception's message cut to its first line (``default``, else its type's name, when it
    has none): what one-line errors show of an error raised by a library."""
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return type(exc).__name__ if default is None else default


class TextDiffusionError(ValueError):
    """Bad input or a fixable state, named with its fix in one line."""


class UsageError(TextDiffusionError):
    """A bad argument, option, template or request."""


class ConfigError(TextDiffusionError):
    """A bad configuration value."""


class DataError(TextDiffusionError):
    """Missing, unreadable or empty data."""


class TokenizerError(TextDiffusionError):
    """A tokenizer file that cannot be used."""


class CheckpointError(TextDiffusionError):
    """A missing or corrupt run directory or checkpoint."""


class TrainingError(TextDiffusionError, FloatingPointError):
    """Training cannot go on (a non-finite loss); the last checkpoint is untouched."""
