"""Editing (SDEdit for text): the span's tokens are re-noised to time ``strength`` (masked: each is
masked with probability 1 - alpha(strength); uniform: redrawn; Gaussian: its embeddings noised)
and denoised from there with the text around the span fixed; strength 1 regenerates the span
from the prior. The span keeps its token count. Text outside the span is returned verbatim.
"""

from __future__ import annotations

import torch

from ..errors import UsageError
from ..sampling.base import Canvas, Generation, Plan, resolve_canvas
from .filling import ControlResult, Task, _generator, _sampler
from .guidance import guided_model
from .templates import split_marked


def edit(run, text: str, start: int | None = None, end: int | None = None, *, strength: float = 0.5,
         num: int = 1, steps: int = 64, sampler: str | None = None, seed: int = 0, label: str | None = None,
         guidance: float = 0.0, classifier=None, trace: bool = False, on_step=None, **options) -> ControlResult:
    """Re-noise ``text[start:end]`` to time ``strength`` and denoise it with the rest fixed.
    Without offsets, the span is the one marked [EDIT]...[/EDIT] in ``text``."""
    return edit_task(run, text, start, end, strength=strength, num=num, steps=steps, sampler=sampler, seed=seed,
                     label=label, guidance=guidance, classifier=classifier, **options).run(on_step, trace)


def edit_task(run, text: str, start: int | None = None, end: int | None = None, *, strength: float = 0.5,
              num: int = 1, steps: int = 64, sampler: str | None = None, seed: int = 0, label: str | None = None,
              guidance: float = 0.0, classifier=None, **options) -> Task:
    """``edit`` prepared: its plan and the finish that puts the new span between the kept text."""
    if start is None and end is None:
        text, start, end = split_marked(text)
    if start is None or end is None or not 0 <= start < end <= len(text):
        raise UsageError(f"the span must satisfy 0 <= start < end <= {len(text)} (the text's length); got {start}:{end}")
    if not 0.0 < strength <= 1.0:
        raise UsageError(f"strength must be in (0, 1]; got {strength}")
    tok = run.tokenizer
    before, span, after = text[:start], text[start:end], text[end:]
    ids = [tok.encode_exact(part, "the text").tolist() for part in (before, span, after)]
    if not ids[1]:
        raise UsageError("the span holds no token")
    tokens = torch.tensor(ids[0] + ids[1] + ids[2], dtype=torch.long).expand(num, -1).clone()
    fixed = torch.ones_like(tokens, dtype=torch.bool)
    lo, hi = len(ids[0]), len(ids[0]) + len(ids[1])
    fixed[:, lo:hi] = False
    smp = _sampler(run, sampler, options)
    canvas = resolve_canvas(run.model, None, num, None, Canvas(tokens, fixed, strength))
    plan = Plan(smp, guided_model(run, label, guidance, classifier=classifier), run.process, canvas, steps,
                _generator(run, seed))

    def finish(outs: list[Generation]) -> ControlResult:
        out = outs[0]
        spans = [tok.decode(row[lo:hi]) for row in out.tokens.tolist()]
        return ControlResult([before + s + after for s in spans], [[s] for s in spans], out, smp.name, out.nfe,
                             out.seconds, {"span": [start, end], "strength": strength})

    return Task([plan], finish)
