"""LLaDA, LLaDA-1.5 and iLLaDA (Nie et al. 2025): an OLMo-style config and weight names onto our
Transformer. RMSNorm, SwiGLU, RoPE (theta 500000), no biases, an untied head; bidirectional;
logits not shifted (position i predicts token i); mask id 126336 (``<|mdm_mask|>``; 5 in iLLaDA).

config.json keys read: d_model, n_heads, n_kv_heads, n_layers, mlp_hidden_size (or mlp_ratio),
embedding_size / vocab_size, max_sequence_length, rope_theta, rms_norm_eps, weight_tying,
eos_token_id, mask_token_id (else the tokenizer's ``<|mdm_mask|>``, else 126336).
Weights: model.transformer.{wte, blocks.{i}.{attn_norm, ff_norm, q_proj, k_proj, v_proj, attn_out,
ff_proj, up_proj, ff_out}, ln_f, ff_out}.weight
"""

from __future__ import annotations

import re
from pathlib import Path

from ...config import ModelConfig
from ...errors import CheckpointError
from .common import Descriptor, config_value, token_id, unknown_key

MASK_ID = 126336
# LLaDA's authors decode with low-confidence remasking in blocks of 32, greedy, one token per step
CARD = {"description": "LLaDA (masked diffusion, 8B family)",
        "generate": {"sampler": "semi-ar", "block_length": 32, "temperature": 0.0}}

_BLOCK = {"attn_norm": "norm1.weight", "ff_norm": "norm2.weight", "attn_out": "attn.proj.weight",
          "ff_proj": "mlp.fc.weight", "up_proj": "mlp.up.weight", "ff_out": "mlp.proj.weight"}
_QKV = {"q_proj": "q", "k_proj": "k", "v_proj": "v"}


def describe(raw: dict, folder: Path) -> Descriptor:
    mask = raw.get("mask_token_id")
    if mask is None:
        mask = token_id(folder, "<|mdm_mask|>")
    eot = config_value(raw, "eos_token_id", default=126081)
    return Descriptor("llada", int(MASK_ID if mask is None else mask), int(eot), raw.get("pad_token_id"),
                      rope_base=float(raw.get("rope_theta", 500000.0)))


def model_config(raw: dict, folder: Path) -> ModelConfig:
    if raw.get("block_type", "llama") != "llama":
        raise CheckpointError(f"{folder}: LLaDA block_type {raw['block_type']!r} is not supported (only 'llama')")
    if raw.get("include_bias") or raw.get("scale_logits") or raw.get("input_emb_norm") or raw.get("attention_layer_norm"):
        raise CheckpointError(f"{folder}: this LLaDA variant (biases, scaled logits, embedding norm or q/k norms) "
                              f"is not supported")
    d = int(config_value(raw, "d_model", folder=folder))
    return ModelConfig(
        n_layer=int(config_value(raw, "n_layers", folder=folder)), n_head=int(config_value(raw, "n_heads", folder=folder)),
        d_model=d, context=int(raw.get("max_sequence_length", 4096)), vocab_size=int(config_value(
            raw, "embedding_size", "vocab_size", folder=folder)),
        norm="rms", norm_eps=float(raw.get("rms_norm_eps", 1e-5)), mlp="swiglu",
        mlp_hidden=int(raw.get("mlp_hidden_size") or raw.get("mlp_ratio", 4) * d),
        n_kv_head=int(raw.get("n_kv_heads") or 0), qkv_bias=bool(raw.get("include_qkv_bias", False)),
        rope_base=float(raw.get("rope_theta", 500000.0)), tie_embeddings=bool(raw.get("weight_tying", False)),
        time_cond=False)


def rename(folder: Path):
    block = re.compile(r"model\.transformer\.blocks\.(\d+)\.(\w+)\.(weight|bias)$")

    def mapped(key: str):
        if key == "model.transformer.wte.weight":
            return "embed.weight", ""
        if key == "model.transformer.ln_f.weight":
            return "norm.weight", ""
        if key == "model.transformer.ff_out.weight":
            return "head.weight", ""
        m = block.match(key)
        if m:
            i, name, kind = m.groups()
            if name in _QKV:
                return f"blocks.{i}.attn.qkv.{kind}", _QKV[name]
            if name in _BLOCK and kind == "weight":
                return f"blocks.{i}.{_BLOCK[name]}", ""
        if "rotary" in key or key.endswith("inv_freq"):
            return None
        unknown_key(folder, key)

    return mapped
