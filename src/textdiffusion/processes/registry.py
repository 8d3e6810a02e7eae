"""Every process in one table, importable without torch: its name, a one-line description, its
time-conditioning default, whether it has a discrete-time (D3PM) bound, and how a run builds it
(``target``, ``backbone``: ``runs.build_model`` reads them). Config validation, ``train --process`` and its help, ``eval
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
    target: str = ""  # "module:Class" (relative to this package); the class has from_config(p, tokenizer)
    backbone: str = "full"  # the network: full attention, causal (the AR twin), or embedding (noisy embeddings in)

    def load(self) -> type:
        import importlib

        module, cls = self.target.split(":")
        return getattr(importlib.import_module(module, __package__), cls)


PROCESSES: dict[str, ProcessSpec] = {s.name: s for s in (
    ProcessSpec("masked", "masked (absorbing) diffusion, MDLM's bound", False, discrete_time=True,
                target=".masked:MaskedProcess"),
    ProcessSpec("uniform", "uniform (random-token replacement) diffusion", True, discrete_time=True,
                target=".uniform:UniformProcess"),
    ProcessSpec("gaussian", "Gaussian noise on learned embeddings, then rounding", True,
                target=".gaussian:GaussianProcess", backbone="embedding"),
    ProcessSpec("sedd-absorb", "score-entropy diffusion (SEDD), absorbing transitions", True,
                target=".score_entropy:ScoreEntropyProcess"),
    ProcessSpec("sedd-uniform", "score-entropy diffusion (SEDD), uniform transitions", True,
                target=".score_entropy:ScoreEntropyProcess"),
    ProcessSpec("block", "block diffusion (BD3-LM): AR over blocks, masked inside (process.block_size)", False,
                guidable=False, target=".block:BlockDiffusionProcess"),
    ProcessSpec("ar", "the autoregressive twin on the same backbone", False, guidable=False,
                target=".autoregressive:AutoregressiveObjective", backbone="causal"),
)}

NAMES = tuple(PROCESSES)


def help_text() -> str:
    return "; ".join(f"{s.name}: {s.doc}" for s in PROCESSES.values())
