"""Infilling: fill the holes of a template (templates.py) anywhere in a text, keeping the rest.

    [MASK]        one token
    [MASK:n]      exactly n tokens
    [MASK:a-b]    a variable-length hole of a to b tokens: the hole is filled at a few lengths
                  in [a, b] (``candidates`` of them, evenly spaced), every filled text is scored by
                  the model's own likelihood (the ELBO of diffusion models: a bound, estimated with
                  the same Monte Carlo draws for every candidate) and the most likely one is kept.
                  No padding token is involved, so it works with any trained model.

The fixed text is tokenized piece by piece (so holes sit on token boundaries) and returned
verbatim: the output string is built from the template's own text plus the decoded holes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UsageError
from ..sampling import build_sampler
from ..sampling.base import Generation, Plan, resolve_canvas
from .guidance import guided_model
from .scoring import sequence_bits
from .templates import Hole, Template


@dataclass
class ControlResult:
    """Filled or edited texts (one per sample) and how they were made."""

    texts: list[str]
    fills: list[list[str]]  # per sample, the text generated for each hole (edit: the new span)
    generation: Generation
    sampler: str
    nfe: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.generation.tokens_per_second

    def to_dict(self) -> dict:
        return {"texts": self.texts, "fills": self.fills, "sampler": self.sampler, "nfe": self.nfe,
                "seconds": self.seconds, "tokens_per_second": self.tokens_per_second, **self.extra}


@dataclass
class Task:
    """What a control function prepares before anything is generated: its plans (variable-length
    infilling tries several sizes) and ``finish``, which turns their generations into the answer.
    ``run()`` generates the plans in turn; a server steps them batched with other requests'."""

    plans: list[Plan]
    finish: Callable[[list[Generation]], Any]

    def run(self, on_step=None, trace: bool = False):
        return self.finish([p.generate(on_step, trace) for p in self.plans])


def _sampler(run, sampler: str | None, options: dict):
    return build_sampler(sampler, run.process, run.tokenizer, **options)


def _device(run) -> torch.device:
    return next(run.model.parameters()).device


def _generator(run, seed: int) -> torch.Generator:
    return torch.Generator(device=_device(run)).manual_seed(seed)


def fim_prompt(template: Template, tokenizer) -> tuple[list[int], list[bool]]:
    """The AR fill-in-the-middle twin's prompt, [eot] prefix [suf] suffix [mid], for a template
    with one hole, and whether the hole takes over the space before it (``Template.healed``:
    the twin gets the same text as the diffusion model)."""
    holes = [i for i, p in enumerate(template.parts) if isinstance(p, Hole)]
    if len(holes) != 1:
        raise UsageError("the AR fill-in-the-middle twin fills one hole per template")
    k = holes[0]
    healed = template.healed(tokenizer)
    prefix, suffix = "".join(template.parts[:k]), "".join(template.parts[k + 1 :])
    prefix = prefix[:-1] if healed[0] else prefix
    ids = [tokenizer.eot_id, *tokenizer.encode_exact(prefix, "the template").tolist(), tokenizer.pad_id,
           *tokenizer.encode_exact(suffix, "the template").tolist(),
           tokenizer.mask_id]
    return ids, healed


def _fim_plan(run, template: Template, *, num: int, sampler, seed: int):
    """The AR twin trained with fill-in-the-middle: [eot] prefix [suf] suffix [mid], then the hole."""
    tok = run.tokenizer
    ids, healed = fim_prompt(template, tok)
    n = template.holes[0].low
    canvas = resolve_canvas(run.model, torch.tensor(ids), num, n, None)  # checked before it is made
    plan = Plan(sampler, run.model, run.process, canvas, None, _generator(run, seed))

    def finish(out: Generation):
        done = [template.assemble([tok.decode(row[len(ids) :])], healed) for row in out.tokens.tolist()]
        return [d[0] for d in done], [d[1] for d in done]

    return plan, finish


def _fixed_plan(run, template: Template, *, num: int, steps: int, sampler, seed: int, label=None, guidance=0.0,
                classifier=None):
    """The plan that fills a template whose holes have fixed sizes, and its finish (the texts and
    the fills of a generation)."""
    continuation = isinstance(template.parts[-1], Hole) and len(template.holes) == 1
    if run.process.left_to_right and not continuation:  # (a continuation decodes left to right below)
        if not run.cfg.data.fim_rate:
            raise UsageError("the AR twin reads only the text to the left, so it can continue a prompt but not "
                             "infill; train it with fill-in-the-middle (--set data.fim_rate=0.5) or use a masked "
                             "diffusion model")
        return _fim_plan(run, template, num=num, sampler=sampler, seed=seed)
    canvas, spans = template.canvas(run.tokenizer, num)
    model = guided_model(run, label, guidance, classifier=classifier)
    plan = Plan(sampler, model, run.process, resolve_canvas(run.model, None, num, None, canvas), steps,
                _generator(run, seed))
    tok = run.tokenizer
    healed = template.healed(tok)

    def finish(out: Generation):
        done = [template.assemble([tok.decode(row[a:b]) for a, b in spans], healed) for row in out.tokens.tolist()]
        return [d[0] for d in done], [d[1] for d in done]

    return plan, finish


def _check_fits(run, template: Template) -> None:
    """Every size a hole may take fits the model context with the text around it (checked before
    a canvas of that size is made)."""
    context = run.cfg.model.context
    text = sum(len(run.tokenizer.encode_exact(p, "the template")) for p in template.parts if isinstance(p, str))
    most = text + sum(h.high for h in template.holes)
    if most > context:
        asked = "asks for up to" if any(h.variable for h in template.holes) else "needs"
        raise UsageError(f"the template {asked} {most:,} tokens ({text} of text, the rest holes), which exceeds the "
                         f"model context ({context} tokens): make the holes smaller")


def _candidate_sizes(holes: list[Hole], candidates: int) -> list[list[int]]:
    """Sizes to try: ``candidates`` evenly spaced lengths of every variable hole, all together."""
    grids = []
    for h in holes:
        n = min(candidates, h.high - h.low + 1)
        grids.append([round(h.low + (h.high - h.low) * i / max(n - 1, 1)) for i in range(n)])
    width = max(len(g) for g in grids)
    return [[g[min(i, len(g) - 1)] for g in grids] for i in range(width)]


def infill(run, template: str | Template, *, num: int = 1, steps: int = 64, sampler: str | None = None,
           seed: int = 0, candidates: int = 4, label: str | None = None, guidance: float = 0.0, classifier=None,
           trace: bool = False, on_step=None, **options) -> ControlResult:
    """Fill the holes of ``template`` (see the module doc) ``num`` times; fixed text is kept verbatim.
    ``label`` / ``guidance`` / ``classifier``: conditioning and guidance (control/guidance.py).
    ``on_step``: the per-step hook (variable holes: every candidate length's steps, in turn)."""
    return infill_task(run, template, num=num, steps=steps, sampler=sampler, seed=seed, candidates=candidates,
                       label=label, guidance=guidance, classifier=classifier, **options).run(on_step, trace)


def infill_task(run, template: str | Template, *, num: int = 1, steps: int = 64, sampler: str | None = None,
                seed: int = 0, candidates: int = 4, label: str | None = None, guidance: float = 0.0,
                classifier=None, **options) -> Task:
    """``infill`` prepared: one plan per candidate size (one plan for fixed holes), and the finish
    that keeps each sample's most likely fill."""
    tpl = template if isinstance(template, Template) else Template.parse(template)
    _check_fits(run, tpl)
    smp = _sampler(run, sampler, options)
    cond = {"label": label, "guidance": guidance, "classifier": classifier}
    if not any(h.variable for h in tpl.holes):
        plan, fill = _fixed_plan(run, tpl, num=num, steps=steps, sampler=smp, seed=seed, **cond)

        def finish_fixed(outs: list[Generation]) -> ControlResult:
            texts, fills = fill(outs[0])
            return ControlResult(texts, fills, outs[0], smp.name, outs[0].nfe, outs[0].seconds)

        return Task([plan], finish_fixed)
    # variable holes: fill at each candidate size, keep each sample's most likely text
    sizes = _candidate_sizes(tpl.holes, candidates)
    made = [_fixed_plan(run, tpl.sized(s), num=num, steps=steps, sampler=smp, seed=seed, **cond) for s in sizes]

    def finish_best(outs: list[Generation]) -> ControlResult:
        best: list[tuple[float, str, list[str]]] = [(float("inf"), "", [])] * num
        tried = []
        for s, (_, fill), out in zip(sizes, made, outs):
            texts, fills = fill(out)
            bits = sequence_bits(run, texts, seed, exact=False)  # the model's own fills
            tried.append({"sizes": s, "bits": bits})
            best = [min(b, (x, t, f)) for b, x, t, f in zip(best, bits, texts, fills)]
        return ControlResult([b[1] for b in best], [b[2] for b in best], outs[-1], smp.name,
                             sum(o.nfe for o in outs), sum(o.seconds for o in outs), {"candidates": tried})

    return Task([p for p, _ in made], finish_best)
