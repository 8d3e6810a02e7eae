"""Samplers: one file per family, each an object with ``generate()`` built on ``step()``."""

from __future__ import annotations

from .ancestral import AncestralSampler, EulerSampler
from .autoregressive import AutoregressiveSampler
from .base import Generation, StepOutput
from .continuous import ContinuousSampler, DDIMSampler
from .remasking import ConfidenceSampler

DIFFUSION_SAMPLERS = {"ancestral": AncestralSampler, "confidence": ConfidenceSampler, "euler": EulerSampler}
CONTINUOUS_SAMPLERS = {"ddpm": ContinuousSampler, "ddim": DDIMSampler}


def build_sampler(name: str | None, objective, tokenizer, **options):
    """The sampler for a model: the AR twin always decodes left to right with its KV cache."""
    banned = (tokenizer.mask_id, tokenizer.pad_id, tokenizer.unk_id)  # never text
    if objective.name == "ar":
        if name not in (None, "ar"):
            raise ValueError(f"sampler {name!r} needs a diffusion model; this run is the AR twin (use 'ar')")
        return AutoregressiveSampler(bos_id=tokenizer.eot_id, banned_ids=banned, **options)
    if objective.name == "gaussian":
        name = name or "ddpm"
        if name not in CONTINUOUS_SAMPLERS:
            raise ValueError(f"sampler {name!r} is for discrete processes; this run is gaussian (use ddpm or ddim)")
        return CONTINUOUS_SAMPLERS[name](banned_ids=banned, **options)
    if name in CONTINUOUS_SAMPLERS:
        raise ValueError(f"the {name} sampler needs a gaussian model; this run is {objective.name!r} (use ancestral)")
    name = name or "ancestral"
    if name not in DIFFUSION_SAMPLERS:
        raise ValueError(f"unknown sampler {name!r} (choose {', '.join(DIFFUSION_SAMPLERS)})")
    if name == "confidence" and objective.name != "masked":
        raise ValueError(f"the confidence sampler needs a masked model; this run is {objective.name!r} (use ancestral)")
    if name == "euler" and not hasattr(objective, "euler_step"):
        raise ValueError(f"the euler sampler needs a score-entropy model (sedd-*); this run is {objective.name!r}")
    return DIFFUSION_SAMPLERS[name](banned_ids=banned, **options)


__all__ = ["AncestralSampler", "AutoregressiveSampler", "ConfidenceSampler", "ContinuousSampler", "DDIMSampler",
           "EulerSampler", "Generation", "StepOutput", "build_sampler"]
