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

State machine (sampling/base.py): each row keeps its block, its step within the block, its
generator and its own keys/values (``RowStore``), so rows progress on their own and may join a
batch in flight: one network call serves rows in different blocks, some refreshing their cache
with a full pass while others run a window (``RowCache`` splices each row's chunk into its own
store and masks the padding).
"""

from __future__ import annotations

import torch

from ..errors import UsageError
from ..models.transformer import Chunk, RowCache, RowStore
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
    time_grid,
)
from .filters import draw_and_rank, validate_sampling_args
from .remasking import STRATEGIES, draw_candidates, masked_time, reveal_step, top_k_mask


def split_steps(steps: int, num_blocks: int) -> list[int]:
    """An even share of ``steps`` per block (earlier blocks get the remainder)."""
    if steps < num_blocks:
        raise UsageError(f"{num_blocks} blocks need at least {num_blocks} steps (one per block); got {steps}")
    base, extra = divmod(steps, num_blocks)
    return [base + (i < extra) for i in range(num_blocks)]


def cached_call(model, stores: list[RowStore], chunks: list[Chunk], inputs: list[torch.Tensor], t) -> list[torch.Tensor]:
    """One network call in which row b runs ``inputs[b]`` as ``chunks[b]`` of its own store."""
    width = max(x.shape[0] for x in inputs)
    batch = torch.stack([torch.nn.functional.pad(x, (0, width - x.shape[0])) for x in inputs])
    cache = RowCache(stores, chunks, width, batch.device)
    out = model(batch, t, kv_cache=cache)
    return [o[: c.n] for o, c in zip(out, chunks)]


class _BlockwiseBase(Sampler):
    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 banned_ids: tuple[int, ...] = (), block_length: int = 32, eot_id: int | None = None):
        validate_sampling_args(temperature, top_k, top_p)
        if block_length <= 0:
            raise UsageError("block_length must be positive")
        self.banned_ids = list(banned_ids)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.block_length, self.eot_id = block_length, eot_id

    def _plan(self, state: State, bounds: list[tuple[int, int]], steps: int, prompt: int, eot_id: int | None) -> None:
        """Every row decodes ``bounds`` (lo, hi) in order with an even share of ``steps`` each."""
        budget = split_steps(steps, len(bounds))
        for r in state.rows:
            r.data.update(bounds=bounds, budget=budget, bi=0, j=0, P=prompt, eot=eot_id, log_p=None, store=RowStore())
            self._enter_block(r)
            self._advance(r, state.process.mask_id)

    def _enter_block(self, r: Row) -> None:
        pass

    def _advance(self, r: Row, mask_id: int) -> None:
        """Move the row past its finished blocks (no mask left, or its steps spent): done at
        end-of-text (checked at the end of a block) or when no block is left."""
        d = r.data
        while d["bi"] < len(d["bounds"]):
            lo, hi = d["bounds"][d["bi"]]
            if d["j"] < d["budget"][d["bi"]] and bool((r.tokens[lo:hi] == mask_id).any()):
                return
            if d["eot"] is not None and bool((r.tokens[d["P"] : hi] == d["eot"]).any()):
                r.end, r.done = hi, True
                return
            d["bi"], d["j"], d["log_p"] = d["bi"] + 1, 0, None
            if d["bi"] < len(d["bounds"]):
                self._enter_block(r)
        r.done = True

    @staticmethod
    def _write(r: Row, lo: int, hi: int, block: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
        """The row's tokens with [lo, hi) replaced; returns the (T,) changed mask."""
        r.tokens = r.tokens.clone()
        r.tokens[lo:hi] = block
        changed = torch.zeros_like(r.fixed)
        changed[lo:hi] = moved
        return changed


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
        from .registry import ABSORBING

        if process.mask_id is None or process.name not in ABSORBING:
            raise UsageError(f"the {self.name} sampler needs a masked model; this one is {process.name!r}")
        state = self._rows(process, canvas, steps, gen)
        fixed, P = canvas.fixed, canvas.prompt_length
        end = int((~fixed).any(0).nonzero().max()) + 1  # one past the last free position
        bounds = [(lo, min(lo + self.block_length, end)) for lo in range(P, end, self.block_length)
                  if bool((~fixed[:, lo : lo + self.block_length]).any())]  # blocks with something to fill
        self._plan(state, bounds, steps, P, self.eot_id if canvas.is_prompt else None)  # never cut off text after holes
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
        rows = state.active()
        logits = self._block_logits(state, model, rows)
        state.calls += 1
        changed, dists = {}, {}
        for r, lg in zip(rows, logits):
            smp, d = r.sampler, r.data
            lo, hi = d["bounds"][d["bi"]]
            log_p, scores = draw_and_rank(process, lg[None], smp)
            block = r.tokens[lo:hi][None]
            eligible = block == process.mask_id
            share = torch.ceil(eligible.sum(1).double() / (d["budget"][d["bi"]] - d["j"])).long()  # even share left
            out = smp._reveal(log_p, block, eligible, share, r.gen, scores)
            changed[r], dists[r] = self._write(r, lo, hi, out.x_prev[0], out.changed[0]), (lo, log_p[0])
            d["j"] += 1
            r.nfe, r.step = r.nfe + 1, r.step + 1
        first = rows[0].data["bi"]
        for r in rows:
            self._advance(r, process.mask_id)
        return state.output(changed, dists, block=first)

    def _reveal(self, log_p, block, eligible, k, gen, scores=None) -> StepOutput:
        return reveal_step(log_p, block, eligible, torch.minimum(k.clamp_min(1), eligible.sum(1)), self.strategy, gen,
                           scores)


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

    def _block_logits(self, state: State, model, rows: list[Row]) -> list[torch.Tensor]:
        """The first call of a row's block is a full pass that refreshes its store; later calls
        run only its window (prefix: the block and what follows; dual: the block) against it.
        A row with ``kv_cache="none"`` runs a full pass every call (in the same call as the
        cached rows: each row's cache mode is its own, whichever sampler steps the batch)."""
        if all(r.sampler.cache == "none" for r in rows):
            return super()._block_logits(state, model, rows)
        process = state.process
        t = torch.cat([masked_time(process, r.tokens[None], r.fixed[None]) for r in rows])
        chunks, inputs, cuts = [], [], []
        for r in rows:
            lo, hi = r.data["bounds"][r.data["bi"]]
            store = r.data["store"]
            if r.data["j"] == 0 or r.sampler.cache == "none":  # a full pass; a cached row's refreshes its store
                chunks.append(Chunk(0, r.length, replace=store.length, store=0 if r.sampler.cache == "none" else -1))
                inputs.append(r.tokens)
                cuts.append((lo, hi))
            else:
                end = r.length if r.sampler.cache == "prefix" else hi
                chunks.append(Chunk(lo, end - lo, replace=end - lo))
                inputs.append(r.tokens[lo:end])
                cuts.append((0, hi - lo))
        out = cached_call(model, [r.data["store"] for r in rows], chunks, inputs, t)
        return [o[a:b] for o, (a, b) in zip(out, cuts)]

    def _reveal(self, log_p, block, eligible, k, gen, scores=None) -> StepOutput:
        return reveal_above(log_p, block, eligible, k, self.threshold, gen, scores)


def reveal_above(log_p, block, eligible, k, threshold: float, gen, scores=None) -> StepOutput:
    """Every eligible token above ``threshold``, but at least one and at least ``k`` (confidence:
    the candidate's probability under ``scores``, the model's own when greedy)."""
    candidate = draw_candidates(log_p, eligible, gen)
    confidence = (log_p if scores is None else scores).gather(-1, candidate[..., None]).squeeze(-1).exp()
    above = (eligible & (confidence > threshold)).sum(1)
    k = torch.minimum(torch.maximum(above, k).clamp_min(1), eligible.sum(1))
    changed = top_k_mask(confidence, eligible, k)
    return StepOutput(torch.where(changed, candidate, block), torch.where(eligible, candidate, block), changed)


class BlockDiffusionSampler(_BlockwiseBase):
    name = "block"
    family = "block"

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 banned_ids: tuple[int, ...] = (), order: str = "ancestral", kv_cache: str = "exact",
                 threshold: float = 0.0, eot_id: int | None = None):
        super().__init__(temperature, top_k, top_p, banned_ids, 1, eot_id)
        if threshold and order != "confidence":
            raise UsageError("--threshold inside blocks goes with --order confidence")
        if order not in ("ancestral", "confidence"):
            raise UsageError(f"block diffusion steps (--order) are ancestral or confidence; got {order!r}")
        if kv_cache not in ("exact", "none"):
            raise UsageError(f"block diffusion's KV cache (--kv-cache) is exact or none; got {kv_cache!r}")
        self.strategy, self.cache, self.threshold = order, kv_cache == "exact", threshold

    def start(self, model, process, canvas: Canvas, steps: int, gen: Generators = None) -> State:
        if process.block_size is None:
            raise UsageError(f"the block sampler needs a block diffusion model (--process block); this one is {process.name!r}")
        require_prompt_canvas(canvas, "block diffusion")
        b = process.block_size
        state = self._rows(process, canvas, steps, gen)
        P, total = canvas.prompt_length, canvas.tokens.shape[1]
        bounds = [(max(k * b, P), min((k + 1) * b, total)) for k in range(P // b, -(-total // b))]
        self._plan(state, bounds, steps, P, self.eot_id)
        return state

    def _enter_block(self, r: Row) -> None:
        n = r.data["budget"][r.data["bi"]]
        r.data["grid"] = time_grid(n)

    def _logits(self, state: State, model, rows: list[Row]) -> list[torch.Tensor]:
        """Each row's logits for its current block, under the block-causal mask: recomputed from
        the start, or (exact cache) from the row's stored clean blocks, the call that starts a
        block storing the block just finished (its keys/values are final; a noisy block's are not)."""
        b = state.process.block_size
        device = rows[0].tokens.device
        spans = [r.data["bounds"][r.data["bi"]] for r in rows]
        if not any(r.sampler.cache for r in rows):
            causal = block_causal_mask(max(h for _, h in spans), b, device)

            def call(x, mask):
                m = causal[: x.shape[1], : x.shape[1]]
                return model(x, None, attn_mask=m if mask is None else mask & m)

            full = padded_call(call, [r.tokens[:h] for r, (_, h) in zip(rows, spans)])
            return [f[lo:h] for f, (lo, h) in zip(full, spans)]
        chunks, inputs = [], []
        for r, (lo, hi) in zip(rows, spans):  # a row without the cache (its own option) stores nothing
            stored = r.data["store"].length
            keep = (lo // b) * b - stored if r.sampler.cache else 0
            chunks.append(Chunk(stored, hi - stored, store=keep, inside=block_causal_mask(hi - stored, b, device, stored)))
            inputs.append(r.tokens[stored:hi])
        out = cached_call(model, [r.data["store"] for r in rows], chunks, inputs, None)
        return [o[-(hi - lo):] for o, (lo, hi) in zip(out, spans)]

    def step(self, state: State, model) -> StepOutput:
        process = state.process
        rows = state.active()
        stale = [r for r in rows if r.data["log_p"] is None]  # an unchanged block keeps its prediction (no time input)
        if stale:
            for r, lg in zip(stale, self._logits(state, model, stale)):
                r.data["log_p"], r.data["scores"] = draw_and_rank(process, lg[None], r.sampler)
                r.nfe += 1
            state.calls += 1
        changed, dists = {}, {}
        for r in rows:
            smp, d = r.sampler, r.data
            lo, hi = d["bounds"][d["bi"]]
            log_p, block = d["log_p"], r.tokens[lo:hi][None]
            masked = block == process.mask_id
            if smp.strategy == "ancestral":
                new, _ = process.reverse_step(log_p, block, float(d["grid"][d["j"]]), float(d["grid"][d["j"] + 1]), r.gen)
                moved = new != block
            else:
                k = torch.ceil(masked.sum(1).double() / (d["budget"][d["bi"]] - d["j"])).long().clamp_min(1)
                if smp.threshold:  # Fast-dLLM's rule inside the block: the share, and all above it
                    out = reveal_above(log_p, block, masked, k, smp.threshold, r.gen, d["scores"])
                else:
                    out = reveal_step(log_p, block, masked, torch.minimum(k, masked.sum(1)), "confidence", r.gen,
                                      d["scores"])
                new, moved = out.x_prev, out.changed
            if moved.any():
                d["log_p"] = None
            changed[r], dists[r] = self._write(r, lo, hi, new[0], moved[0]), (lo, log_p[0])
            d["j"] += 1
            r.step += 1
        first = rows[0].data["bounds"][rows[0].data["bi"]][0] // process.block_size
        for r in rows:
            self._advance(r, process.mask_id)
        return state.output(changed, dists, block=first)
