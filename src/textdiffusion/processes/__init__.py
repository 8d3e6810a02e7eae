"""Forward processes: one file per corruption, each a small class with the same interface
(``loss``, ``nelbo``, ``prior``, ``corrupt``). The AR twin's objective (models/autoregressive.py)
shares ``loss`` and ``nelbo``, so the trainer and evaluation treat both alike."""

from __future__ import annotations

from .base import LossOutput
from .gaussian import GaussianProcess
from .masked import MaskedProcess
from .score_entropy import ScoreEntropyProcess
from .uniform import UniformProcess

__all__ = ["GaussianProcess", "LossOutput", "MaskedProcess", "ScoreEntropyProcess", "UniformProcess"]
