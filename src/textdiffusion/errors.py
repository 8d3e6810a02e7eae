"""The project's own error types (no torch here: the command line imports them first).

Each is bad input or a state the user can fix: the CLI prints its message as one line and exits
2 (an HTTP server answers 4xx). Anything else that escapes is a bug, reported as one, with
``--debug`` for the traceback. All are ValueErrors, so code that catches ValueError still works.
"""

from __future__ import annotations


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
