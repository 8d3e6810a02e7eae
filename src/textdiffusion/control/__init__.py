"""Control: templates and edit spans (templates.py, no torch), continuing a prompt
(continuation.py), infilling (filling.py), span
editing (editing.py), the bits of a text (scoring.py), chat with instruction-tuned runs
(dialogue.py), labels and classifier-free guidance (guidance.py). The torch-bound parts load on
first use."""

from __future__ import annotations

import importlib

from .templates import Hole, Template, has_holes, split_marked

_LAZY = {"chat": ".dialogue", "conversation": ".dialogue", "Conditioned": ".guidance", "guided_model": ".guidance",
         "ControlResult": ".filling", "infill": ".filling", "edit": ".editing",
         "continue_prompt": ".continuation", "prompt_task": ".continuation",
         "sequence_bits": ".scoring"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Hole", "Template", "has_holes", "split_marked", *_LAZY]
