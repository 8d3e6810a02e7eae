"""Runs: what a trained run is and how one is written and read back, below every command that
samples, trains, evaluates or serves one.

* ``loaded.py``: ``LoadedRun`` (config, tokenizer, the model and its process) and ``build_model``;
* ``checkpoint.py``: the checkpoint files (weights, optimizer, RNG states) training writes;
* ``adapters/``: public checkpoints (LLaDA, Dream, MDLM, BD3-LM, SEDD, transformers models, our own
  exports) read into the same ``LoadedRun``;
* ``shipped.py``: the models shipped in the package, by name, and their cards as written;
* here: ``load_run`` (any of those by path or name), ``read_run``, ``portable``, ``load_named``.

Importing this package loads no torch (the CLI checks names and paths first).

A run directory holds::

    config.json        the full Config (model, process, data, train)
    tokenizer.json     the tokenizer, so the run needs nothing else to sample or evaluate
    metrics.jsonl      one JSON object per logged step / validation
    labels.json        class names (runs trained with labels)
    checkpoint/        the latest checkpoint (runs/checkpoint.py)
    best/              the weights of the lowest validation loss, a model folder of its own
    curves.png         the validation curve, drawn when `textdiffusion train` ends
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config
from ..errors import CheckpointError, ConfigError, TokenizerError
from .shipped import DEFAULT, read_card, resolve, shipped_models

if TYPE_CHECKING:
    import torch

    from ..tokenizers import Tokenizer
    from .loaded import LoadedRun

__all__ = ["DEFAULT", "DTYPES", "LoadedRun", "build_model", "load_named", "load_run", "portable", "read_card",
           "read_run", "resolve", "shipped_models"]


def __getattr__(name: str):
    """``DTYPES``, ``LoadedRun`` and ``build_model`` from loaded.py, imported (with torch) when asked for."""
    if name in ("DTYPES", "LoadedRun", "build_model"):
        from . import loaded

        return getattr(loaded, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_run(run_dir: str | Path) -> tuple[Config, Tokenizer]:
    """Config and tokenizer of a run directory, with one-line errors for anything wrong."""
    from ..tokenizers import load_tokenizer

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory not found: {run_dir}")
    try:
        cfg = Config.load(run_dir / "config.json")
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir} has no config.json (is it a textdiffusion run directory?)") from None
    except (json.JSONDecodeError, ConfigError, TypeError) as exc:
        raise CheckpointError(f"{run_dir}/config.json is corrupt: {exc}") from None
    try:
        tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    except TokenizerError as exc:
        raise CheckpointError(str(exc)) from None
    return cfg, tokenizer


def portable(cfg):
    """A copy of ``cfg`` without this machine's paths: the training data and the run it was
    fine-tuned from keep only their names (``eval --data`` matches an exported model's data by
    file name, so scoring the same corpus elsewhere still scores its held-out split)."""
    import copy

    cfg = copy.deepcopy(cfg)
    if cfg.data.path and cfg.data.path != "stdlib":
        cfg.data.path = Path(cfg.data.path).name
    if cfg.train.init:
        cfg.train.init = Path(cfg.train.init).name
    return cfg


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", dtype: str | None = None) -> LoadedRun:
    """A run directory, a saved model, a shipped model's name (``english``, ``code``: as on the
    command line, the name wins over a folder of that name, which ``./english`` reads), or a public
    model's directory (transformers layout: LLaDA, Dream, masked and causal LMs, our own
    transformers exports; runs/adapters). ``dtype`` (public models only): the weights'
    precision, None = as stored."""
    from .adapters import detect, load_adapted
    from .checkpoint import checkpoint_dir, load_weights
    from .loaded import LoadedRun, build_model

    try:
        run_dir = resolve(run_dir)
    except FileNotFoundError as exc:  # neither a path nor a shipped name: the names it could have been
        raise CheckpointError(str(exc)) from None

    if run_dir.is_dir() and detect(run_dir) is not None:
        return load_adapted(run_dir, device, dtype)
    cfg, tokenizer = read_run(run_dir)
    if cfg.model.vocab_size != tokenizer.vocab_size:
        raise CheckpointError(
            f"{run_dir}: tokenizer has {tokenizer.vocab_size} tokens but the model expects {cfg.model.vocab_size}"
        )
    model, process = build_model(cfg, tokenizer)
    weights = load_weights(model, checkpoint_dir(run_dir))
    model.to(device).eval()
    return LoadedRun(run_dir, cfg, tokenizer, model, process, weights)


def load_named(name_or_dir: str | Path | None = None, device: str = "cpu", threads: int | None = None) -> LoadedRun:
    """The run of a shipped model's name (None: the default), a run directory or a saved model,
    on ``device`` ("auto": a GPU if there is one), with torch's CPU threads set as ``threads``
    asks (``runtime.api_threads``): what ``Pipeline.from_pretrained`` and lm_eval's model load
    (its card: ``sampling.cards.card(run.run_dir)``)."""
    from ..errors import UsageError
    from ..runtime import api_threads, resolve_device

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
        raise UsageError(f"threads must be a whole number >= 0 (0: the cores not already busy); got {threads!r}")
    folder = resolve(name_or_dir)
    api_threads(threads)
    return load_run(folder, resolve_device(device))
