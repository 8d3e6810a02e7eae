"""Views of a generation as it happens (terminal) or after the fact."""

from .terminal import TerminalWatch

__all__ = ["TerminalWatch"]
