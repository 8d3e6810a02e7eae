"""Templates: fixed text with holes, and spans marked for editing (no torch here: the command
line parses a prompt before it loads a model).

    [MASK]        one token
    [MASK:n]      exactly n tokens
    [MASK:a-b]    a variable-length hole of a to b tokens (filled at a few lengths, the most
                  likely text kept: see infill.py)
    [EDIT]...[/EDIT]  the span an edit rewrites

Anything else that looks like a hole (``[MASK:x]``, ``[mask:3]``, ``[MASK:`` left open) is an
error naming it, never silently kept as text; ``[mask]`` in lower case without a size stays text
(``values[mask]`` in code).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError

HOLE_PATTERN = re.compile(r"\[MASK(?::(\d+)(?:-(\d+))?)?\]")
EDIT_OPEN, EDIT_CLOSE = "[EDIT]", "[/EDIT]"

# what a hole was meant to be: "[MASK" in any case followed by ":" or "]" (or left open)
_HOLE_LIKE = re.compile(r"\[mask(?=[:\]]|$|\s)[^\]\n]*\]?", re.IGNORECASE)


def check_holes(text: str) -> None:
    """A UsageError naming the first malformed hole in ``text``."""
    for m in _HOLE_LIKE.finditer(text):
        found = m.group(0)
        if HOLE_PATTERN.fullmatch(found):
            continue
        if found == "[mask]":
            continue  # lower-case [mask] without a size: text, e.g. values[mask] in code ([Mask] is a typo)
        raise UsageError(f"malformed hole {found!r}: write [MASK] (one token), [MASK:n] (n tokens) or "
                         f"[MASK:a-b] (a to b tokens), in capitals")


def has_holes(text: str) -> bool:
    """Does ``text`` hold a hole? (A malformed one is an error.)"""
    check_holes(text)
    return HOLE_PATTERN.search(text) is not None



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
        check_holes(text)
        parts: list[str | Hole] = []
        pos = 0
        for m in HOLE_PATTERN.finditer(text):
            if m.start() > pos:
                parts.append(text[pos : m.start()])
            low = int(m.group(1)) if m.group(1) else 1
            high = int(m.group(2)) if m.group(2) else low
            if low < 1 or high < low:
                raise UsageError(f"bad hole {m.group(0)}: sizes are 1 or more, low-high with low <= high")
            parts.append(Hole(low, high))
            pos = m.end()
        if pos < len(text):
            parts.append(text[pos:])
        if not any(isinstance(p, Hole) for p in parts):
            raise UsageError("the template has no hole: mark what to fill with [MASK], [MASK:n] or [MASK:a-b]")
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

    def canvas(self, tokenizer, batch: int = 1) -> tuple:
        """The (batch, T) canvas (holes free, text fixed) and each hole's [start, end) positions."""
        import torch

        from ..sampling.base import HOLE, Canvas

        if any(h.variable for h in self.holes):
            raise UsageError("size the variable holes first (Template.sized)")
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
                ids += tokenizer.encode_exact(text, "the template").tolist() if text else []
        tokens = torch.tensor(ids, dtype=torch.long).expand(batch, -1).clone()
        return Canvas(tokens, tokens != HOLE), spans

    def assemble(self, fills: list[str], healed: list[bool]) -> tuple[str, list[str]]:
        """The filled text (fixed parts verbatim) and the fills as they stand in it: a healed
        hole's fill loses the leading space the text before it already has."""
        fills = [f[1:] if h and f.startswith(" ") else f for f, h in zip(fills, healed)]
        it = iter(fills)
        return "".join(next(it) if isinstance(p, Hole) else p for p in self.parts), fills


def split_marked(text: str) -> tuple[str, int, int]:
    """Text with one [EDIT]...[/EDIT] span -> (plain text, start, end) in characters."""
    if text.count(EDIT_OPEN) != 1 or text.count(EDIT_CLOSE) != 1:
        raise UsageError(f"mark exactly one span as {EDIT_OPEN}...{EDIT_CLOSE} (or give --span A:B)")
    a = text.index(EDIT_OPEN)
    b = text.index(EDIT_CLOSE)
    if b < a:
        raise UsageError(f"{EDIT_CLOSE} comes before {EDIT_OPEN}")
    plain = text[:a] + text[a + len(EDIT_OPEN) : b] + text[b + len(EDIT_CLOSE) :]
    return plain, a, b - len(EDIT_OPEN)
