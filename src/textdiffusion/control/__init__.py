"""Control: infilling templates and span editing (infill.py), chat with instruction-tuned runs (chat.py),
labels and classifier-free guidance (guidance.py)."""

from .chat import chat, conversation
from .guidance import Conditioned, guided_model
from .infill import ControlResult, Hole, Template, edit, infill, split_marked

__all__ = ["Conditioned", "guided_model", "ControlResult", "Hole", "Template", "chat", "conversation", "edit", "infill", "split_marked"]
