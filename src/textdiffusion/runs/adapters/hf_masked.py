"""Any transformers masked LM (``BertForMaskedLM``, ``ModernBertForMaskedLM``, ``RobertaForMaskedLM``,
...) as an absorbing-diffusion denoiser: the tokenizer's [MASK] is the absorbing state, and the
network runs through transformers itself (no remote code: ``trust_remote_code`` stays off).

A masked LM was trained to fill ~15% masks, not all of them, so it is a weak diffusion model, but
every masked sampler, infill, edit, serve and viz run on it. No KV cache (samplers with caches:
``--kv-cache none``); the model's context is its ``max_position_embeddings``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from ...config import Config, ModelConfig, ProcessConfig
from ...errors import CheckpointError, UsageError
from .common import Descriptor, token_id, tokenizer_of

CARD = {"description": "a transformers masked LM as an absorbing-diffusion denoiser",
        "generate": {"sampler": "confidence", "temperature": 0.0}}


def require_transformers():
    try:
        import transformers
    except ImportError:
        raise CheckpointError("this directory runs through transformers, which is not installed: "
                              "pip install 'textdiffusion[hf]'") from None
    return transformers


def described_config(raw: dict, vocab_size: int, context: int) -> ModelConfig:
    """Our ModelConfig describing a transformers network (context, vocabulary, sizes for reports)."""
    d = int(raw.get("hidden_size") or raw.get("n_embd") or raw.get("d_model") or 64)
    heads = int(raw.get("num_attention_heads") or raw.get("n_head") or 1)
    if d % heads or (d // heads) % 2:
        heads = 1
    return ModelConfig(n_layer=int(raw.get("num_hidden_layers") or raw.get("n_layer") or 1), n_head=heads,
                       d_model=d + d % 2, context=context, vocab_size=vocab_size, time_cond=False)


def key_padding(attn_mask: torch.Tensor | None, B: int, T: int) -> torch.Tensor | None:
    """A (B, T) 0/1 attention_mask from our (T, T) / (B, T, T) patterns: the keys anyone attends
    to (our samplers pass patterns only to hide right padding)."""
    if attn_mask is None:
        return None
    keys = attn_mask.any(-2)
    return keys.expand(B, T).long() if keys.dim() == 1 else keys.long()


def special_token(folder: Path, name: str) -> int | None:
    """The id of tokenizer_config.json's ``name`` (e.g. mask_token), via tokenizer.json."""
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get(name)
    if isinstance(value, dict):
        value = value.get("content")
    return token_id(folder, value) if isinstance(value, str) else None


class HFMaskedDenoiser(nn.Module):
    """tokens -> logits through a transformers masked LM (full attention, no cache)."""

    attn_mode = "full"

    def __init__(self, hf_model, cfg: ModelConfig):
        super().__init__()
        self.hf, self.cfg = hf_model, cfg

    def forward(self, tokens, t=None, *, kv_cache=None, positions=None, attn_mask=None, labels=None):
        if kv_cache is not None or positions is not None:
            raise UsageError("a transformers masked LM runs without a KV cache: pass --kv-cache none")
        mask = key_padding(attn_mask, *tokens.shape)
        return self.hf(input_ids=tokens, attention_mask=mask).logits.float()

    def num_params(self, non_embedding: bool = True) -> int:
        return sum(p.numel() for p in self.parameters())


def load(folder: Path, device="cpu", dtype: str | None = None, raw: dict | None = None):
    from . import hf_config
    from .common import hf_from_pretrained

    transformers = require_transformers()
    raw = raw or hf_config(folder)
    mask = special_token(folder, "mask_token")
    if mask is None:
        mask = token_id(folder, "[MASK]") if token_id(folder, "[MASK]") is not None else token_id(folder, "<mask>")
    if mask is None:
        raise CheckpointError(f"{folder}: the tokenizer has no mask token (a masked LM needs one)")
    eot = raw.get("sep_token_id") or raw.get("eos_token_id") or special_token(folder, "sep_token") or \
        special_token(folder, "eos_token")
    if eot is None:
        raise CheckpointError(f"{folder}: no end-of-text token (sep_token_id or eos_token_id in config.json)")
    desc = Descriptor("hf_masked", int(mask), int(eot), raw.get("pad_token_id"))
    hf = hf_from_pretrained(transformers.AutoModelForMaskedLM, folder, dtype)
    return transformers_run(folder, raw, desc, hf, HFMaskedDenoiser, "masked",
                            int(raw.get("max_position_embeddings") or 512), device)


def transformers_run(folder: Path, raw: dict, desc: Descriptor, hf, wrapper, process_name: str, context: int,
                     device):
    """The ``LoadedRun`` of a model transformers loaded, behind our ``wrapper`` module."""
    from ..loaded import LoadedRun
    from ...processes.registry import PROCESSES

    vocab = int(hf.get_output_embeddings().weight.shape[0])
    cfg = Config(model=described_config(raw, vocab, context), process=ProcessConfig(name=process_name))
    tokenizer = tokenizer_of(folder, desc, vocab, special_token(folder, "unk_token"))
    model = wrapper(hf, cfg.model).to(device).eval()
    process = PROCESSES[process_name].load().from_config(cfg.process, tokenizer)
    run = LoadedRun(folder, cfg, tokenizer, model, process, f"transformers:{type(hf).__name__}")
    run.descriptor = desc
    return run
