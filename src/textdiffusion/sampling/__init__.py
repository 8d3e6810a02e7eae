"""Samplers: one file per family, each an object with ``generate()`` built on ``step()``.

``build_sampler(name, objective, tokenizer, **options)`` picks the sampler for a run by name and
checks that it fits the run's process; ``SAMPLERS`` lists every name with what it needs.
"""

from __future__ import annotations

from ..config import DEFAULT_SAMPLER, SAMPLERS
from .ancestral import AncestralSampler, EulerSampler
from .autoregressive import AutoregressiveSampler
from .base import Generation, StepOutput
from .blocks import BlockDiffusionSampler, SemiAutoregressiveSampler, ThresholdSampler
from .continuous import ContinuousSampler, DDIMSampler
from .remasking import ConfidenceSampler, RemaskingSampler, ReMDMSampler

# options each sampler takes beyond temperature / top-k / top-p
_OPTIONS = {
    "ancestral": ("cache",), "euler": (), "tau-leaping": (), "ddpm": (), "ddim": (), "ar": (),
    "confidence": ("schedule",), "margin": ("schedule",), "entropy": ("schedule",), "random": ("schedule",),
    "remdm": ("eta",), "semi-ar": ("block_length", "order", "eot_id"),
    "threshold": ("block_length", "threshold", "kv_cache", "eot_id"), "block": ("order", "kv_cache", "eot_id"),
}


def build_sampler(name: str | None, objective, tokenizer, **options):
    """The sampler ``name`` (default: the process's own) for a run, configured by ``options``.
    Options a sampler does not use are ignored when left at None."""
    banned = (tokenizer.mask_id, tokenizer.pad_id, tokenizer.unk_id)  # never text
    process = objective.name
    name = name or DEFAULT_SAMPLER[process]
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r} (choose {', '.join(SAMPLERS)})")
    fits, _ = SAMPLERS[name]
    if process not in fits:
        raise ValueError(f"the {name} sampler needs a {' or '.join(fits)} model; this run is {process!r} "
                         f"(its default sampler is {DEFAULT_SAMPLER[process]})")
    base = {k: options.pop(k) for k in ("temperature", "top_k", "top_p") if k in options}
    extra = {k: v for k, v in options.items() if v is not None}
    unused = set(extra) - set(_OPTIONS[name]) - {"eot_id"}
    if unused:
        raise ValueError(f"the {name} sampler takes no {', '.join(sorted(unused))} option")
    kw = {**base, "banned_ids": banned}
    if "eot_id" in _OPTIONS[name] and extra.get("eot_id") is not None:
        kw["eot_id"] = extra["eot_id"]
    if name == "ar":
        return AutoregressiveSampler(bos_id=tokenizer.eot_id, **kw)
    if name == "ancestral":
        return AncestralSampler(cache=extra.get("cache", True), **kw)
    if name in ("euler", "tau-leaping"):
        sampler = EulerSampler(**kw)
        sampler.name = name  # the same steps under either name
        return sampler
    if name in ("ddpm", "ddim"):
        return (ContinuousSampler if name == "ddpm" else DDIMSampler)(**kw)
    if name in ("confidence", "margin", "entropy", "random"):
        return RemaskingSampler(strategy=name, schedule=extra.get("schedule", "linear"), **kw)
    if name == "remdm":
        return ReMDMSampler(eta=extra.get("eta", 0.04), **kw)
    if name == "semi-ar":
        return SemiAutoregressiveSampler(block_length=extra.get("block_length", 32),
                                         strategy=extra.get("order", "confidence"), **kw)
    if name == "threshold":
        return ThresholdSampler(block_length=extra.get("block_length", 32), threshold=extra.get("threshold", 0.9),
                                cache=extra.get("kv_cache", "dual"), **kw)
    cache = extra.get("kv_cache", "exact")
    if cache not in ("exact", "none"):
        raise ValueError(f"block diffusion's KV cache is exact or none; got {cache!r}")
    return BlockDiffusionSampler(strategy=extra.get("order", "ancestral"), cache=cache == "exact", **kw)


__all__ = ["SAMPLERS", "AncestralSampler", "AutoregressiveSampler", "BlockDiffusionSampler", "ConfidenceSampler",
           "ContinuousSampler", "DDIMSampler", "EulerSampler", "Generation", "ReMDMSampler", "RemaskingSampler",
           "SemiAutoregressiveSampler", "StepOutput", "ThresholdSampler", "build_sampler"]
