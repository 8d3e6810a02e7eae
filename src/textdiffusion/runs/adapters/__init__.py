"""Public checkpoints through our samplers: one file per model family, each a small
``Descriptor`` (architecture, mask id, logits shift, attention, RoPE, special ids) plus a
weight-name map onto a model module of ours, so every command (generate, infill, edit, serve,
viz, eval) and every sampler that fits runs on a local directory of the real weights.

    llada.py        LLaDA / LLaDA-1.5 / iLLaDA (OLMo-style config and keys)
    dream.py        Dream / Dream-Coder / DiffuCoder (Qwen2 keys; logits shifted by one)
    mdlm.py         MDLM's Hugging Face release (hf_dit: a DiT with adaLN, under backbone.)
    bd3lm.py        BD3-LM's (the same DiT; block diffusion: block-causal attention, an exact KV cache)
    sedd.py         SEDD's release (the same DiT, no prefix; a log score; its hydra config.json)
    hf_masked.py    any transformers masked LM (BERT, ModernBERT, ...) as an absorbing-diffusion denoiser
    hf_causal.py    any transformers causal LM (LLaMA, Qwen2, GPT-2, ...) as an AR model
    qwen2.py        the LLaMA / Mistral / Qwen2 layout (Dream's and hf_causal's native models)
    gpt2.py         GPT-2's layout (learned positions, Conv1D weights: hf_causal's native GPT-2)
    exported.py     our own models saved for transformers (``export --format transformers``)

This module stays import-light (json only): ``detect`` runs before torch loads.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import CheckpointError

FAMILIES = ("exported", "llada", "dream", "mdlm", "bd3lm", "sedd", "hf_masked", "hf_causal")


def _is_sedd(raw: dict) -> bool:
    """SEDD's config.json is its training config: tokens, graph, noise and model sections."""
    return "tokens" in raw and isinstance(raw.get("graph"), dict) and isinstance(raw.get("model"), dict)


def hf_config(folder: str | Path) -> dict | None:
    """A folder's config.json when it is not one of our run directories (None otherwise)."""
    path = Path(folder) / "config.json"
    if not path.is_file() or (Path(folder) / "checkpoint").is_dir():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or not ("model_type" in raw or "architectures" in raw or _is_sedd(raw)):
        return None  # our own config.json (a run directory being written, or a bare config)
    return raw


def detect(folder: str | Path) -> str | None:
    """Which adapter reads this folder (None: one of our run directories or saved models)."""
    raw = hf_config(folder)
    if raw is None:
        return None
    model_type = str(raw.get("model_type", "")).lower()
    arch = " ".join(raw.get("architectures") or [])
    if model_type == "textdiffusion":
        return "exported"
    if model_type == "llada" or "LLaDA" in arch:
        return "llada"
    if model_type == "dream" or "Dream" in arch:
        return "dream"
    if model_type == "mdlm" or "MDLM" in arch.split():
        return "mdlm"
    if model_type == "bd3lm" or "BD3LM" in arch.split():
        return "bd3lm"
    if _is_sedd(raw):
        return "sedd"
    if "MaskedLM" in arch:
        return "hf_masked"
    if "CausalLM" in arch or "LMHeadModel" in arch:
        return "hf_causal"
    raise CheckpointError(f"{folder}: no adapter reads model_type {raw.get('model_type')!r} "
                          f"(architectures {arch or 'none'}); textdiffusion runs LLaDA, Dream, MDLM, BD3-LM, SEDD, transformers "
                          f"masked and causal LMs and its own models")


def card_for(folder: str | Path) -> dict:
    """The sampling defaults of a public model's family (what its authors decode with)."""
    family = detect(folder)
    if family is None:
        return {}
    return dict(_module(family).CARD)


def _module(family: str):
    import importlib

    return importlib.import_module(f"{__name__}.{family}")


def load_adapted(folder: str | Path, device="cpu", dtype: str | None = None):
    """A ``LoadedRun`` for a folder an adapter reads (``dtype``: None keeps the stored precision)."""
    family = detect(folder)
    if family is None:
        raise CheckpointError(f"{folder} is not a transformers model directory")
    module = _module(family)
    if hasattr(module, "load"):  # a family with its own loading (transformers itself, our exports, ...)
        return module.load(Path(folder), device=device, dtype=dtype)
    from .common import load_family

    return load_family(module, Path(folder), device, dtype)
