"""Infilling and editing: fill holes anywhere in a text, or rewrite a span and keep the rest.

Templates: fixed text with holes.

    [MASK]        one token
    [MASK:n]      exactly n tokens
    [MASK:a-b]    a variable-length hole of a to b tokens: the hole is filled at a few lengths
                  in [a, b] (``candidates`` of them, evenly spaced), every filled text is scored by
                  the model's own likelihood (the ELBO of diffusion models: a bound, estimated with
                  the same Monte Carlo draws for every candidate) and the most likely one is kept.
                  No padding token is involved, so it works with any trained model.

The fixed text is tokenized piece by piece (so holes sit on token boundaries) and returned
verbatim: the output string is built from the template's own text plus the decoded holes.

Editing (SDEdit for text): the span's tokens are re-noised to time ``strength`` (masked: each is
masked with probability 1 - alpha(strength); uniform: redrawn; Gaussian: its embeddings noised)
and denoised from there with the text around the span fixed; strength 1 regenerates the span
from the prior. The span keeps its token count. Text outside the span is returned verbatim.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from ..sampling import build_sampler
from ..sampling.base import HOLE, Canvas, Generation
from .guidance import guided_model

HOLE_PATTERN = re.compile(r"\[MASK(?::(\d+)(?:-(\d+))?)?\]")
EDIT_OPEN, EDIT_CLOSE = "[EDIT]", "[/EDIT]"


@dataclass(frozen=True)
class Hole:
    low: int  # fewest tokens
    high: int  # most tokens (== low: a fixed-length hole)

    @property
    def variable(self) -> bool:
        return self.high != self.low


@dataclass
class Template:
    """Fixed text and holes, in order (``parts``: str for text, Hole for a hole)."""

    parts: list[str | Hole]

    @classmethod
    def parse(cls, text: str) -> Template:
        parts: list[str | Hole] = []
        pos = 0
        for m in HOLE_PATTERN.finditer(text):
            if m.start() > pos:
                parts.append(text[pos : m.start()])
            low = int(m.group(1)) if m.group(1) else 1
            high = int(m.group(2)) if m.group(2) else low
            if low < 1 or high < low:
                raise ValueError(f"bad hole {m.group(0)}: sizes are 1 or more, low-high with low <= high")
            parts.append(Hole(low, high))
            pos = m.end()
        if pos < len(text):
            parts.append(text[pos:])
        if not any(isinstance(p, Hole) for p in parts):
            raise ValueError("the template has no hole: mark what to fill with [MASK], [MASK:n] or [MASK:a-b]")
        return cls(parts)

    @property
    def holes(self) -> list[Hole]:
        return [p for p in self.parts if isinstance(p, Hole)]

    def sized(self, sizes: list[int]) -> Template:
        """The same template with every hole at a fixed size."""
        it = iter(sizes)
        parts: list[str | Hole] = []
        for p in self.parts:
            if isinstance(p, Hole):
                n = next(it)
                parts.append(Hole(n, n))
            else:
                parts.append(p)
        return Template(parts)

    def healed(self, tokenizer) -> list[bool]:
        """Per hole: does it take over the one space that ends the text before it? BPE words carry
        their leading space (" return"), so text ending in a space would put a lone-space token
        before the hole that training never showed; the space is left to the fill instead (and
        kept in the output all the same: see ``assemble``)."""
        out, before = [], ""
        for p in self.parts:
            if isinstance(p, Hole):
                out.append(tokenizer.kind == "bpe" and before.endswith(" "))
                before = ""
            else:
                before = p
        return out

    def canvas(self, tokenizer, batch: int = 1) -> tuple[Canvas, list[tuple[int, int]]]:
        """The (batch, T) canvas (holes free, text fixed) and each hole's [start, end) positions."""
        if any(h.variable for h in self.holes):
            raise ValueError("size the variable holes first (Template.sized)")
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        hole_at = [i for i, p in enumerate(self.parts) if isinstance(p, Hole)]
        trim = {i - 1 for i, healed in zip(hole_at, self.healed(tokenizer)) if healed}  # text parts ending in " "
        for i, p in enumerate(self.parts):
            if isinstance(p, Hole):
                spans.append((len(ids), len(ids) + p.low))
                ids += [HOLE] * p.low
            else:
                text = p[:-1] if i in trim else p
                ids += tokenizer.encode(text).tolist() if text else []
        tokens = torch.tensor(ids, dtype=torch.long).expand(batch, -1).clone()
        return Canvas(tokens, tokens != HOLE), spans

    def assemble(self, fills: list[str], healed: list[bool]) -> tuple[str, list[str]]:
        """The filled text (fixed parts verbatim) and the fills as they stand in it: a healed
        hole's fill loses the leading space the text before it already has."""
        fills = [f[1:] if h and f.startswith(" ") else f for f, h in zip(fills, healed)]
        it = iter(fills)
        return "".join(next(it) if isinstance(p, Hole) else p for p in self.parts), fills


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


def _sampler(run, sampler: str | None, options: dict):
    return build_sampler(sampler, run.objective, run.tokenizer, **options)


def _generator(run, seed: int) -> torch.Generator:
    return torch.Generator(device=next(run.model.parameters()).device).manual_seed(seed)


def fim_prompt(template: Template, tokenizer) -> tuple[list[int], list[bool]]:
    """The AR fill-in-the-middle twin's prompt, [eot] prefix [suf] suffix [mid], for a template
    with one hole, and whether the hole takes over the space before it (``Template.healed``:
    the twin gets the same text as the diffusion model)."""
    holes = [i for i, p in enumerate(template.parts) if isinstance(p, Hole)]
    if len(holes) != 1:
        raise ValueError("the AR fill-in-the-middle twin fills one hole per template")
    k = holes[0]
    healed = template.healed(tokenizer)
    prefix, suffix = "".join(template.parts[:k]), "".join(template.parts[k + 1 :])
    prefix = prefix[:-1] if healed[0] else prefix
    ids = [tokenizer.eot_id, *tokenizer.encode(prefix).tolist(), tokenizer.pad_id, *tokenizer.encode(suffix).tolist(),
           tokenizer.mask_id]
    return ids, healed


def _fill_fim(run, template: Template, *, num: int, sampler, seed: int):
    """The AR twin trained with fill-in-the-middle: [eot] prefix [suf] suffix [mid], then the hole."""
    tok = run.tokenizer
    ids, healed = fim_prompt(template, tok)
    n = template.holes[0].low
    out = sampler.generate(run.model, run.objective, length=n, batch_size=num, prompt=torch.tensor(ids),
                           gen=_generator(run, seed))
    done = [template.assemble([tok.decode(row[len(ids) :])], healed) for row in out.tokens.tolist()]
    return [d[0] for d in done], [d[1] for d in done], out


def _fill_fixed(run, template: Template, *, num: int, steps: int, sampler, seed: int, label=None, guidance=0.0,
                classifier=None, trace: bool = False):
    continuation = isinstance(template.parts[-1], Hole) and len(template.holes) == 1
    if run.objective.name == "ar" and not continuation:  # (a continuation decodes left to right below)
        if not run.cfg.data.fim_rate:
            raise ValueError("the AR twin reads only the text to the left, so it can continue a prompt but not "
                             "infill; train it with fill-in-the-middle (--set data.fim_rate=0.5) or use a masked "
                             "diffusion model")
        return _fill_fim(run, template, num=num, sampler=sampler, seed=seed)
    canvas, spans = template.canvas(run.tokenizer, num)
    model = guided_model(run, label, guidance, classifier=classifier)
    out = sampler.generate(model, run.objective, steps=steps, canvas=canvas, gen=_generator(run, seed), trace=trace)
    tok = run.tokenizer
    healed = template.healed(tok)
    done = [template.assemble([tok.decode(row[a:b]) for a, b in spans], healed) for row in out.tokens.tolist()]
    return [d[0] for d in done], [d[1] for d in done], out


def _candidate_sizes(holes: list[Hole], candidates: int) -> list[list[int]]:
    """Sizes to try: ``candidates`` evenly spaced lengths of every variable hole, all together."""
    grids = []
    for h in holes:
        n = min(candidates, h.high - h.low + 1)
        grids.append([round(h.low + (h.high - h.low) * i / max(n - 1, 1)) for i in range(n)])
    width = max(len(g) for g in grids)
    return [[g[min(i, len(g) - 1)] for g in grids] for i in range(width)]


def sequence_bits(run, texts: list[str], seed: int = 0, mc_samples: int = 16) -> list[float]:
    """Total bits of each text under the run's model: exact for AR, the ELBO bound for diffusion
    (the same Monte Carlo draws of t for every text, so comparisons are paired)."""
    from ..evaluation.likelihood import sequence_nll

    tok, context = run.tokenizer, run.cfg.model.context
    bits = []
    for text in texts:
        ids = torch.from_numpy(tok.encode(text))
        if len(ids) == 0:
            raise ValueError("nothing to score: the text is empty")
        if len(ids) > context:
            raise ValueError(f"the text has {len(ids)} tokens, more than the model context ({context})")
        bits.append(sequence_nll(run.model, run.objective, ids, tok.eot_id, mc_samples, seed) / math.log(2))
    return bits


def infill(run, template: str | Template, *, num: int = 1, steps: int = 64, sampler: str | None = None,
           seed: int = 0, candidates: int = 4, label: str | None = None, guidance: float = 0.0, classifier=None,
           trace: bool = False, **options) -> ControlResult:
    """Fill the holes of ``template`` (see the module doc) ``num`` times; fixed text is kept verbatim.
    ``label`` / ``guidance`` / ``classifier``: conditioning and guidance (control/guidance.py)."""
    tpl = template if isinstance(template, Template) else Template.parse(template)
    smp = _sampler(run, sampler, options)
    cond = {"label": label, "guidance": guidance, "classifier": classifier, "trace": trace}
    if not any(h.variable for h in tpl.holes):
        texts, fills, out = _fill_fixed(run, tpl, num=num, steps=steps, sampler=smp, seed=seed, **cond)
        return ControlResult(texts, fills, out, smp.name, out.nfe, out.seconds)
    # variable holes: fill at each candidate size, keep each sample's most likely text
    best: list[tuple[float, str, list[str]]] = [(float("inf"), "", [])] * num
    nfe, seconds, out, tried = 0, 0.0, None, []
    for sizes in _candidate_sizes(tpl.holes, candidates):
        texts, fills, out = _fill_fixed(run, tpl.sized(sizes), num=num, steps=steps, sampler=smp, seed=seed, **cond)
        nfe, seconds = nfe + out.nfe, seconds + out.seconds
        bits = sequence_bits(run, texts, seed)
        tried.append({"sizes": sizes, "bits": bits})
        best = [min(b, (x, t, f)) for b, x, t, f in zip(best, bits, texts, fills)]
    return ControlResult([b[1] for b in best], [b[2] for b in best], out, smp.name, nfe, seconds,
                         {"candidates": tried})


def split_marked(text: str) -> tuple[str, int, int]:
    """Text with one [EDIT]...[/EDIT] span -> (plain text, start, end) in characters."""
    if text.count(EDIT_OPEN) != 1 or text.count(EDIT_CLOSE) != 1:
        raise ValueError(f"mark exactly one span as {EDIT_OPEN}...{EDIT_CLOSE} (or give --span A:B)")
    a = text.index(EDIT_OPEN)
    b = text.index(EDIT_CLOSE)
    if b < a:
        raise ValueError(f"{EDIT_CLOSE} comes before {EDIT_OPEN}")
    plain = text[:a] + text[a + len(EDIT_OPEN) : b] + text[b + len(EDIT_CLOSE) :]
    return plain, a, b - len(EDIT_OPEN)


def edit(run, text: str, start: int | None = None, end: int | None = None, *, strength: float = 0.5,
         num: int = 1, steps: int = 64, sampler: str | None = None, seed: int = 0, label: str | None = None,
         guidance: float = 0.0, classifier=None, trace: bool = False, **options) -> ControlResult:
    """Re-noise ``text[start:end]`` to time ``strength`` and denoise it with the rest fixed.
    Without offsets, the span is the one marked [EDIT]...[/EDIT] in ``text``."""
    if start is None and end is None:
        text, start, end = split_marked(text)
    if start is None or end is None or not 0 <= start < end <= len(text):
        raise ValueError(f"the span must satisfy 0 <= start < end <= {len(text)} (the text's length); got {start}:{end}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1]; got {strength}")
    tok = run.tokenizer
    before, span, after = text[:start], text[start:end], text[end:]
    ids = [tok.encode(before).tolist(), tok.encode(span).tolist(), tok.encode(after).tolist()]
    if not ids[1]:
        raise ValueError("the span holds no token")
    tokens = torch.tensor(ids[0] + ids[1] + ids[2], dtype=torch.long).expand(num, -1).clone()
    fixed = torch.ones_like(tokens, dtype=torch.bool)
    lo, hi = len(ids[0]), len(ids[0]) + len(ids[1])
    fixed[:, lo:hi] = False
    smp = _sampler(run, sampler, options)
    out = smp.generate(guided_model(run, label, guidance, classifier=classifier), run.objective, steps=steps, canvas=Canvas(tokens, fixed, strength),
                       gen=_generator(run, seed), trace=trace)
    spans = [tok.decode(row[lo:hi]) for row in out.tokens.tolist()]
    return ControlResult([before + s + after for s in spans], [[s] for s in spans], out, smp.name, out.nfe,
                         out.seconds, {"span": [start, end], "strength": strength})
