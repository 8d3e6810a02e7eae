"""Forward processes: one file per corruption, each a small class with the same interface
(``base.Process``: ``loss``, ``nelbo``, ``prior``, ``corrupt`` and capability attributes). The
AR twin's objective (autoregressive.py) is a ``base.Objective``: ``loss`` and ``nelbo``, so the
trainer and evaluation treat both alike. ``registry.py`` lists them all (no torch); the classes
load on first use."""

from __future__ import annotations

import importlib

from .registry import NAMES, PROCESSES

_LAZY = {"LossOutput": ".base", "GaussianProcess": ".gaussian", "MaskedProcess": ".masked",
         "ScoreEntropyProcess": ".score_entropy", "UniformProcess": ".uniform"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["NAMES", "PROCESSES", *_LAZY]
