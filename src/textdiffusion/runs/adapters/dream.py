"""Dream, Dream-Coder and DiffuCoder (Ye et al. 2025; Qwen2.5 initialised): Qwen2's config and
weight names onto our Transformer. RMSNorm, SwiGLU, biases on q/k/v, RoPE (theta 1e6),
grouped-query attention; bidirectional; mask id 151666 (``<|mask|>``); its logits are
**shifted by one** (position i's logits predict token i + 1, kept from its AR start): our module
shifts them back (``ModelConfig.logits_shift``), so every sampler reads position i's own logits.

config.json keys read: hidden_size, num_attention_heads, num_key_value_heads, num_hidden_layers,
intermediate_size, vocab_size, max_position_embeddings, rope_theta, rms_norm_eps,
tie_word_embeddings, eos_token_id, pad_token_id, mask_token_id (else the tokenizer's ``<|mask|>``).
Weights: model.embed_tokens, model.layers.{i}.{input_layernorm, post_attention_layernorm,
self_attn.{q,k,v}_proj (weight, bias), self_attn.o_proj, mlp.{gate,up,down}_proj}, model.norm, lm_head.
"""

from __future__ import annotations

from pathlib import Path

from .common import Descriptor, build_run, config_value, token_id
from .qwen2 import model_config as qwen2_config
from .qwen2 import rename

MASK_ID = 151666
# Dream's README decodes with the entropy order, its own reveal count, temperature 0.2, top-p 0.95
CARD = {"description": "Dream (masked diffusion from Qwen2.5, logits shifted by one)",
        "generate": {"sampler": "entropy", "schedule": "dream", "temperature": 0.2, "top_p": 0.95}}


def describe(raw: dict, folder: Path) -> Descriptor:
    mask = raw.get("mask_token_id")
    if mask is None:
        mask = token_id(folder, "<|mask|>")
    eot = config_value(raw, "eos_token_id", default=151643)
    return Descriptor("dream", int(MASK_ID if mask is None else mask), int(eot), raw.get("pad_token_id"),
                      logits_shift=1, rope_base=float(raw.get("rope_theta", 1e6)))


def load(folder: Path, device="cpu", dtype: str | None = None, raw: dict | None = None):
    from . import hf_config

    raw = raw or hf_config(folder)
    cfg = qwen2_config(raw, folder, logits_shift=1)
    return build_run(folder, describe(raw, folder), cfg, rename(folder), device, dtype)
