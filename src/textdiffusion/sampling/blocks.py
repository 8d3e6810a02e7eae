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

All stop early (variable length) when given ``eot_id``: once every row has produced end-of-text,
the remaining blocks are dropped. NFE counts network calls and never exceeds ``steps``.
"""

from __future__ import annotations

import time

import torch

from ..errors import UsageError
from ..models.transformer import KVCache, WindowCache
from ..processes.block import block_causal_mask
from .base import (
    Canvas,
    Generation,
    OnStep,
    StepOutput,
    report_step,
    require_prompt_canvas,
    resolve_canvas,
    start_sequence,
)
from .filters import ban, filter_logits, sample_categorical, validate_sampling_args
from .remasking import STRATEGIES, masked_time, reveal_step, top_k_mask


def split_steps(steps: int, num_blocks: int) -> list[int]:
    """An even share of ``steps`` per block (earlier blocks get the remainder)."""
    if steps < num_blocks:
        raise UsageError(f"{num_blocks} blocks need at least {num_blocks} steps (one per block); got {steps}")
    base, extra = divmod(steps, num_blocks)
    return [base + (i < extra) for i in range(num_blocks)]


def _finished(x: torch.Tensor, prompt_length: int, end: int, eot_id: int | None) -> bool:
    return eot_id is not None and bool((x[:, prompt_length:end] == eot_id).any(1).all())


def _write_block(x, lo, hi, block, changed, i, states, on_step, log_p=None, nfe=None, index=None) -> torch.Tensor:
    """x with positions [lo, hi) replaced by ``block``; the step is reported for the whole sequence
    (with the block's distribution ``log_p``, the network calls so far and the block's index)."""
    x = x.clone()
    x[:, lo:hi] = block
    everywhere = torch.zeros_like(x, dtype=torch.bool)
    everywhere[:, lo:hi] = changed
    report_step(i, StepOutput(x, None, everywhere, log_probs=log_p, offset=lo, nfe=nfe, block=index), states, on_step)
    return x


class _BlockwiseBase:
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


class SemiAutoregressiveSampler(_BlockwiseBase):
    name = "semi-ar"
    window_cache = False  # the threshold sampler's approximate KV cache

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 banned_ids: tuple[int, ...] = (), block_length: int = 32, order: str = "confidence",
                 eot_id: int | None = None):
        super().__init__(temperature, top_k, top_p, banned_ids, block_length, eot_id)
        if order not in STRATEGIES:
            raise UsageError(f"unknown order {order!r} (choose {', '.join(STRATEGIES)})")
        self.strategy = order

    def _block_logits(self, model, process, x, lo, hi, fixed, first, cache):
        """Logits for positions [lo, hi) of the current block (full recompute here)."""
        return model(x, masked_time(process, x, fixed))[:, lo:hi]

    @torch.no_grad()
    def generate(self, model, process, *, length: int | None = None, steps: int, batch_size: int = 1,
                 prompt: torch.Tensor | None = None, gen: torch.Generator | None = None,
                 on_step: OnStep | None = None, trace: bool = False, canvas: Canvas | None = None) -> Generation:
        if process.mask_id is None or process.name != "masked":
            raise UsageError(f"the {self.name} sampler needs a masked model; this one is {process.name!r}")
        canvas = resolve_canvas(model, prompt, batch_size, length, canvas)
        x, fixed, P = start_sequence(process, canvas, gen), canvas.fixed, canvas.prompt_length
        end = int((~fixed).any(0).nonzero().max()) + 1  # one past the last free position
        bounds = [(lo, min(lo + self.block_length, end)) for lo in range(P, end, self.block_length)
                  if bool((~fixed[:, lo : lo + self.block_length]).any())]  # blocks with something to fill
        budget = split_steps(steps, len(bounds))
        eot_id = self.eot_id if canvas.is_prompt else None  # never cut off fixed text after the holes
        cache = WindowCache() if self.window_cache else None
        nfe, i, states = 0, 0, []
        start = time.perf_counter()
        for block_index, ((lo, hi), n_steps) in enumerate(zip(bounds, budget)):
            for j in range(n_steps):
                block = x[:, lo:hi]
                eligible = block == process.mask_id
                if not eligible.any():
                    break
                log_p = self._log_probs(process, self._block_logits(model, process, x, lo, hi, fixed, j == 0, cache))
                nfe += 1
                share = torch.ceil(eligible.sum(1).double() / (n_steps - j)).long()  # even share of what is left
                out = self._reveal(log_p, block, eligible, share, gen)
                x = _write_block(x, lo, hi, out.x_prev, out.changed, i, states if trace else None, on_step, log_p, nfe,
                                 block_index)
                i += 1
            if _finished(x, P, hi, eot_id):
                x = x[:, :hi]
                break
        return Generation(x, P, nfe, time.perf_counter() - start, states, fixed)

    def _reveal(self, log_p, block, eligible, k, gen) -> StepOutput:
        return reveal_step(log_p, block, eligible, torch.minimum(k.clamp_min(1), eligible.sum(1)), self.strategy, gen)


class ThresholdSampler(SemiAutoregressiveSampler):
    name = "threshold"
    window_cache = True

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 banned_ids: tuple[int, ...] = (), block_length: int = 32, threshold: float = 0.9,
                 kv_cache: str = "dual", eot_id: int | None = None):
        super().__init__(temperature, top_k, top_p, banned_ids, block_length, "confidence", eot_id)
        if kv_cache not in ("none", "prefix", "dual"):
            raise UsageError(f"--kv-cache must be none, prefix or dual; got {kv_cache!r}")
        if threshold <= 0:
            raise UsageError("--threshold must be positive (above 1: one token per step)")
        self.threshold, self.cache = threshold, kv_cache

    def _block_logits(self, model, process, x, lo, hi, fixed, first, cache):
        t = masked_time(process, x, fixed)
        if self.cache == "none":
            return model(x, t)[:, lo:hi]
        if first:  # refresh: one full pass records every position's keys/values
            cache.clear()
            return model(x, t, kv_cache=cache)[:, lo:hi]
        cache.start = lo
        window = x[:, lo:] if self.cache == "prefix" else x[:, lo:hi]
        return model(window, t, kv_cache=cache)[:, : hi - lo]

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

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 banned_ids: tuple[int, ...] = (), order: str = "ancestral", kv_cache: str = "exact",
                 eot_id: int | None = None):
        super().__init__(temperature, top_k, top_p, banned_ids, 1, eot_id)
        if order not in ("ancestral", "confidence"):
            raise UsageError(f"block diffusion steps (--order) are ancestral or confidence; got {order!r}")
        if kv_cache not in ("exact", "none"):
            raise UsageError(f"block diffusion's KV cache (--kv-cache) is exact or none; got {kv_cache!r}")
        self.strategy, self.cache = order, kv_cache == "exact"

    @torch.no_grad()
    def generate(self, model, process, *, length: int | None = None, steps: int, batch_size: int = 1,
                 prompt: torch.Tensor | None = None, gen: torch.Generator | None = None,
                 on_step: OnStep | None = None, trace: bool = False, canvas: Canvas | None = None) -> Generation:
        if process.block_size is None:
            raise UsageError(f"the block sampler needs a block diffusion model (--process block); this one is {process.name!r}")
        b = process.block_size
        canvas = resolve_canvas(model, prompt, batch_size, length, canvas)
        require_prompt_canvas(canvas, "block diffusion")
        x = start_sequence(process, canvas, gen)
        P, total = canvas.prompt_length, x.shape[1]
        first_block = P // b
        bounds = [(max(k * b, P), min((k + 1) * b, total), k * b) for k in range(first_block, -(-total // b))]
        budget = split_steps(steps, len(bounds))
        kv = KVCache()
        stored = 0  # positions whose keys/values are in the cache (all clean)
        nfe, i, states = 0, 0, []
        start = time.perf_counter()
        for (lo, hi, block_start), n_steps in zip(bounds, budget):
            grid = torch.linspace(1.0, 0.0, n_steps + 1, dtype=torch.float64)
            log_p = None
            for j in range(n_steps):
                masked = x[:, lo:hi] == process.mask_id
                if not masked.any():
                    break
                if log_p is None:  # a step that changed nothing leaves the prediction valid (no time input)
                    if self.cache:
                        kv.keep = block_start - stored  # store the finished clean positions, not the noisy block
                        chunk = x[:, stored:hi]
                        logits = model(chunk, None, kv_cache=kv, attn_mask=block_causal_mask(hi - stored, b, x.device, stored))
                        stored = block_start
                        kv.keep = 0
                    else:
                        logits = model(x[:, :hi], None, attn_mask=block_causal_mask(hi, b, x.device))
                    log_p = self._log_probs(process, logits[:, -(hi - lo):])
                    nfe += 1
                block = x[:, lo:hi]
                log_p_step = log_p
                if self.strategy == "ancestral":
                    new, _ = process.reverse_step(log_p, block, float(grid[j]), float(grid[j + 1]), gen)
                    changed = new != block
                else:
                    k = torch.ceil(masked.sum(1).double() / (n_steps - j)).long().clamp_min(1)
                    out = reveal_step(log_p, block, masked, torch.minimum(k, masked.sum(1)), "confidence", gen)
                    new, changed = out.x_prev, out.changed
                if changed.any():
                    log_p = None
                x = _write_block(x, lo, hi, new, changed, i, states if trace else None, on_step, log_p_step, nfe,
                                 block_start // b)
                i += 1
            if _finished(x, P, hi, self.eot_id):
                x = x[:, :hi]
                break
        return Generation(x, P, nfe, time.perf_counter() - start, states)
