"""BD3-LM (Arriola et al. 2025), kuleshov-group/bd3lms' Hugging Face release: MDLM's DiT (mdlm.py:
the same weight names under ``backbone.``) trained for block diffusion, so it runs as our
``block`` process with ``process.block_size`` from its config: each block attends to itself and
to the clean blocks before it, decoded left to right with an exact KV cache of finished blocks
(the ``block`` sampler); the mask is the last id. ``adaln`` off (plain pre-norm blocks) is read
too; ``causal`` attention and ``time_conditioning`` are refused.

config.json keys read: block_size, hidden_dim, cond_dim, n_blocks, n_heads, model_length,
vocab_size, adaln, causal, time_conditioning (cross_attn, attn_backend, var_min and the
sampling_eps bounds concern training only).
"""

from __future__ import annotations

from pathlib import Path

from ...config import ModelConfig
from ...errors import CheckpointError
from . import mdlm
from .common import Descriptor, config_value

# BD3-LM decodes block by block, ancestral steps inside each block, with its KV cache
CARD = {"description": "BD3-LM (block diffusion, DiT backbone)", "generate": {"sampler": "block"}}


def describe(raw: dict, folder: Path) -> Descriptor:
    size = int(config_value(raw, "block_size", folder=folder))
    return mdlm.describe(raw, folder, "bd3lm", process="block", block_size=size)


def model_config(raw: dict, folder: Path) -> ModelConfig:
    if raw.get("causal"):
        raise CheckpointError(f"{folder}: a BD3-LM with causal attention inside blocks is not supported")
    return mdlm.model_config(raw, folder, adaln=bool(raw.get("adaln", True)), name="BD3-LM")


rename = mdlm.rename
