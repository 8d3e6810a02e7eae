"""Tiny random checkpoints in the public models' real layouts (config.json keys, weight names,
tokenizer.json, sharded safetensors), and reference forwards and decoding loops written from the
public modeling code's equations (ML-GSAI/LLaDA generate.py, LLaDA's OLMo-style modeling,
Dream's Qwen2 modeling and generation_utils), never from our module.

The weights are drawn large (std 0.4 rather than 0.02) so that a random model's logits are peaked
and the confidence order of positions is far from ties: a decoding comparison then tests the
rule, not float rounding."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CORPUS = ["the cat sat on the mat. the dog ran to the cat.", "a bird sang; the sun rose over the hill.",
          "one two three four five six seven eight nine ten"] * 4


def tiny_tokenizer(specials: list[str], vocab_size: int = 60) -> str:
    """A byte-level BPE tokenizer.json with ``specials`` (their ids: 0, 1, ... in order)."""
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    hf.train_from_iterator(CORPUS, trainer=trainer)
    return hf.to_str()


def _randn(gen, *shape, std=0.4):
    return torch.randn(*shape, generator=gen) * std


def _save(folder: Path, tensors: dict, shards: int = 1) -> None:
    names = list(tensors)
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"))
        return
    per = math.ceil(len(names) / shards)
    weight_map = {}
    for s in range(shards):
        part = names[s * per : (s + 1) * per]
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: tensors[k] for k in part}, str(folder / file))
        weight_map.update({k: file for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


# --- LLaDA ----------------------------------------------------------------------------------------
LLADA = dict(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=48, embedding_size=72,
             vocab_size=72, max_sequence_length=128, rope_theta=500000.0, rms_norm_eps=1e-5)


def make_llada(folder: Path, seed: int = 0, mask_in_config: bool = False) -> dict:
    """A LLaDA directory: OLMo-style config.json, model.transformer.* weights, tokenizer.json with
    <|endoftext|> and <|mdm_mask|> (found by name unless ``mask_in_config``)."""
    folder.mkdir(parents=True)
    (folder / "tokenizer.json").write_text(tiny_tokenizer(["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>"]))
    c = dict(LLADA)
    cfg = {"architectures": ["LLaDAModelLM"], "model_type": "llada", "block_type": "llama", "activation_type": "silu",
           "layer_norm_type": "rms", "include_bias": False, "include_qkv_bias": False, "weight_tying": False,
           "rope": True, "alibi": False, "scale_logits": False, "eos_token_id": 1, "pad_token_id": 1, **c}
    if mask_in_config:
        cfg["mask_token_id"] = 2
    (folder / "config.json").write_text(json.dumps(cfg))
    gen = torch.Generator().manual_seed(seed)
    d, hd, kv, h = c["d_model"], c["d_model"] // c["n_heads"], c["n_kv_heads"], c["mlp_hidden_size"]
    w = {"model.transformer.wte.weight": _randn(gen, c["embedding_size"], d, std=1.0)}
    for i in range(c["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        w.update({p + "attn_norm.weight": 1 + _randn(gen, d, std=0.1), p + "ff_norm.weight": 1 + _randn(gen, d, std=0.1),
                  p + "q_proj.weight": _randn(gen, d, d), p + "k_proj.weight": _randn(gen, kv * hd, d),
                  p + "v_proj.weight": _randn(gen, kv * hd, d), p + "attn_out.weight": _randn(gen, d, d),
                  p + "ff_proj.weight": _randn(gen, h, d), p + "up_proj.weight": _randn(gen, h, d),
                  p + "ff_out.weight": _randn(gen, d, h)})
    w["model.transformer.ln_f.weight"] = 1 + _randn(gen, d, std=0.1)
    w["model.transformer.ff_out.weight"] = _randn(gen, c["embedding_size"], d)
    _save(folder, w)
    return {"cfg": cfg, "weights": w, "mask_id": 2, "eot_id": 1}


# --- Dream (Qwen2 layout) -------------------------------------------------------------------------
DREAM = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=48,
             vocab_size=70, max_position_embeddings=256, rope_theta=1000000.0, rms_norm_eps=1e-6)


def make_dream(folder: Path, seed: int = 1, shards: int = 2) -> dict:
    """A Dream directory: Qwen2-style config.json with mask_token_id, model.layers.* weights with
    q/k/v biases, an untied lm_head, sharded safetensors with an index."""
    folder.mkdir(parents=True)
    (folder / "tokenizer.json").write_text(tiny_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]))
    c = dict(DREAM)
    cfg = {"architectures": ["DreamModel"], "model_type": "Dream", "hidden_act": "silu", "tie_word_embeddings": False,
           "mask_token_id": 3, "eos_token_id": 0, "pad_token_id": 0, "bos_token_id": 0, **c}
    (folder / "config.json").write_text(json.dumps(cfg))
    gen = torch.Generator().manual_seed(seed)
    d, hd, kv, h = c["hidden_size"], c["hidden_size"] // c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]
    w = {"model.embed_tokens.weight": _randn(gen, c["vocab_size"], d, std=1.0)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w.update({p + "input_layernorm.weight": 1 + _randn(gen, d, std=0.1),
                  p + "post_attention_layernorm.weight": 1 + _randn(gen, d, std=0.1),
                  p + "self_attn.q_proj.weight": _randn(gen, d, d), p + "self_attn.q_proj.bias": _randn(gen, d),
                  p + "self_attn.k_proj.weight": _randn(gen, kv * hd, d), p + "self_attn.k_proj.bias": _randn(gen, kv * hd),
                  p + "self_attn.v_proj.weight": _randn(gen, kv * hd, d), p + "self_attn.v_proj.bias": _randn(gen, kv * hd),
                  p + "self_attn.o_proj.weight": _randn(gen, d, d), p + "mlp.gate_proj.weight": _randn(gen, h, d),
                  p + "mlp.up_proj.weight": _randn(gen, h, d), p + "mlp.down_proj.weight": _randn(gen, d, h)})
    w["model.norm.weight"] = 1 + _randn(gen, d, std=0.1)
    w["lm_head.weight"] = _randn(gen, c["vocab_size"], d)
    _save(folder, w, shards)
    return {"cfg": cfg, "weights": w, "mask_id": 3, "eot_id": 0}


# --- reference forwards (the public modeling code's equations) -------------------------------------
def rms_norm(x, weight, eps):
    """LLaDA RMSLayerNorm / Qwen2RMSNorm: x * rsqrt(mean(x^2) + eps) * weight."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotary(x, theta):
    """HF/OLMo rotate_half RoPE on (B, H, T, D): x cos + rotate_half(x) sin, angles t * theta^(-2i/D)."""
    T, D = x.shape[-2], x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D)
    freqs = torch.outer(torch.arange(T, dtype=torch.float32), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return x * emb.cos() + torch.cat((-x2, x1), dim=-1) * emb.sin()


def attention(q, k, v):
    """Bidirectional softmax(q k^T / sqrt(D)) v, written out (no SDPA)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return scores.softmax(-1) @ v


def _layer(x, q, k, v, o, n_head, n_kv, theta, attn_norm, ff_norm, gate, up, down, eps, qb=None, kb=None, vb=None):
    B, T, C = x.shape
    hd = C // n_head
    h = rms_norm(x, attn_norm, eps)
    Q = F.linear(h, q, qb).view(B, T, n_head, hd).transpose(1, 2)
    K = F.linear(h, k, kb).view(B, T, n_kv, hd).transpose(1, 2)
    V = F.linear(h, v, vb).view(B, T, n_kv, hd).transpose(1, 2)
    Q, K = rotary(Q, theta), rotary(K, theta)
    K, V = K.repeat_interleave(n_head // n_kv, dim=1), V.repeat_interleave(n_head // n_kv, dim=1)  # GQA groups
    x = x + F.linear(attention(Q, K, V).transpose(1, 2).reshape(B, T, C), o)
    h = rms_norm(x, ff_norm, eps)
    return x + F.linear(F.silu(F.linear(h, gate)) * F.linear(h, up), down)


def llada_forward(model: dict, ids: torch.Tensor) -> torch.Tensor:
    """LLaDAModel.forward with LLaDALlamaBlocks: logits (B, T, V); position i predicts token i."""
    c, w = model["cfg"], model["weights"]
    x = w["model.transformer.wte.weight"][ids]
    for i in range(c["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        x = _layer(x, w[p + "q_proj.weight"], w[p + "k_proj.weight"], w[p + "v_proj.weight"], w[p + "attn_out.weight"],
                   c["n_heads"], c["n_kv_heads"], c["rope_theta"], w[p + "attn_norm.weight"], w[p + "ff_norm.weight"],
                   w[p + "ff_proj.weight"], w[p + "up_proj.weight"], w[p + "ff_out.weight"], c["rms_norm_eps"])
    return F.linear(rms_norm(x, w["model.transformer.ln_f.weight"], c["rms_norm_eps"]), w["model.transformer.ff_out.weight"])


def dream_forward(model: dict, ids: torch.Tensor) -> torch.Tensor:
    """DreamModel.forward (Qwen2 layers, bidirectional): RAW logits, position i predicts token i + 1."""
    c, w = model["cfg"], model["weights"]
    x = w["model.embed_tokens.weight"][ids]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        x = _layer(x, w[a + "q_proj.weight"], w[a + "k_proj.weight"], w[a + "v_proj.weight"], w[a + "o_proj.weight"],
                   c["num_attention_heads"], c["num_key_value_heads"], c["rope_theta"], w[p + "input_layernorm.weight"],
                   w[p + "post_attention_layernorm.weight"], w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"],
                   w[p + "mlp.down_proj.weight"], c["rms_norm_eps"], w[a + "q_proj.bias"], w[a + "k_proj.bias"],
                   w[a + "v_proj.bias"])
    return F.linear(rms_norm(x, w["model.norm.weight"], c["rms_norm_eps"]), w["lm_head.weight"])


# --- reference decoding loops ----------------------------------------------------------------------
@torch.no_grad()
def llada_generate(model: dict, prompt: torch.Tensor, steps: int, gen_length: int, block_length: int,
                   mask_id: int) -> torch.Tensor:
    """ML-GSAI/LLaDA generate.py at temperature 0, remasking='low_confidence': per block, the
    per-step counts of get_num_transfer_tokens, argmax candidates, confidence = softmax
    probability of the candidate, top-k inside the current block. One change: the mask token's
    logit is -inf (a trained LLaDA gives [MASK] no mass; our samplers never write it)."""
    x = torch.full((1, prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt
    num_blocks = gen_length // block_length
    steps //= num_blocks
    for b in range(num_blocks):
        lo = prompt.shape[1] + b * block_length
        block_mask = x[:, lo : lo + block_length] == mask_id
        n = block_mask.sum(1, keepdim=True)
        counts = torch.zeros(1, steps, dtype=torch.long) + n // steps
        counts[0, : int(n % steps)] += 1
        for i in range(steps):
            mask_index = x == mask_id
            logits = llada_forward(model, x)
            logits[..., mask_id] = float("-inf")
            x0 = logits.argmax(-1)
            p = F.softmax(logits.double(), dim=-1)
            x0_p = p.gather(-1, x0[..., None]).squeeze(-1)
            x0_p[:, lo + block_length :] = float("-inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, float("-inf"))
            _, idx = torch.topk(confidence[0], k=int(counts[0, i]))
            x[0, idx] = x0[0, idx]
    return x


@torch.no_grad()
def dream_generate(model: dict, prompt: torch.Tensor, steps: int, gen_length: int, mask_id: int,
                   alg: str = "entropy", eps: float = 1e-3) -> torch.Tensor:
    """Dream's generation_utils _sample at temperature 0 (alg 'entropy' or 'maskgit_plus'): logits
    shifted right by one (logits[:, :1] kept for position 0), confidence = -entropy (or the max
    probability), count int(masked * (1 - s / t)) on linspace(1, eps, steps + 1), all at the last
    step. One change: the mask token's logit is -inf, as in llada_generate."""
    x = F.pad(prompt, (0, gen_length), value=mask_id)
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == mask_id
        logits = dream_forward(model, x)
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        logits[..., mask_id] = float("-inf")
        probs = torch.softmax(logits[mask_index], dim=-1)
        confidence, x0 = probs.max(dim=-1)
        if alg == "entropy":
            confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
        t, s = timesteps[i], timesteps[i + 1]
        num_mask = mask_index.sum() / mask_index.shape[0]
        number = int(num_mask * (1 - s / t)) if i < steps - 1 else int(num_mask)
        full = torch.full_like(x, float("-inf"), dtype=logits.dtype)
        full[mask_index] = confidence
        if number > 0:
            _, transfer = torch.topk(full, number)
            x_ = torch.full_like(x, mask_id)
            x_[mask_index] = x0
            x[0, transfer[0]] = x_[0, transfer[0]]
    return x
