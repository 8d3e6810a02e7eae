"""MDLM (Sahoo et al. 2024), the Hugging Face release of kuleshov-group/mdlm (``hf_dit``: its
DIT backbone under ``backbone.``) onto our Transformer, on the CPU (the released modeling code
imports flash_attn). Weight-only LayerNorms with adaLN shift/scale/gate conditioned on a
``cond_dim`` vector from the noise level sigma (a sinusoidal embedding of sigma itself, no x1000),
rotary q and k, a GELU-tanh MLP with biases, a final adaLN and a linear head with bias;
bidirectional; logits not shifted; the mask is the last id (vocab_size - 1). With
``time_conditioning`` false (the released models) the network always sees sigma = 0.

config.json keys read: hidden_dim, cond_dim, n_blocks, n_heads, model_length, vocab_size,
time_conditioning. Weights: backbone.{vocab_embed.embedding, sigma_map.mlp.{0,2}.{weight,bias},
blocks.{i}.{norm1, norm2, attn_qkv, attn_out, mlp.0, mlp.2, adaLN_modulation}.*,
output_layer.{norm_final, linear, adaLN_modulation}.*}
"""

from __future__ import annotations

import re
from pathlib import Path

from ...config import ModelConfig
from ...errors import CheckpointError
from .common import Descriptor, config_value, token_id, unknown_key

# MDLM samples ancestrally (its DDPM update with caching); greedy decoding is not its rule
CARD = {"description": "MDLM (masked diffusion, DiT backbone)", "generate": {"sampler": "ancestral"}}

_BLOCK = {"norm1.weight": "norm1.weight", "norm2.weight": "norm2.weight", "attn_qkv.weight": "attn.qkv.weight",
          "attn_out.weight": "attn.proj.weight", "mlp.0.weight": "mlp.fc.weight", "mlp.0.bias": "mlp.fc.bias",
          "mlp.2.weight": "mlp.proj.weight", "mlp.2.bias": "mlp.proj.bias",
          "adaLN_modulation.weight": "ada.weight", "adaLN_modulation.bias": "ada.bias"}
_TOP = {"vocab_embed.embedding": "embed.weight",
        "sigma_map.mlp.0.weight": "time.mlp.0.weight", "sigma_map.mlp.0.bias": "time.mlp.0.bias",
        "sigma_map.mlp.2.weight": "time.mlp.2.weight", "sigma_map.mlp.2.bias": "time.mlp.2.bias",
        "output_layer.norm_final.weight": "norm.weight", "output_layer.linear.weight": "head.weight",
        "output_layer.linear.bias": "head.bias", "output_layer.adaLN_modulation.weight": "final_ada.weight",
        "output_layer.adaLN_modulation.bias": "final_ada.bias"}


def describe(raw: dict, folder: Path, family: str = "mdlm", **extra) -> Descriptor:
    vocab = int(config_value(raw, "vocab_size", folder=folder))
    eot = token_id(folder, "<|endoftext|>")
    return Descriptor(family, vocab - 1, int(vocab - 2 if eot is None else eot), **extra)


def model_config(raw: dict, folder: Path, adaln: bool = True, name: str = "MDLM") -> ModelConfig:
    """The DiT as our Transformer's variants (``adaln`` off: plain pre-norm blocks, BD3-LM's option)."""
    if raw.get("time_conditioning"):
        raise CheckpointError(f"{folder}: an {name} trained with time_conditioning is not supported yet (its sigma "
                              f"comes from its noise schedule); the released {name} checkpoints have it off")
    return ModelConfig(
        n_layer=int(config_value(raw, "n_blocks", folder=folder)), n_head=int(config_value(raw, "n_heads", folder=folder)),
        d_model=int(config_value(raw, "hidden_dim", folder=folder)),
        context=int(config_value(raw, "model_length", folder=folder)),
        vocab_size=int(config_value(raw, "vocab_size", folder=folder)), norm="layer", norm_eps=1e-5, norm_bias=False,
        mlp="gelu", mlp_bias=True, time_cond=adaln, cond_dim=int(config_value(raw, "cond_dim", folder=folder)),
        time_scale=1.0, time_input="zero", ada_norm_weight=adaln, final_ada=adaln, head_bias=True)


def rename(folder: Path, prefix: str = "backbone."):
    """The DiT's weight names (under ``prefix``; SEDD's have none) onto ours."""
    block = re.compile(re.escape(prefix) + r"blocks\.(\d+)\.(.+)$")

    def mapped(key: str):
        if key.startswith(prefix) and key[len(prefix):] in _TOP:
            return _TOP[key[len(prefix):]], ""
        m = block.match(key)
        if m and m.group(2) in _BLOCK:
            return f"blocks.{m.group(1)}.{_BLOCK[m.group(2)]}", ""
        if "rotary" in key or key.endswith("inv_freq"):
            return None
        unknown_key(folder, key)

    return mapped
