"""The bits a run needs for a text: what picks the length of a variable hole and what
``Pipeline.score`` reports."""

from __future__ import annotations

import math

import torch

from ..errors import UsageError


def sequence_bits(run, texts: list[str], seed: int = 0, mc_samples: int = 16, exact: bool = True) -> list[float]:
    """Total bits of each text under the run's model: exact for AR, the ELBO bound for diffusion
    (the same Monte Carlo draws of t for every text, so comparisons are paired). ``exact``: a
    character the tokenizer cannot spell is refused (a user's text); off for texts the model
    wrote (an end-of-text inside a fill decodes to a newline the tokenizer may not have)."""
    from ..evaluation.likelihood import sequence_nll

    tok, context = run.tokenizer, run.cfg.model.context
    bits = []
    for text in texts:
        ids = torch.from_numpy(tok.encode_exact(text, "the text") if exact else tok.encode(text))
        if len(ids) == 0:
            raise UsageError("nothing to score: the text is empty")
        if len(ids) > context:
            raise UsageError(f"the text has {len(ids)} tokens, more than the model context ({context})")
        bits.append(sequence_nll(run.model, run.process, ids, tok.eot_id, mc_samples, seed) / math.log(2))
    return bits
