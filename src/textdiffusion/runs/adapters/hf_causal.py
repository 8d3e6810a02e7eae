"""Any transformers causal LM as an AR model beside the diffusion ones (the AR sampler, AR
comparisons, judges, eval): the GPT-2, LLaMA, Mistral and Qwen2 layouts load natively into our
Transformer (causal, with our KV cache: fast); every other architecture (GPT-Neo, OPT, ...) runs
through transformers itself, re-reading the whole sequence at each token (no remote code)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ...config import ModelConfig
from ...errors import CheckpointError, UsageError
from ...models.transformer import KVCache
from .common import Descriptor, build_run
from .hf_masked import key_padding, require_transformers, special_token, transformers_run

CARD = {"description": "a transformers causal LM (autoregressive)", "generate": {"sampler": "ar"}}
NATIVE = ("gpt2", "llama", "mistral", "qwen2")  # model_types whose weights load into our Transformer


def layout(raw: dict):
    """The adapter module (``model_config``, ``rename``) of a native model_type: GPT-2's or the
    LLaMA / Qwen2 one."""
    from . import gpt2, qwen2

    return gpt2 if str(raw.get("model_type", "")).lower() == "gpt2" else qwen2


def describe(raw: dict, folder: Path) -> Descriptor:
    eot = raw.get("eos_token_id")
    if isinstance(eot, list):
        eot = eot[0]
    if eot is None:
        eot = special_token(folder, "eos_token")
    if eot is None:
        raise CheckpointError(f"{folder}: no end-of-text token (eos_token_id in config.json)")
    return Descriptor("hf_causal", None, int(eot), raw.get("pad_token_id"), attention="causal",
                      rope_base=float(raw.get("rope_theta") or 10000.0))


class HFCausalLM(nn.Module):
    """tokens -> next-token logits through a transformers causal LM. With our ``KVCache`` it keeps
    the ids seen so far in the cache's one layer (as a (B, 1, S, 1) tensor), so the cache's row
    selection and left-padded joins carry them like keys, and each call re-reads the sequence."""

    attn_mode = "causal"

    def __init__(self, hf_model, cfg: ModelConfig):
        super().__init__()
        self.hf, self.cfg = hf_model, cfg

    def forward(self, tokens, t=None, *, kv_cache=None, positions=None, attn_mask=None, labels=None):
        B, T = tokens.shape
        if kv_cache is None:
            return self.hf(input_ids=tokens, attention_mask=key_padding(attn_mask, B, T)).logits.float()
        if not isinstance(kv_cache, KVCache):
            raise UsageError("a transformers causal LM decodes with the AR sampler only")
        ids = tokens.to(torch.float64)[:, None, :, None]
        seen, _ = kv_cache.update(0, ids, ids)
        history = seen[:, 0, :, 0].long()
        S = history.shape[1]
        mask = torch.ones(B, S, dtype=torch.long, device=tokens.device)
        if kv_cache.pad is not None:  # rows of other lengths: left padding nobody attends to
            mask = (torch.arange(S, device=tokens.device)[None, :] >= kv_cache.pad[:, None]).long()
        position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = self.hf(input_ids=history, attention_mask=mask, position_ids=position_ids).logits
        return logits[:, -T:].float()

    def num_params(self, non_embedding: bool = True) -> int:
        return sum(p.numel() for p in self.parameters())


def load(folder: Path, device="cpu", dtype: str | None = None, raw: dict | None = None):
    from . import hf_config
    from .common import hf_from_pretrained

    raw = raw or hf_config(folder)
    desc = describe(raw, folder)
    if str(raw.get("model_type", "")).lower() in NATIVE:
        family = layout(raw)
        return build_run(folder, desc, family.model_config(raw, folder), family.rename(folder), device, dtype,
                         unk_id=special_token(folder, "unk_token"))
    transformers = require_transformers()
    hf = hf_from_pretrained(transformers.AutoModelForCausalLM, folder, dtype)
    context = int(raw.get("max_position_embeddings") or raw.get("n_positions") or raw.get("n_ctx") or 1024)
    return transformers_run(folder, raw, desc, hf, HFCausalLM, "ar", context, device)
