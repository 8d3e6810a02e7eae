"""textdiffusion: train, sample, steer and measure text diffusion language models.

Start-up stays lean: heavy modules (torch, tokenizers) load when first used.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_run"]


def load_run(run_dir, device="cpu"):
    """Load a trained run directory: ``.model``, ``.objective``, ``.tokenizer``, ``.cfg``."""
    from .training.checkpoint import load_run as _load_run

    return _load_run(run_dir, device)
