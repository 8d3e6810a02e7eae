"""Every process in one table, importable without torch: its name, a one-line description, its
time-conditioning default, whether it has a discrete-time (D3PM) bound, and how a run builds it
(``build_process``). Config validation, ``train --process`` and its help, ``eval
--discrete-steps`` and classifier guidance read this table; ``sampling.registry`` says which
samplers fit each process.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    doc: str  # one line
    time_cond: bool  # the model reads t by default (masked models need not: the mask count says it)
    discrete_time: bool = False  # has the T-step (D3PM) bound: process.num_steps > 0
    guidable: bool = True  # a noisy-input classifier can steer it (classifier guidance)


PROCESSES: dict[str, ProcessSpec] = {s.name: s for s in (
    ProcessSpec("masked", "masked (absorbing) diffusion, MDLM's bound", False, discrete_time=True),
    ProcessSpec("uniform", "uniform (random-token replacement) diffusion", True, discrete_time=True),
    ProcessSpec("gaussian", "Gaussian noise on learned embeddings, then rounding", True),
    ProcessSpec("sedd-absorb", "score-entropy diffusion (SEDD), absorbing transitions", True),
    ProcessSpec("sedd-uniform", "score-entropy diffusion (SEDD), uniform transitions", True),
    ProcessSpec("block", "block diffusion (BD3-LM): AR over blocks, masked inside (process.block_size)", False,
                guidable=False),
    ProcessSpec("ar", "the autoregressive twin on the same backbone", False, guidable=False),
)}

NAMES = tuple(PROCESSES)


def help_text() -> str:
    return "; ".join(f"{s.name}: {s.doc}" for s in PROCESSES.values())


def build(cfg, tokenizer):
    """The backbone and the process (a diffusion process, or the AR objective) a config describes."""
    from ..errors import ConfigError
    from ..models.transformer import Transformer

    p, vocab = cfg.process, tokenizer.vocab_size
    if p.name == "ar":  # the same backbone, causal
        from .autoregressive import AutoregressiveObjective

        return Transformer(cfg.model, attn="causal"), AutoregressiveObjective()
    if p.name == "masked":
        from .masked import MaskedProcess

        return Transformer(cfg.model, attn="full"), MaskedProcess(vocab, tokenizer.mask_id, schedule=p.schedule,
                                                                  antithetic=p.antithetic, num_steps=p.num_steps)
    if p.name == "uniform":  # every id is a state (so any text, unknowns included, has a bound)
        from .uniform import UniformProcess

        return Transformer(cfg.model, attn="full"), UniformProcess(vocab, vocab, schedule=p.schedule,
                                                                   antithetic=p.antithetic, num_steps=p.num_steps)
    if p.name == "block":  # BD3-LM: block-causal attention comes from the process's masks
        from .block import BlockDiffusionProcess

        return Transformer(cfg.model, attn="full"), BlockDiffusionProcess(vocab, tokenizer.mask_id, p.block_size,
                                                                          schedule=p.schedule, antithetic=p.antithetic)
    if p.name == "gaussian":  # continuous inputs: the backbone reads noisy embeddings, not ids
        from ..models.continuous import EmbeddingDenoiser
        from .gaussian import GaussianProcess

        process = GaussianProcess(vocab, p.embed_dim, p.logsnr_min, p.logsnr_max, p.self_cond, antithetic=p.antithetic)
        return EmbeddingDenoiser(cfg.model, p.embed_dim, p.self_cond), process
    if p.name in ("sedd-absorb", "sedd-uniform"):
        from .score_entropy import ScoreEntropyProcess

        return Transformer(cfg.model, attn="full"), ScoreEntropyProcess(p.name.split("-")[1], vocab, tokenizer.mask_id,
                                                                        schedule=p.schedule, antithetic=p.antithetic)
    raise ConfigError(f"unknown process {p.name!r} (choose {', '.join(NAMES)})")
