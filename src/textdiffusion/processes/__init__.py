"""Forward processes: one file per corruption, each a small class with the same interface
(``base.Process``: ``loss``, ``nelbo``, ``prior``, ``corrupt`` and capability attributes). The
AR twin's objective (autoregressive.py) is a ``base.Objective``: ``loss`` and ``nelbo``, so the
trainer and evaluation treat both alike."""

from __future__ import annotations

from .base import LossOutput
from .gaussian import GaussianProcess
from .masked import MaskedProcess
from .score_entropy import ScoreEntropyProcess
from .uniform import UniformProcess

__all__ = ["GaussianProcess", "LossOutput", "MaskedProcess", "ScoreEntropyProcess", "UniformProcess"]
