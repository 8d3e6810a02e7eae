"""Left-to-right decoding of the AR twin with a KV cache: the baseline every speed figure is
compared to. One network call per generated token (the prompt is one call: prefill).

State machine (sampling/base.py): the rows of a batch share one KV cache and decode the same
position together; each draws from its own generator."""

from __future__ import annotations

import torch

from ..models.transformer import KVCache
from .base import Canvas, Generators, Sampler, State, StepOutput, require_prompt_canvas
from .filters import ban, filter_logits, sample_categorical, validate_sampling_args


class AutoregressiveSampler(Sampler):
    name = "ar"
    family = "ar"

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, bos_id: int = 0,
                 banned_ids: tuple[int, ...] = ()):
        validate_sampling_args(temperature, top_k, top_p)
        self.temperature, self.top_k, self.top_p, self.bos_id = temperature, top_k, top_p, bos_id
        self.banned_ids = list(banned_ids)  # tokens that never occur in text (mask, pad)

    def start(self, model, process, canvas: Canvas, steps: int | None = None, gen: Generators = None) -> State:
        """``steps`` is accepted for a uniform signature; AR always takes one step per free position."""
        require_prompt_canvas(canvas, "the AR twin")
        P, length = canvas.prompt_length, canvas.tokens.shape[1] - canvas.prompt_length
        state = self._rows(process, canvas, length, gen, draw=False)
        # without a prompt, start from end-of-text: "a new document begins"
        context = canvas.tokens[:, :P] if P else torch.full((canvas.tokens.shape[0], 1), self.bos_id,
                                                            dtype=torch.long, device=canvas.tokens.device)
        state.shared.update(kv=KVCache(), context=context)
        return state

    def step(self, state: State, model) -> StepOutput:
        rows, kv, P = state.rows, state.shared["kv"], state.prompt_length
        i = rows[0].step
        if i == 0:
            logits = model(state.shared["context"], kv_cache=kv)[:, -1]  # prefill: (B, V)
        else:
            logits = model(torch.stack([r.tokens[P + i - 1] for r in rows])[:, None], kv_cache=kv)[:, -1]
        state.calls += 1
        log_ps = []
        for r, lg in zip(rows, logits):
            smp = r.sampler
            log_p = filter_logits(ban(lg[None], smp.banned_ids), smp.temperature, smp.top_k, smp.top_p)
            r.tokens = r.tokens.clone()
            r.tokens[P + i] = sample_categorical(log_p, r.gen)[0]
            r.step, r.nfe = r.step + 1, r.nfe + 1
            r.done = r.step >= r.steps
            log_ps.append(log_p)
        x = torch.stack([r.tokens[: P + i + 1] for r in rows])
        changed = torch.zeros_like(x, dtype=torch.bool)
        changed[:, -1] = True
        return StepOutput(x, None, changed, log_probs=torch.stack(log_ps) if state.report else None,
                          offset=P + i, nfe=state.calls)
