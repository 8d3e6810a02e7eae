"""SEDD (Lou, Meng & Ermon 2024), louaaron/Score-Entropy-Discrete-Diffusion's release: the same
DiT as MDLM (mdlm.py) with its weights unprefixed, conditioned on the total noise sigma, whose
output is a log concrete score. Its config.json is its training config (``tokens``, ``graph``,
``noise``, ``model``). Absorbing graph with log-linear noise: the mask is id ``tokens``; our
``sedd-absorb`` process adds SEDD's scale by sigma (log r = -log(e^sigma - 1)) and the
-log(V - 1) shift itself, so the network's raw output is what our model returns, and our time t
(the mask rate) reaches the network as sigma = -log(1 - t).

config.json keys read: tokens, graph.type, noise.type, model.{hidden_size, cond_dim, length,
n_blocks, n_heads, scale_by_sigma}. Weights: {vocab_embed.embedding, sigma_map.*, blocks.{i}.*,
output_layer.*}.
"""

from __future__ import annotations

from pathlib import Path

from ...config import ModelConfig
from ...errors import CheckpointError
from . import mdlm
from .common import Descriptor, token_id

# SEDD samples with its analytic (Tweedie) predictor: for the absorbing graph, MDLM's reverse step
CARD = {"description": "SEDD (score entropy discrete diffusion, absorbing, DiT backbone)",
        "generate": {"sampler": "ancestral"}}


def _section(raw: dict, name: str, folder: Path) -> dict:
    value = raw.get(name)
    if not isinstance(value, dict):
        raise CheckpointError(f"{folder}/config.json has no {name!r} section (is it SEDD's config?)")
    return value


def describe(raw: dict, folder: Path) -> Descriptor:
    tokens = int(raw["tokens"])
    eot = token_id(folder, "<|endoftext|>")
    return Descriptor("sedd", tokens, int(tokens - 1 if eot is None else eot), process="sedd-absorb")


def model_config(raw: dict, folder: Path) -> ModelConfig:
    graph, noise, model = (_section(raw, n, folder) for n in ("graph", "noise", "model"))
    if graph.get("type") != "absorb":
        raise CheckpointError(f"{folder}: SEDD with the {graph.get('type')!r} graph is not supported yet (absorb is)")
    if noise.get("type", "loglinear") != "loglinear":
        raise CheckpointError(f"{folder}: SEDD with {noise.get('type')!r} noise is not supported (absorbing SEDD "
                              f"uses loglinear)")
    if not model.get("scale_by_sigma", True):
        raise CheckpointError(f"{folder}: an absorbing SEDD without scale_by_sigma is not supported")
    try:
        return ModelConfig(
            n_layer=int(model["n_blocks"]), n_head=int(model["n_heads"]), d_model=int(model["hidden_size"]),
            context=int(model["length"]), vocab_size=int(raw["tokens"]) + 1, norm="layer", norm_eps=1e-5,
            norm_bias=False, mlp="gelu", mlp_bias=True, time_cond=True, cond_dim=int(model["cond_dim"]),
            time_scale=1.0, time_input="sigma", ada_norm_weight=True, final_ada=True, head_bias=True)
    except KeyError as exc:
        raise CheckpointError(f"{folder}/config.json: its model section has no {exc}") from None


def rename(folder: Path):
    return mdlm.rename(folder, prefix="")
