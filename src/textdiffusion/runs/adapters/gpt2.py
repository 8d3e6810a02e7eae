"""The GPT-2 layout (transformers' GPT2LMHeadModel and OpenAI's own checkpoints): config and
weight names onto our Transformer with learned positions. GPT-2's Conv1D layers store their
weights (in, out), the transpose of a linear layer's, so the map asks for them transposed."""

from __future__ import annotations

import re
from pathlib import Path

from ...config import ModelConfig
from ...errors import CheckpointError
from .common import config_value, unknown_key

_LAYER = {"ln_1": "norm1", "ln_2": "norm2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj",
          "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}
_GELU = ("gelu_new", "gelu_pytorch_tanh")  # the tanh approximation our MLP computes


def model_config(raw: dict, folder: Path) -> ModelConfig:
    activation = raw.get("activation_function", "gelu_new")
    if activation not in _GELU:
        raise CheckpointError(f"{folder}: activation_function {activation!r} is not supported (only {', '.join(_GELU)})")
    for flag, default in (("scale_attn_by_inverse_layer_idx", False), ("reorder_and_upcast_attn", False),
                          ("add_cross_attention", False), ("scale_attn_weights", True)):
        if bool(raw.get(flag, default)) != default:
            raise CheckpointError(f"{folder}: {flag}={not default} is not supported")
    d = int(config_value(raw, "n_embd", "hidden_size", folder=folder))
    return ModelConfig(
        n_layer=int(config_value(raw, "n_layer", "num_hidden_layers", folder=folder)),
        n_head=int(config_value(raw, "n_head", "num_attention_heads", folder=folder)), d_model=d,
        context=int(config_value(raw, "n_positions", "max_position_embeddings", folder=folder)),
        vocab_size=int(config_value(raw, "vocab_size", folder=folder)), norm="layer",
        norm_eps=float(raw.get("layer_norm_epsilon", 1e-5)), mlp="gelu", mlp_hidden=int(raw.get("n_inner") or 4 * d),
        positions="learned", qkv_bias=True, proj_bias=True, mlp_bias=True,
        tie_embeddings=bool(raw.get("tie_word_embeddings", True)), time_cond=False)


def rename(folder: Path):
    """GPT-2's names (with or without transformers' ``transformer.`` prefix) onto ours; part "T"
    = stored transposed (a Conv1D weight); the causal-mask buffers are dropped."""
    layer = re.compile(r"h\.(\d+)\.(ln_1|ln_2|attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.(weight|bias)$")
    top = {"wte.weight": "embed.weight", "wpe.weight": "pos.weight", "ln_f.weight": "norm.weight",
           "ln_f.bias": "norm.bias"}

    def mapped(key: str):
        if key == "lm_head.weight":
            return "head.weight", ""
        name = key.removeprefix("transformer.")
        if name in top:
            return top[name], ""
        m = layer.match(name)
        if m:
            i, part, kind = m.groups()
            conv = kind == "weight" and not part.startswith("ln")
            return f"blocks.{i}.{_LAYER[part]}.{kind}", "T" if conv else ""
        if re.fullmatch(r"h\.\d+\.attn\.(bias|masked_bias)", name):
            return None
        unknown_key(folder, key)

    return mapped
