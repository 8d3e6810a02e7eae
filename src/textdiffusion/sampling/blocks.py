"""Decoding block by block, left to right: semi-autoregressive remasking, Fast-dLLM threshold
decoding with an approximate KV cache, and block diffusion (BD3-LM) with an exact KV cache.

* ``SemiAutoregressiveSampler`` (LLaDA's semi-AR remasking; masked models): the generated part is
  cut into blocks of ``block_length``; each block gets its share of the steps and is decoded with
  a remasking order (confidence, margin, entropy, random) while the network reads the whole
  sequence (later blocks still masked).
* ``ThresholdSampler`` (Fast-dLLM; Wu et al. 2025): the same blocks, but every step reveals all
  masked tokens of the block whose confidence exceeds ``threshold`` (at least one, and at least
  the even share the step budget needs). With ``cache="prefix"`` the first call of a block runs
  the whole sequence and stores every position's keys/values; later calls of that block run the
  block and what follows it and read the prefix from the store. ``cache="dual"`` runs only the
  block and reads prefix and suffix. Approximate: the stored entries are refreshed once per block.
* ``BlockDiffusionSampler`` (models trained with ``--process block``): block k is decoded by
  masked diffusion (ancestral or confidence steps) attending to the clean blocks before it, whose
  keys/values sit in an exact KV cache. The call that starts block k also carries the just
  finished block k-1 (its keys/values are stored, the noisy block's are not), so the cache costs
  no extra network calls. ``cache=False`` recomputes everything with the block-causal mask and
  gives the same tokens.

Canvases: semi-ar and threshold decode the span from the first free position to the last in
blocks (fixed text inside a block is never touched); block diffusion reads only the left context,
so it takes prompt canvases only.

All stop early (variable length) when given ``eot_id``: a row that has produced end-of-text by the
end of a block is done (it leaves the batch; the others go on). NFE counts network calls and
never exceeds ``steps``.

State machine (sampling/base.py): each row keeps its block, its step within the block and its
generator. Without a shared cache (semi-ar, threshold with ``kv_cache="none"``, block with
``kv_cache="none"``) rows progress on their own; with one (threshold prefix/dual, block exact)
the rows of a batch decode the same block together (a row whose block is done waits for the
others, without a network call), because the cache holds every row's keys/values of one pass.
"""

from __future__ import annotations

import torch

from ..errors import UsageError
from ..models.transformer import KVCache, WindowCache
from ..processes.block import block_causal_mask
from .base import (
    Canvas,
    Generators,
    Row,
    Sampler,
    State,
    StepOutput,
    padded_call,
    require_prompt_canvas,
)
from .filters import ban, filter_logits, sample_categorical, validate_sampling_args
from .remasking import STRATEGIES, masked_time, reveal_step, top_k_mask


def split_steps(steps: int, num_blocks: int) -> list[int]:
    """An even share of ``steps`` per block (earlier blocks get the remainder)."""
    if steps < num_blocks:
        raise UsageError(f"{num_blocks} blocks need at least {num_blocks} steps (one per block); got {steps}")
    base, extra = divmod(steps, num_blocks)
    return [base + (i < extra) for i in range(num_blocks)]


class _BlockwiseBase(Sampler):
    shared_cache = False  # True: the batch's rows share one cache and decode a block together

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 banned_ids: tuple[int, ...] = (), block_length: int = 32, eot_id: int | None = None):
        validate_sampling_args(temperature, top_k, top_p)
        if block_length <= 0:
            raise UsageError("block_length must be positive")
        self.banned_ids = list(banned_ids)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.block_length, self.eot_id = block_length, eot_id

    def _log_probs(self, process, logits: torch.Tensor) -> torch.Tensor:
        return filter_logits(process.log_probs(ban(logits, self.banned_ids)), self.temperature, self.top_k, self.top_p)

    def _plan(self, state: State, bounds: list[tuple[int, int]], steps: int, eot_id: int | None) -> None:
        """Every row decodes ``bounds`` (lo, hi) in order with an even share of ``steps`` each."""
        budget = split_steps(steps, len(bounds))
        for r in state.rows:
            r.data.update(bounds=bounds, budget=budget, bi=0, j=0, eot=eot_id, held=False, log_p=None)
            self._enter_block(r)
        self._advance_all(state)

    def _enter_block(self, r: Row) -> None:
        pass

    def _advance(self, r: Row, mask_id: int) -> None:
        """Move the row past its finished blocks (no mask left, or its steps spent): done at
        end-of-text or when no block is left; with a shared cache it waits at the end of its block."""
        d = r.data
        while d["bi"] < len(d["bounds"]):
            lo, hi = d["bounds"][d["bi"]]
            if d["j"] < d["budget"][d["bi"]] and bool((r.tokens[lo:hi] == mask_id).any()):
                return
            if d["eot"] is not None and bool((r.tokens[self._prompt(r):hi] == d["eot"]).any()):
                r.end, r.done = hi, True
                return
            if self.shared_cache:
                d["held"] = True
                return
            d["bi"], d["j"], d["log_p"] = d["bi"] + 1, 0, None
            if d["bi"] < len(d["bounds"]):
                self._enter_block(r)
        r.done = True

    def _advance_all(self, state: State) -> None:
        mask_id = state.process.mask_id
        for r in state.active():
            self._advance(r, mask_id)
        rows = state.active()
        while rows and all(r.data["held"] for r in rows):  # the whole batch is past its block: the next one
            for r in rows:
                r.data.update(bi=r.data["bi"] + 1, j=0, held=False, log_p=None)
                if r.data["bi"] < len(r.data["bounds"]):
                    self._enter_block(r)
                self._advance(r, mask_id)
            rows = state.active()
        self._left(state)

    def _left(self, state: State) -> None:
        """Rows that finished leave the shared cache."""

    @staticmethod
    def _prompt(r: Row) -> int:
        return r.data.get("P", 0)


class SemiAutoregressiveSampler(_BlockwiseBase):
    name = "semi-ar"
    family = "semi-ar"

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 banned_ids: tuple[int, ...] = (), block_length: int = 32, order: str = "confidence",
                 eot_id: int | None = None):
        super().__init__(temperature, top_k, top_p, banned_ids, block_length, eot_id)
        if order not in STRATEGIES:
            raise UsageError(f"unknown order {order!r} (choose {', '.join(STRATEGIES)})")
        self.strategy = order

    def start(self, model, process, canvas: Canvas, steps: int, gen: Generators = None) -> State:
        if process.mask_id is None or process.name != "masked":
            raise UsageError(f"the {self.name} sampler needs a masked model; this one is {process.name!r}")
        state = self._rows(process, canvas, steps, gen)
        fixed, P = canvas.fixed, canvas.prompt_length
        end = int((~fixed).any(0).nonzero().max()) + 1  # one past the last free position
        bounds = [(lo, min(lo + self.block_length, end)) for lo in range(P, end, self.block_length)
                  if bool((~fixed[:, lo : lo + self.block_length]).any())]  # blocks with something to fill
        for r in state.rows:
            r.data["P"] = P
        if self.shared_cache:
            state.shared.update(cache=WindowCache(), cached=[])
        self._plan(state, bounds, steps, self.eot_id if canvas.is_prompt else None)  # never cut off text after holes
        return state

    def _block_logits(self, state: State, model, rows: list[Row]) -> list[torch.Tensor]:
        """Each row's logits for positions [lo, hi) of its current block (full recompute here)."""
        process = state.process
        t = torch.cat([masked_time(process, r.tokens[None], r.fixed[None]) for r in rows])
        full = padded_call(lambda x, mask: model(x, t, **({} if mask is None else {"attn_mask": mask})),
                           [r.tokens for r in rows])
        return [f[slice(*r.data["bounds"][r.data["bi"]])] for r, f in zip(rows, full)]

    def step(self, state: State, model) -> StepOutput:
        process = state.process
        rows = [r for r in state.active() if not r.data["held"]]
        logits = self._block_logits(state, model, rows)
        state.calls += 1
        changed, dists = {}, {}
        for r, lg in zip(rows, logits):
            b, smp, d = state.rows.index(r), r.sampler, r.data
            lo, hi = d["bounds"][d["bi"]]
            log_p = smp._log_probs(process, lg[None])
            block = r.tokens[lo:hi][None]
            eligible = block == process.mask_id
            share = torch.ceil(eligible.sum(1).double() / (d["budget"][d["bi"]] - d["j"])).long()  # even share left
            out = smp._reveal(log_p, block, eligible, share, r.gen)
            r.tokens = r.tokens.clone()
            r.tokens[lo:hi] = out.x_prev[0]
            c = torch.zeros_like(r.fixed)
            c[lo:hi] = out.changed[0]
            changed[b], dists[b] = c, (lo, log_p[0])
            d["j"] += 1
            r.nfe, r.step = r.nfe + 1, r.step + 1
        first = rows[0].data["bi"]
        self._advance_all(state)
        return state.output(changed, dists, block=first)

    def _reveal(self, log_p, block, eligible, k, gen) -> StepOutput:
        return reveal_step(log_p, block, eligible, torch.minimum(k.clamp_min(1), eligible.sum(1)), self.strategy, gen)


class ThresholdSampler(SemiAutoregressiveSampler):
    name = "threshold"
    family = "threshold"

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 banned_ids: tuple[int, ...] = (), block_length: int = 32, threshold: float = 0.9,
                 kv_cache: str = "dual", eot_id: int | None = None):
        super().__init__(temperature, top_k, top_p, banned_ids, block_length, "confidence", eot_id)
        if kv_cache not in ("none", "prefix", "dual"):
            raise UsageError(f"--kv-cache must be none, prefix or dual; got {kv_cache!r}")
        if threshold <= 0:
            raise UsageError("--threshold must be positive (above 1: one token per step)")
        self.threshold, self.cache = threshold, kv_cache
        self.shared_cache = kv_cache != "none"

    def _block_logits(self, state: State, model, rows: list[Row]) -> list[torch.Tensor]:
        if self.cache == "none":
            return super()._block_logits(state, model, rows)
        process, cache = state.process, state.shared["cache"]
        lo, hi = rows[0].data["bounds"][rows[0].data["bi"]]  # the batch decodes one block together
        x = torch.stack([r.tokens for r in rows])
        t = torch.cat([masked_time(process, r.tokens[None], r.fixed[None]) for r in rows])
        if all(r.data["j"] == 0 for r in rows):  # refresh: one full pass records every position's keys/values
            cache.clear()
            state.shared["cached"] = [id(r) for r in rows]
            return list(model(x, t, kv_cache=cache)[:, lo:hi])
        cached = state.shared["cached"]
        order = [cached.index(id(r)) for r in rows]
        cache.start = lo
        cache.rows = None if order == list(range(len(cached))) else torch.tensor(order, device=x.device)
        window = x[:, lo:] if self.cache == "prefix" else x[:, lo:hi]
        return list(model(window, t, kv_cache=cache)[:, : hi - lo])

    def _reveal(self, log_p, block, eligible, k, gen) -> StepOutput:
        """Every eligible token above the threshold, but at least one and at least the share."""
        candidate = sample_categorical(log_p, gen)
        confidence = log_p.gather(-1, candidate[..., None]).squeeze(-1).exp()
        above = (eligible & (confidence > self.threshold)).sum(1)
        k = torch.minimum(torch.maximum(above, k).clamp_min(1), eligible.sum(1))
        changed = top_k_mask(confidence, eligible, k)
        return StepOutput(torch.where(changed, candidate, block), torch.where(eligible, candidate, block), changed)


class BlockDiffusionSampler(_BlockwiseBase):
    name = "block"
    family = "block"

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 banned_ids: tuple[int, ...] = (), order: str = "ancestral", kv_cache: str = "exact",
                 eot_id: int | None = None):
        super().__init__(temperature, top_k, top_p, banned_ids, 1, eot_id)
        if order not in ("ancestral", "confidence"):
            raise UsageError(f"block diffusion steps (--order) are ancestral or confidence; got {order!r}")
        if kv_cache not in ("exact", "none"):
            raise UsageError(f"block diffusion's KV cache (--kv-cache) is exact or none; got {kv_cache!r}")
        self.strategy, self.cache = order, kv_cache == "exact"
        self.shared_cache = self.cache

    def start(self, model, process, canvas: Canvas, steps: int, gen: Generators = None) -> State:
        if process.block_size is None:
            raise UsageError(f"the block sampler needs a block diffusion model (--process block); this one is {process.name!r}")
        require_prompt_canvas(canvas, "block diffusion")
        b = process.block_size
        state = self._rows(process, canvas, steps, gen)
        P, total = canvas.prompt_length, canvas.tokens.shape[1]
        bounds = [(max(k * b, P), min((k + 1) * b, total)) for k in range(P // b, -(-total // b))]
        for r in state.rows:
            r.data["P"] = P
        if self.cache:
            state.shared.update(kv=KVCache(), stored=0, cached=[id(r) for r in state.rows])
        self._plan(state, bounds, steps, self.eot_id)
        return state

    def _enter_block(self, r: Row) -> None:
        n = r.data["budget"][r.data["bi"]]
        r.data["grid"] = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)

    def _left(self, state: State) -> None:
        if not self.cache:
            return
        cached, active = state.shared["cached"], [id(r) for r in state.active()]
        if active != cached and active:
            keep = torch.tensor([cached.index(i) for i in active], device=state.rows[0].tokens.device)
            state.shared["kv"].select(keep)
            state.shared["cached"] = active

    def _logits(self, state: State, model, rows: list[Row]) -> list[torch.Tensor]:
        """Each row's logits for its current block: [lo, hi) of the block-causal pass."""
        b = state.process.block_size
        lo, hi = rows[0].data["bounds"][rows[0].data["bi"]]
        device = rows[0].tokens.device
        if not self.cache:
            spans = [r.data["bounds"][r.data["bi"]] for r in rows]
            width = max(h for _, h in spans)
            causal = block_causal_mask(width, b, device)

            def call(x, mask):
                m = causal[: x.shape[1], : x.shape[1]]
                return model(x, None, attn_mask=m if mask is None else mask & m)

            full = padded_call(call, [r.tokens[:h] for r, (_, h) in zip(rows, spans)])
            return [f[lo_b:h] for f, (lo_b, h) in zip(full, spans)]
        kv, stored = state.shared["kv"], state.shared["stored"]
        block_start = (lo // b) * b
        x = torch.stack([r.tokens for r in rows])
        if stored < block_start:  # the call that starts a block stores the finished clean positions
            kv.keep, kv.rows = block_start - stored, None
            logits = model(x[:, stored:hi], None, kv_cache=kv, attn_mask=block_causal_mask(hi - stored, b, device, stored))
            state.shared["stored"] = block_start
        else:
            order = [state.shared["cached"].index(id(r)) for r in rows]
            kv.keep = 0
            kv.rows = None if order == list(range(len(state.shared["cached"]))) else torch.tensor(order, device=device)
            logits = model(x[:, stored:hi], None, kv_cache=kv, attn_mask=block_causal_mask(hi - stored, b, device, stored))
            kv.rows = None
        kv.keep = 0
        return list(logits[:, -(hi - lo):])

    def step(self, state: State, model) -> StepOutput:
        process = state.process
        rows = [r for r in state.active() if not r.data["held"]]
        stale = [r for r in rows if r.data["log_p"] is None]  # an unchanged block keeps its prediction (no time input)
        if stale:
            for r, lg in zip(stale, self._logits(state, model, stale)):
                r.data["log_p"] = r.sampler._log_probs(process, lg[None])
                r.nfe += 1
            state.calls += 1
        changed, dists = {}, {}
        for r in rows:
            b, smp, d = state.rows.index(r), r.sampler, r.data
            lo, hi = d["bounds"][d["bi"]]
            log_p, block = d["log_p"], r.tokens[lo:hi][None]
            masked = block == process.mask_id
            if smp.strategy == "ancestral":
                new, _ = process.reverse_step(log_p, block, float(d["grid"][d["j"]]), float(d["grid"][d["j"] + 1]), r.gen)
                moved = new != block
            else:
                n_left = d["budget"][d["bi"]] - d["j"]
                k = torch.ceil(masked.sum(1).double() / n_left).long().clamp_min(1)
                out = reveal_step(log_p, block, masked, torch.minimum(k, masked.sum(1)), "confidence", r.gen)
                new, moved = out.x_prev, out.changed
            if moved.any():
                d["log_p"] = None
            r.tokens = r.tokens.clone()
            r.tokens[lo:hi] = new[0]
            c = torch.zeros_like(r.fixed)
            c[lo:hi] = moved[0]
            changed[b], dists[b] = c, (lo, log_p[0])
            d["j"] += 1
            r.step += 1
        first = rows[0].data["bounds"][rows[0].data["bi"]][0] // process.block_size
        self._advance_all(state)
        return state.output(changed, dists, block=first)
