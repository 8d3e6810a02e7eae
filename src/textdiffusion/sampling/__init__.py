"""Samplers: one file per family, each a state machine over rows (``base.Sampler``: ``start``
makes the rows, ``step`` advances them with one network call, ``generate`` is the shared loop).

``registry`` lists every sampler (name, the processes it fits, its options) and builds them:
``build_sampler(name, process, tokenizer, **options)``. Importing this package loads no torch;
the sampler classes load on first use.
"""

from __future__ import annotations

import importlib

from .registry import DEFAULTS, SAMPLERS, build_sampler

_LAZY = {  # name -> module that defines it
    "AncestralSampler": ".ancestral", "EulerSampler": ".ancestral", "TauLeapingSampler": ".ancestral",
    "AutoregressiveSampler": ".autoregressive", "BlockDiffusionSampler": ".blocks",
    "SemiAutoregressiveSampler": ".blocks", "ThresholdSampler": ".blocks", "ContinuousSampler": ".continuous",
    "DDIMSampler": ".continuous", "RemaskingSampler": ".remasking", "ReMDMSampler": ".remasking",
    "Generation": ".base", "StepOutput": ".base",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULTS", "SAMPLERS", "build_sampler", *_LAZY]
