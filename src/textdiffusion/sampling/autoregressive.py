"""Left-to-right decoding of the AR twin with a KV cache: the baseline every speed figure is
compared to. One network call per generated token (the prompt is one call: prefill)."""

from __future__ import annotations

import time

import torch

from ..models.transformer import KVCache
from .base import Canvas, Generation, OnStep, StepOutput, require_prompt_canvas, resolve_canvas
from .filters import ban, filter_logits, sample_categorical, validate_sampling_args


class AutoregressiveSampler:
    name = "ar"

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, bos_id: int = 0,
                 banned_ids: tuple[int, ...] = ()):
        validate_sampling_args(temperature, top_k, top_p)
        self.temperature, self.top_k, self.top_p, self.bos_id = temperature, top_k, top_p, bos_id
        self.banned_ids = list(banned_ids)  # tokens that never occur in text (mask, pad)

    @torch.no_grad()
    def generate(self, model, process=None, *, length: int | None = None, steps: int | None = None,
                 batch_size: int = 1, prompt: torch.Tensor | None = None, gen: torch.Generator | None = None,
                 on_step: OnStep | None = None, trace: bool = False, canvas: Canvas | None = None) -> Generation:
        """``steps`` is accepted for a uniform signature; AR always takes ``length`` steps."""
        canvas = resolve_canvas(model, prompt, batch_size, length, canvas)  # the diffusion samplers' limit
        require_prompt_canvas(canvas, "the AR twin")
        device, P = canvas.tokens.device, canvas.prompt_length
        prompt, length, batch_size = canvas.tokens[:, :P], canvas.tokens.shape[1] - P, canvas.tokens.shape[0]
        # without a prompt, start from end-of-text: "a new document begins"
        context = prompt if P else torch.full((batch_size, 1), self.bos_id, dtype=torch.long, device=device)
        cache = KVCache()
        start = time.perf_counter()
        logits = model(context, kv_cache=cache)[:, -1]  # prefill: (B, V)
        out_tokens, states = [], []
        for i in range(length):
            log_p = filter_logits(ban(logits, self.banned_ids), self.temperature, self.top_k, self.top_p)
            nxt = sample_categorical(log_p, gen)  # (B,)
            out_tokens.append(nxt)
            if on_step is not None or trace:
                x = torch.cat([prompt, torch.stack(out_tokens, 1)], 1)
                if trace:
                    states.append(x)
                if on_step is not None:
                    changed = torch.zeros_like(x, dtype=torch.bool)
                    changed[:, -1] = True
                    on_step(i, StepOutput(x, None, changed, log_probs=log_p[:, None], offset=x.shape[1] - 1,
                                          nfe=i + 1))
            if i + 1 < length:
                logits = model(nxt[:, None], kv_cache=cache)[:, -1]
        tokens = torch.cat([prompt, torch.stack(out_tokens, 1)], 1)
        return Generation(tokens, P, length, time.perf_counter() - start, states)
