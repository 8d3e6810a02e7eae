"""What every picture of a generation reads: a trace-format-v1 object (sampling/trace.py) turned
into, for its first row, each position's text piece and state at every step, the step at which
each token was decided (its last change: a token that changes again later was not yet decided),
its confidence then, and per step the fraction decided and the mean confidence of the step's
decisions. The HTML player, the GIF, the PNG strip and the plot all draw from a ``Story``.

States of a position at a step: ``fixed`` (prompt or template text), ``masked`` (the mask token,
or not yet reached by the AR twin), ``noisy`` (a token that will still change: uniform and
Gaussian processes, ReMDM), ``new`` (decided in this step: its last change), ``decided`` (decided
in an earlier step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError
from ..sampling.trace import FORMAT
from ..tokenizers import MASK_GLYPH


@dataclass
class Story:
    process: str
    sampler: str
    length: int  # positions (the last frame's)
    steps: int  # frames
    nfe: list[int]  # network calls after each step
    blocks: list[int | None]  # the block decoded in each step
    pieces: dict[int, str]  # token id -> its text
    tokens: list[list[int]]  # per step, the row's tokens (padded to ``length`` with -1)
    shown: list[list[int]]  # per step, what to show (the Gaussian process: the noisy vectors' nearest tokens)
    states: list[list[str]]  # per step, each position's state
    fixed: list[bool]
    decided_at: list[int | None]  # per position, the step its token was decided (None: fixed)
    confidence: list[float | None]  # per position, the confidence of its decision
    fraction: list[float]  # per step, the fraction of free positions decided
    mean_confidence: list[float | None]  # per step, over the tokens decided in it
    block_starts: list[int] = field(default_factory=list)  # first position of every block after the first
    title: str = ""
    text: str = ""

    def piece(self, token: int) -> str:
        return MASK_GLYPH if token < 0 else self.pieces.get(token, "?")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {
            "pieces": {str(k): v for k, v in self.pieces.items()}}


def check_trace(trace: object) -> dict:
    if not isinstance(trace, dict) or trace.get("format") != FORMAT:
        found = trace.get("format") if isinstance(trace, dict) else type(trace).__name__
        raise UsageError(f"not a textdiffusion trace (format {FORMAT}; found {found!r}): write one with "
                         f"generate --trace-out FILE")
    if not trace.get("frames"):
        raise UsageError("the trace has no frames (a generation that took no step)")
    return trace


def story(trace: dict, tokenizer, row: int = 0, title: str = "") -> Story:
    """The first (or ``row``-th) row of ``trace`` as a Story, its pieces decoded with ``tokenizer``."""
    check_trace(trace)
    frames = trace["frames"]
    mask_id = trace.get("mask_id")
    rows = [f["rows"][row] for f in frames]
    length = max(len(r["tokens"]) for r in rows)

    def padded(ids: list[int]) -> list[int]:
        return [(-1 if t == mask_id else t) for t in ids] + [-1] * (length - len(ids))

    tokens = [padded(r["tokens"]) for r in rows]
    shown = [padded(r.get("nearest") or r["tokens"]) for r in rows]
    last_change: list[int | None] = [None] * length
    confidence: list[float | None] = [None] * length
    per_step_conf: list[float | None] = []
    for i, r in enumerate(rows):
        for p in r["changed"]:
            if p < length:
                last_change[p] = i
        confs = []
        for d in r["decided"]:
            confidence[d["position"]] = d["confidence"]
            if d["confidence"] is not None:
                confs.append(d["confidence"])
        per_step_conf.append(sum(confs) / len(confs) if confs else None)
    first = tokens[0]
    if trace.get("fixed") is not None:  # recorded (Pipeline traces)
        kept = set(trace["fixed"])
        fixed = [p in kept for p in range(length)]
    else:  # the prompt; and, for absorbing processes, what was never masked nor changed
        fixed = [p < trace.get("prompt_length", 0) or (mask_id is not None and last_change[p] is None and first[p] >= 0)
                 for p in range(length)]
    for p in range(length):
        if not fixed[p] and last_change[p] is None and first[p] >= 0:  # a prior draw that was already right
            last_change[p] = 0
    free = max(1, sum(not f for f in fixed))
    changed_now = [set(r["changed"]) for r in rows]
    states, fraction = [], []
    for i in range(len(rows)):
        st = []
        for p in range(length):
            if fixed[p]:
                st.append("fixed")
            elif tokens[i][p] < 0:
                st.append("masked")
            elif last_change[p] is not None and last_change[p] > i:
                st.append("noisy")  # it will change again: not a decision yet
            elif p in changed_now[i]:
                st.append("new")
            else:
                st.append("decided")
        states.append(st)
        fraction.append(sum(1 for p in range(length) if not fixed[p] and last_change[p] is not None
                            and last_change[p] <= i) / free)
    ids = {t for seq in (*tokens, *shown) for t in seq if t >= 0}
    pieces = {t: tokenizer.decode([t]) for t in sorted(ids)}
    blocks = [f.get("block") for f in frames]
    starts = set()
    for b in {x for x in blocks if x is not None}:
        positions = [p for p in range(length) if last_change[p] is not None and blocks[last_change[p]] == b]
        if positions:
            starts.add(min(positions))
    starts = sorted(starts)[1:]  # a boundary before every block but the first
    texts = trace.get("texts") or [""]
    return Story(trace.get("process", "?"), trace.get("sampler", "?"), length, len(rows), [f.get("nfe") or 0 for f in frames],
                 blocks, pieces, tokens, shown, states, fixed, last_change, confidence, fraction, per_step_conf,
                 starts, title, texts[min(row, len(texts) - 1)])
