"""A tiny random MDLM checkpoint in the layout of its Hugging Face release (config.json with
model_type "mdlm", weights under ``backbone.``: vocab_embed, sigma_map, blocks with adaLN,
output_layer) and a reference forward written from the equations of kuleshov-group/mdlm's
models/dit.py (DIT: weight-only LayerNorm, adaLN shift/scale/gate, rotary on q and k, GELU-tanh
MLP with biases, final adaLN and a linear head with bias), never from our module."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from public_models import _randn, _save, tiny_tokenizer

MDLM = dict(hidden_dim=32, cond_dim=16, n_blocks=2, n_heads=4, model_length=64, vocab_size=61, dropout=0.1,
            time_conditioning=False)


def _dit_weights(c: dict, gen, prefix: str, d: int, cd: int, v: int) -> dict:
    p = prefix
    w = {p + "vocab_embed.embedding": _randn(gen, v, d, std=1.0),
         p + "sigma_map.mlp.0.weight": _randn(gen, cd, 256), p + "sigma_map.mlp.0.bias": _randn(gen, cd),
         p + "sigma_map.mlp.2.weight": _randn(gen, cd, cd), p + "sigma_map.mlp.2.bias": _randn(gen, cd)}
    for i in range(c["n_blocks"]):
        b = f"{p}blocks.{i}."
        w.update({b + "norm1.weight": 1 + _randn(gen, d, std=0.1), b + "norm2.weight": 1 + _randn(gen, d, std=0.1),
                  b + "attn_qkv.weight": _randn(gen, 3 * d, d), b + "attn_out.weight": _randn(gen, d, d),
                  b + "mlp.0.weight": _randn(gen, 4 * d, d), b + "mlp.0.bias": _randn(gen, 4 * d),
                  b + "mlp.2.weight": _randn(gen, d, 4 * d), b + "mlp.2.bias": _randn(gen, d),
                  b + "adaLN_modulation.weight": _randn(gen, 6 * d, cd, std=0.2),
                  b + "adaLN_modulation.bias": _randn(gen, 6 * d, std=0.2)})
    w.update({p + "output_layer.norm_final.weight": 1 + _randn(gen, d, std=0.1),
              p + "output_layer.linear.weight": _randn(gen, v, d), p + "output_layer.linear.bias": _randn(gen, v),
              p + "output_layer.adaLN_modulation.weight": _randn(gen, 2 * d, cd, std=0.2),
              p + "output_layer.adaLN_modulation.bias": _randn(gen, 2 * d, std=0.2)})
    return w


def _gpt2_like_tokenizer(folder: Path, size: int) -> int:
    """tokenizer.json without a mask token (MDLM and SEDD append [MASK] to GPT-2's vocabulary
    in the model only): its vocabulary size."""
    tok = tiny_tokenizer(["<|endoftext|>"], vocab_size=size)
    (folder / "tokenizer.json").write_text(tok)
    return len(json.loads(tok)["model"]["vocab"])


def make_mdlm(folder: Path, seed: int = 2, **overrides) -> dict:
    """An MDLM directory: tokenizer.json, config.json (model_type mdlm) and model.safetensors
    under ``backbone.``; the mask is the last id, vocab_size - 1."""
    folder.mkdir(parents=True)
    c = {**MDLM, **overrides}
    c["vocab_size"] = _gpt2_like_tokenizer(folder, c["vocab_size"] - 1) + 1
    cfg = {"architectures": ["MDLM"], "model_type": "mdlm", "return_dict": False, **c}
    (folder / "config.json").write_text(json.dumps(cfg))
    gen = torch.Generator().manual_seed(seed)
    w = _dit_weights(c, gen, "backbone.", c["hidden_dim"], c["cond_dim"], c["vocab_size"])
    _save(folder, w)
    return {"cfg": {**cfg, "prefix": "backbone."}, "weights": w, "mask_id": c["vocab_size"] - 1}


def make_bd3lm(folder: Path, seed: int = 4, block_size: int = 4, adaln: bool = True) -> dict:
    """A BD3-LM directory: MDLM's layout with model_type bd3lm and its block_size (adaln off:
    no sigma_map and no adaLN weights, as BD3LMConfig allows)."""
    folder.mkdir(parents=True)
    c = {**MDLM, "block_size": block_size, "cross_attn": True, "adaln": adaln, "attn_backend": "sdpa",
         "causal": False, "var_min": True, "sampling_eps_min": 1e-3, "sampling_eps_max": 0.999}
    c["vocab_size"] = _gpt2_like_tokenizer(folder, c["vocab_size"] - 1) + 1
    cfg = {"architectures": ["BD3LM"], "model_type": "bd3lm", **c}
    (folder / "config.json").write_text(json.dumps(cfg))
    w = _dit_weights(c, torch.Generator().manual_seed(seed), "backbone.", c["hidden_dim"], c["cond_dim"],
                     c["vocab_size"])
    if not adaln:
        w = {k: v for k, v in w.items() if "adaLN" not in k and "sigma_map" not in k}
    _save(folder, w)
    return {"cfg": {**cfg, "prefix": "backbone."}, "weights": w, "mask_id": c["vocab_size"] - 1}


def block_causal(length: int, block_size: int) -> torch.Tensor:
    """BD3-LM's sampling mask (its block_diff_mask on the clean copy): block i sees blocks <= i."""
    blk = torch.arange(length) // block_size
    return blk[:, None] >= blk[None, :]


def make_sedd(folder: Path, seed: int = 3, graph: str = "absorb", noise: str = "loglinear") -> dict:
    """A SEDD directory as its PyTorchModelHubMixin release saves it: config.json is the hydra
    config (tokens, graph, noise, model), the DiT's weights without a prefix; absorbing adds the
    mask as id ``tokens``."""
    folder.mkdir(parents=True)
    tokens = _gpt2_like_tokenizer(folder, MDLM["vocab_size"] - 1)
    model = {"name": "tiny", "type": "ddit", "hidden_size": MDLM["hidden_dim"], "cond_dim": MDLM["cond_dim"],
             "length": MDLM["model_length"], "n_blocks": MDLM["n_blocks"], "n_heads": MDLM["n_heads"],
             "scale_by_sigma": graph == "absorb", "dropout": 0.1}
    cfg = {"ngpus": 8, "tokens": tokens, "graph": {"type": graph, "file": "data", "report_all": False},
           "noise": {"type": noise, "sigma_min": 1e-4, "sigma_max": 20}, "model": model}
    (folder / "config.json").write_text(json.dumps(cfg))
    v = tokens + (1 if graph == "absorb" else 0)
    c = {"n_blocks": model["n_blocks"], "n_heads": model["n_heads"], "hidden_dim": model["hidden_size"]}
    w = _dit_weights(c, torch.Generator().manual_seed(seed), "", model["hidden_size"], model["cond_dim"], v)
    _save(folder, w)
    return {"cfg": {**c, "prefix": ""}, "weights": w, "mask_id": tokens, "vocab_size": v}


def _layer_norm(x, weight):
    return F.layer_norm(x.float(), [x.shape[-1]]) * weight


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)  # rotate_half
    return x * cos + rotated * sin


@torch.no_grad()
def mdlm_forward(model: dict, ids: torch.Tensor, sigma: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """DIT.forward(indices, sigma): sigma is 0 when time_conditioning is off (MDLM's default).
    SEDD's network is the same DiT (its weights without the ``backbone.`` prefix); BD3-LM's
    samples with ``mask`` (S, S: who may attend to whom) and may have no adaLN."""
    w, c, p = model["weights"], model["cfg"], model["cfg"]["prefix"]
    B, S = ids.shape
    d, H = c["hidden_dim"], c["n_heads"]
    D = d // H
    sigma = torch.zeros(B) if sigma is None else sigma
    half = 128  # TimestepEmbedder: 256 frequencies, max_period 10000, [cos, sin]
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = sigma[:, None].float() * freqs[None]
    t_emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    adaln = p + "sigma_map.mlp.0.weight" in w
    if adaln:
        hid = F.silu(t_emb @ w[p + "sigma_map.mlp.0.weight"].T + w[p + "sigma_map.mlp.0.bias"])
        cvec = F.silu(hid @ w[p + "sigma_map.mlp.2.weight"].T + w[p + "sigma_map.mlp.2.bias"])
    inv = 1.0 / 10000 ** (torch.arange(0, D, 2, dtype=torch.float32) / D)
    ang = torch.outer(torch.arange(S, dtype=torch.float32), inv)
    emb = torch.cat((ang, ang), dim=-1)
    cos, sin = emb.cos()[None, :, None, :], emb.sin()[None, :, None, :]  # (1, S, 1, D)
    x = w[p + "vocab_embed.embedding"][ids]
    for i in range(c["n_blocks"]):
        b = f"{p}blocks.{i}."
        if adaln:
            mod = (cvec @ w[b + "adaLN_modulation.weight"].T + w[b + "adaLN_modulation.bias"])[:, None]
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=2)
        else:  # plain pre-norm blocks
            shift_msa = scale_msa = shift_mlp = scale_mlp = torch.zeros(1)
            gate_msa = gate_mlp = torch.ones(1)
        h = _layer_norm(x, w[b + "norm1.weight"]) * (1 + scale_msa) + shift_msa
        qkv = (h @ w[b + "attn_qkv.weight"].T).view(B, S, 3, H, D)
        q, k, v = _rotate(qkv[:, :, 0], cos, sin), _rotate(qkv[:, :, 1], cos, sin), qkv[:, :, 2]
        scores = torch.einsum("bshd,bthd->bhst", q, k) / math.sqrt(D)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        att = torch.softmax(scores, dim=-1)
        y = torch.einsum("bhst,bthd->bshd", att, v).reshape(B, S, d)
        x = x + gate_msa * (y @ w[b + "attn_out.weight"].T)
        h = _layer_norm(x, w[b + "norm2.weight"]) * (1 + scale_mlp) + shift_mlp
        m = F.gelu(h @ w[b + "mlp.0.weight"].T + w[b + "mlp.0.bias"], approximate="tanh")
        x = x + gate_mlp * (m @ w[b + "mlp.2.weight"].T + w[b + "mlp.2.bias"])
    x = _layer_norm(x, w[p + "output_layer.norm_final.weight"])
    if adaln:
        shift, scale = (cvec @ w[p + "output_layer.adaLN_modulation.weight"].T
                        + w[p + "output_layer.adaLN_modulation.bias"])[:, None].chunk(2, dim=2)
        x = x * (1 + scale) + shift
    return x @ w[p + "output_layer.linear.weight"].T + w[p + "output_layer.linear.bias"]


@torch.no_grad()
def sedd_forward(model: dict, ids: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """SEDD.forward(indices, sigma) for an absorbing graph: the DiT's output, scaled by sigma
    (minus log(e^sigma - 1) and log(V - 1)), with each position's own token's entry set to 0."""
    x = mdlm_forward(model, ids, sigma)
    esigm1_log = torch.where(sigma < 0.5, torch.expm1(sigma), sigma.exp() - 1).log()[:, None, None]
    x = x - esigm1_log - math.log(x.shape[-1] - 1)
    return torch.scatter(x, -1, ids[..., None], torch.zeros_like(x[..., :1]))


@torch.no_grad()
def mdlm_sample(model: dict, prompt: torch.Tensor, length: int, steps: int, gen: torch.Generator,
                eps: float = 1e-5) -> tuple[torch.Tensor, int]:
    """MDLM's _sample with the ddpm_cache predictor (diffusion.py), a prompt kept fixed: t on
    linspace(1, eps, steps + 1); q_xs = p_x0 (move_t - move_s) with the mask's entry move_s;
    a draw per masked position; p_x0 reused while x does not change (the network is not
    time-conditioned). Returns (x, network calls)."""
    mask = model["mask_id"]
    x = torch.cat([prompt, torch.full((length,), mask)])[None]
    ts = torch.linspace(1, eps, steps + 1)
    dt = (1 - eps) / steps
    p_x0, calls = None, 0
    for i in range(steps):
        t = ts[i]
        if p_x0 is None:
            logits = mdlm_forward(model, x)
            logits[..., mask] = float("-inf")
            p_x0 = torch.softmax(logits.double(), -1)
            calls += 1
        q_xs = p_x0 * (t - (t - dt))
        q_xs[..., mask] = t - dt
        gumbel = -torch.log(-torch.log(torch.rand(q_xs.shape, generator=gen, dtype=torch.float64) + 1e-10) + 1e-10)
        drawn = (q_xs.log() + gumbel).argmax(-1)
        x_next = torch.where(x != mask, x, drawn)
        if not torch.equal(x_next, x):
            p_x0 = None
        x = x_next
    logits = mdlm_forward(model, x)  # noise removal: one more call, masked positions take the argmax
    logits[..., mask] = float("-inf")
    return torch.where(x == mask, logits.argmax(-1), x), calls + 1
