"""Left-to-right decoding of the AR twin with a KV cache: the baseline every speed figure is
compared to. One network call per generated token (the prompt is one call: prefill).

State machine (sampling/base.py): the rows of a batch share one KV cache; each row keeps the
logits of its next token from the last call, its own position and its own generator. A step
draws every unfinished row's next token and feeds them all to the network in one call. Rows
that join later (``State.join``) bring their own prefilled cache, which is merged with the
batch's, the shorter one left-padded (no query attends to padding; each row's RoPE positions
stay its own), so a row decodes the same tokens alone or in any batch.
"""

from __future__ import annotations

import torch

from ..models.transformer import KVCache
from .base import Canvas, Generators, Row, Sampler, State, StepOutput, require_prompt_canvas
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
        """``steps`` is accepted for a uniform signature; AR always takes one step per free position.
        The prompt is read here (prefill: the batch's first network call)."""
        require_prompt_canvas(canvas, "the AR twin")
        P, length = canvas.prompt_length, canvas.tokens.shape[1] - canvas.prompt_length
        state = self._rows(process, canvas, length, gen, draw=False)
        # without a prompt, start from end-of-text: "a new document begins"
        context = canvas.tokens[:, :P] if P else torch.full((canvas.tokens.shape[0], 1), self.bos_id,
                                                            dtype=torch.long, device=canvas.tokens.device)
        kv = KVCache()
        with torch.no_grad():
            logits = model(context, kv_cache=kv)[:, -1]  # (B, V)
        state.calls = 1
        for r, lg in zip(state.rows, logits):
            r.data.update(logits=lg, pos=context.shape[1], P=P)
        state.shared.update(kv=kv, cached=list(state.rows))
        return state

    @staticmethod
    def merge_shared(state: State, other: State) -> None:
        """``other``'s rows join ``state``'s: one cache, the shorter left-padded."""
        state.shared["kv"].join(other.shared["kv"])
        state.shared["cached"] = state.shared["cached"] + other.shared["cached"]

    def step(self, state: State, model) -> StepOutput:
        rows = state.active()
        new = []
        for r in rows:
            smp, P = r.sampler, r.data["P"]
            log_p = filter_logits(ban(r.data.pop("logits")[None], smp.banned_ids), smp.temperature, smp.top_k,
                                  smp.top_p)
            r.tokens = r.tokens.clone()
            r.tokens[P + r.step] = sample_categorical(log_p, r.gen)[0]
            r.step, r.nfe = r.step + 1, r.nfe + 1
            r.done = r.step >= r.steps
            new.append(log_p)
        out = self._record(state, rows, new)
        self._feed(state, model)
        return out

    def _record(self, state: State, rows: list[Row], log_ps: list[torch.Tensor]) -> StepOutput:
        """The tokens so far (the batch's rows decode one position together when they started
        together; rows of other lengths are shown over their whole canvas)."""
        lengths = {r.data["P"] + r.step for r in state.rows}
        if len(lengths) == 1 and len(rows) == len(state.rows):
            n = lengths.pop()
            x = torch.stack([r.tokens[:n] for r in rows])
            changed = torch.zeros_like(x, dtype=torch.bool)
            changed[:, -1] = True
            return StepOutput(x, None, changed, log_probs=torch.stack(log_ps) if state.report else None,
                              offset=n - 1, nfe=state.calls)
        changed = {r: torch.arange(r.length) == r.data["P"] + r.step - 1 for r in rows}
        dists = {r: (r.data["P"] + r.step - 1, lp) for r, lp in zip(rows, log_ps)}
        return state.output(changed, dists)

    def _feed(self, state: State, model) -> None:
        """One call over the unfinished rows' new tokens: each row's logits for its next step."""
        kv = state.shared["kv"]
        active = state.active()
        if active != state.shared["cached"]:  # finished rows leave the cache
            keep = [state.shared["cached"].index(r) for r in active]
            if active:
                kv.select(torch.tensor(keep, device=active[0].tokens.device))
            state.shared["cached"] = active
        if not active:
            return
        tokens = torch.stack([r.tokens[r.data["P"] + r.step - 1] for r in active])[:, None]
        extra = {}
        if kv.pad is not None:  # rows at their own positions (a left-padded cache)
            extra["positions"] = torch.tensor([[r.data["pos"]] for r in active], device=tokens.device)
        logits = model(tokens, kv_cache=kv, **extra)[:, -1]
        state.calls += 1
        for r, lg in zip(active, logits):
            r.data["logits"], r.data["pos"] = lg, r.data["pos"] + 1
