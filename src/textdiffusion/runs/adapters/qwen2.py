"""The LLaMA / Qwen2 layout (shared by Dream and by transformers' LlamaForCausalLM and
Qwen2ForCausalLM): config and weight names onto our Transformer."""

from __future__ import annotations

import re
from pathlib import Path

from ...config import ModelConfig
from ...errors import CheckpointError
from .common import config_value, unknown_key

_LAYER = {"input_layernorm.weight": "norm1.weight", "post_attention_layernorm.weight": "norm2.weight",
          "self_attn.o_proj.weight": "attn.proj.weight", "mlp.gate_proj.weight": "mlp.fc.weight",
          "mlp.up_proj.weight": "mlp.up.weight", "mlp.down_proj.weight": "mlp.proj.weight"}


def model_config(raw: dict, folder: Path, logits_shift: int = 0) -> ModelConfig:
    d = int(config_value(raw, "hidden_size", folder=folder))
    heads = int(config_value(raw, "num_attention_heads", folder=folder))
    if raw.get("head_dim") not in (None, d // heads):
        raise CheckpointError(f"{folder}: head_dim {raw['head_dim']} != hidden_size / num_attention_heads is not supported")
    scaling = raw.get("rope_scaling") or {}
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise CheckpointError(f"{folder}: rope_scaling {scaling.get('rope_type', scaling.get('type'))!r} is not supported")
    if raw.get("use_sliding_window"):
        raise CheckpointError(f"{folder}: sliding-window attention is not supported")
    llama = str(raw.get("model_type", "")).lower() in ("llama", "mistral")
    if llama and raw.get("attention_bias"):
        raise CheckpointError(f"{folder}: attention_bias (biases on every attention projection) is not supported")
    if llama and raw.get("mlp_bias"):
        raise CheckpointError(f"{folder}: mlp_bias is not supported")
    qkv_bias = not llama  # Qwen2 (and Dream) always have q/k/v biases, LLaMA none
    theta = raw.get("rope_theta") or (raw.get("rope_parameters") or {}).get("rope_theta") or 10000.0
    return ModelConfig(
        n_layer=int(config_value(raw, "num_hidden_layers", folder=folder)), n_head=heads, d_model=d,
        context=int(raw.get("max_position_embeddings", 4096)),
        vocab_size=int(config_value(raw, "vocab_size", folder=folder)), norm="rms",
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)), mlp="swiglu",
        mlp_hidden=int(config_value(raw, "intermediate_size", folder=folder)),
        n_kv_head=int(raw.get("num_key_value_heads") or 0), qkv_bias=qkv_bias,
        rope_base=float(theta), tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        logits_shift=logits_shift, time_cond=False)


def rename(folder: Path):
    layer = re.compile(r"model\.layers\.(\d+)\.(.+)$")
    qkv = re.compile(r"self_attn\.([qkv])_proj\.(weight|bias)$")

    def mapped(key: str):
        if key == "model.embed_tokens.weight":
            return "embed.weight", ""
        if key == "model.norm.weight":
            return "norm.weight", ""
        if key == "lm_head.weight":
            return "head.weight", ""
        m = layer.match(key)
        if m:
            i, rest = m.groups()
            q = qkv.match(rest)
            if q:
                return f"blocks.{i}.attn.qkv.{q.group(2)}", q.group(1)
            if rest in _LAYER:
                return f"blocks.{i}.{_LAYER[rest]}", ""
            if rest.endswith("rotary_emb.inv_freq"):
                return None
        unknown_key(folder, key)

    return mapped
