"""The forward process, seen: a text corrupted at t = 0, 0.1, ..., 1 by masking, by random
replacement and by Gaussian noise on embeddings (each noisy vector read back as its nearest
token), side by side. The same draw of noise is used at every t for each process (one uniform
u per position: a token is corrupted once 1 - alpha(t) passes its u), so the picture shows one
trajectory growing noisier rather than independent samples.

The masked and uniform columns use the processes' own schedules (log-linear, as the runs train
with); the Gaussian column uses the given run's learned embeddings when it is a Gaussian run, else
a fixed random table of unit vectors (what an untrained Gaussian run starts from).
"""

from __future__ import annotations

import torch

from ..config import ProcessConfig
from ..processes.registry import PROCESSES
from ..tokenizers import MASK_GLYPH

TIMES = [round(0.1 * i, 1) for i in range(11)]


def _process(name: str, tokenizer):
    return PROCESSES[name].load().from_config(ProcessConfig(name=name), tokenizer)


def corruptions(run, text: str, times: list[float] = TIMES, seed: int = 0) -> dict[str, list[list[str]]]:
    """Process name -> per time, the corrupted text's pieces."""
    tok = run.tokenizer
    ids = torch.from_numpy(tok.encode_exact(text, "the text"))[None]  # (1, T)
    T = ids.shape[1]
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(1, T, generator=gen)
    replacement = torch.randint(0, tok.vocab_size, (1, T), generator=gen)
    noise = None

    def piece(i: int) -> str:
        if i == tok.mask_id:
            return MASK_GLYPH
        out = tok.decode([i])
        return out if out else "·"  # a special id drawn by the uniform process

    masked, uniform = _process("masked", tok), _process("uniform", tok)
    gauss = _process("gaussian", tok)
    if run.process.continuous:
        table = run.model.embeddings().detach().float()
    else:
        g = torch.Generator().manual_seed(1234)
        table = torch.randn(tok.vocab_size, gauss.embed_dim, generator=g)
        table = table / table.norm(dim=-1, keepdim=True)
    d = table.shape[1]
    noise = torch.randn(1, T, d, generator=gen)
    columns: dict[str, list[list[str]]] = {"masking": [], "random replacement": [], "Gaussian noise on embeddings": []}
    for t in times:
        tt = torch.tensor([float(t)])
        a_mask = float(masked.schedule.alpha(tt))
        a_unif = float(uniform.schedule.alpha(tt))
        m = torch.where(u < 1 - a_mask, torch.full_like(ids, tok.mask_id), ids)
        r = torch.where(u < 1 - a_unif, replacement, ids)
        alpha, sigma = gauss.alpha_sigma(tt)
        z = float(alpha) * table[ids] + float(sigma) * noise
        nearest = (z @ table.T).argmax(-1)
        columns["masking"].append([piece(i) for i in m[0].tolist()])
        columns["random replacement"].append([piece(i) for i in r[0].tolist()])
        columns["Gaussian noise on embeddings"].append([piece(i) for i in nearest[0].tolist()])
    return columns
