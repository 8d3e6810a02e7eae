"""textdiffusion: train, sample, steer and measure text diffusion language models.

    from textdiffusion import Pipeline
    pipe = Pipeline.from_pretrained("runs/shakespeare")
    print(pipe.generate("ROMEO:", length=64, steps=32).text)

Start-up stays lean: heavy modules (torch, tokenizers) load when first used.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Pipeline", "Result", "__version__", "load_run"]


def load_run(run_dir, device="cpu"):
    """Load a trained run directory: ``.model``, ``.process``, ``.tokenizer``, ``.cfg``."""
    from .runs import load_run as _load_run

    return _load_run(run_dir, device)


def _hook_others() -> None:
    """Our config and model join transformers' Auto classes when transformers is imported, and
    our model lm_eval's registry (``--model textdiffusion``) when lm_eval's registry is."""
    from .integrations.hf import register_when_imported
    from .integrations.hooks import when_imported

    register_when_imported()
    when_imported("lm_eval.api.registry", _register_lm_eval)


def _register_lm_eval() -> None:
    from .integrations.harness import register

    register()


_hook_others()


def __getattr__(name: str):
    if name in ("Pipeline", "Result"):  # imported on first use: `import textdiffusion` stays light
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'textdiffusion' has no attribute {name!r}")
