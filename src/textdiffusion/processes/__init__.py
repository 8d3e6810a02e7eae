"""Forward processes: one file per corruption, each a small class with the same interface
(``loss``, ``nelbo``, and for diffusion ``prior``/``corrupt``). The AR twin's objective shares it."""

from __future__ import annotations

from ..config import ProcessConfig
from .base import LossOutput
from .masked import MaskedProcess


def build_process(cfg: ProcessConfig, vocab_size: int, mask_id: int):
    """Choose the objective class once, from the config."""
    if cfg.name == "masked":
        return MaskedProcess(vocab_size, mask_id, schedule=cfg.schedule, antithetic=cfg.antithetic)
    if cfg.name == "ar":
        from ..models.autoregressive import AutoregressiveObjective

        return AutoregressiveObjective()
    raise ValueError(f"unknown process {cfg.name!r}")


def attn_mode(cfg: ProcessConfig) -> str:
    """The attention the backbone needs for this process."""
    return "causal" if cfg.name == "ar" else "full"


__all__ = ["LossOutput", "MaskedProcess", "attn_mode", "build_process"]
