"""Trace format v1: what a generation did at every step, per row (see docs/trace-format.md).

A ``TraceRecorder`` is a per-step hook (``on_step``) for any sampler. Every step it keeps, for
each row: the tokens, which positions changed, which are still masked, and for every token
decided in the step its confidence (the probability the step's distribution gave it) and that
distribution's entropy (nats); with the step index, the block being decoded and the network calls
so far. ``to_dict()`` is the versioned JSON object ``generate --trace-out`` writes; ``SCHEMA`` is
its JSON Schema.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .base import StepOutput

FORMAT = "textdiffusion.trace/1"

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "textdiffusion trace, version 1",
    "type": "object",
    "required": ["format", "sampler", "process", "mask_id", "rows", "length", "prompt_length", "frames", "texts"],
    "properties": {
        "format": {"const": FORMAT},
        "model": {"type": "string"},
        "sampler": {"type": "string"},
        "process": {"type": "string"},
        "steps": {"type": ["integer", "null"], "minimum": 1},
        "seed": {"type": ["integer", "null"]},
        "mask_id": {"type": ["integer", "null"]},
        "rows": {"type": "integer", "minimum": 1},
        "length": {"type": "integer", "minimum": 1},
        "prompt_length": {"type": "integer", "minimum": 0},
        "fixed": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "texts": {"type": "array", "items": {"type": "string"}},
        "frames": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["step", "nfe", "block", "rows"],
                "properties": {
                    "step": {"type": "integer", "minimum": 0},
                    "nfe": {"type": ["integer", "null"], "minimum": 0},
                    "block": {"type": ["integer", "null"], "minimum": 0},
                    "rows": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["tokens", "changed", "masked", "decided"],
                            "properties": {
                                "tokens": {"type": "array", "items": {"type": "integer"}},
                                "nearest": {"type": "array", "items": {"type": "integer"}},
                                "changed": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                                "masked": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                                "decided": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["position", "token", "confidence", "entropy"],
                                        "properties": {
                                            "position": {"type": "integer", "minimum": 0},
                                            "token": {"type": "integer"},
                                            "confidence": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                                            "entropy": {"type": ["number", "null"], "minimum": 0},
                                        },
                                        "additionalProperties": False,
                                    },
                                },
                            },
                            "additionalProperties": False,
                        },
                    },
                },
                "additionalProperties": False,
            },
        },
    },
}


def _round(x: float) -> float | None:
    return None if not math.isfinite(x) else round(x, 6)


class Trace(list):
    """What ``Result.trace`` holds: the first row's text after every step (masked positions as
    ``tokenizers.MASK_GLYPH``), and the whole trace-format-v1 object in ``data``."""

    def __init__(self, texts: list[str], data: dict):
        super().__init__(texts)
        self.data = data

    def save(self, path: str | Path) -> Path:
        return _write(path, self.data)


class TraceRecorder:
    """An ``on_step`` hook recording trace format v1 (``rows``: how many rows to keep, from the
    first; None = all). Chain another step hook with ``then``; ``on_frame(frame)`` sees every
    frame as it is recorded (the terminal ``--watch`` draws from them)."""

    def __init__(self, mask_id: int | None = None, rows: int | None = None, then=None, on_frame=None):
        self.mask_id, self.max_rows, self.then, self.on_frame = mask_id, rows, then, on_frame
        self.frames: list[dict] = []

    def __call__(self, i: int, out: StepOutput) -> None:
        n = out.x_prev.shape[0] if self.max_rows is None else min(self.max_rows, out.x_prev.shape[0])
        self.frames.append(frame(out, i, self.mask_id, range(n)))
        if self.on_frame is not None:
            self.on_frame(self.frames[-1])
        if self.then is not None:
            self.then(i, out)

    def to_dict(self, *, texts: list[str], sampler: str, process: str, prompt_length: int, model: str | None = None,
                steps: int | None = None, seed: int | None = None, fixed: list[int] | None = None) -> dict:
        last = self.frames[-1]["rows"] if self.frames else []
        length = len(last[0]["tokens"]) if last else max(prompt_length, 1)
        out = {"format": FORMAT, "sampler": sampler, "process": process, "steps": steps, "seed": seed,
               "mask_id": self.mask_id, "rows": max(len(last), 1), "length": length,
               "prompt_length": prompt_length, "texts": texts, "frames": self.frames}
        if model is not None:
            out["model"] = model
        if fixed is not None:  # the first row's positions kept verbatim (prompt, template text, an edit's surroundings)
            out["fixed"] = fixed
        return out

    def save(self, path: str | Path, **meta) -> Path:
        return _write(path, self.to_dict(**meta))


def frame(out: StepOutput, step: int, mask_id: int | None, rows, lengths=None, nfe: int | None = None) -> dict:
    """One trace-v1 frame of the step ``out`` for the batch rows ``rows`` (indices; a server's
    request owns some rows of a batch), each cut to its ``lengths`` (default: the batch width);
    ``nfe``: the network calls to report (default the step's own count)."""
    rows = list(rows)
    x = out.x_prev
    stats = _decided_stats(out, rows)
    made = []
    for k, b in enumerate(rows):
        n = x.shape[1] if lengths is None else lengths[k]
        tokens = x[b, :n].tolist()
        changed = out.changed[b, :n].nonzero().flatten().tolist()
        masked = (x[b, :n] == mask_id).nonzero().flatten().tolist() if mask_id is not None else []
        decided = []
        for p in changed:
            if tokens[p] == mask_id:  # re-masked (ReMDM): not a decision
                continue
            conf, ent = stats.get((b, p), (float("nan"), float("nan")))
            decided.append({"position": p, "token": tokens[p], "confidence": _round(conf), "entropy": _round(ent)})
        made.append({"tokens": tokens, "changed": changed, "masked": masked, "decided": decided})
        if out.nearest is not None:  # the Gaussian process: each noisy vector's nearest token
            made[-1]["nearest"] = out.nearest[b, :n].tolist()
    return {"step": step, "nfe": out.nfe if nfe is None else nfe, "block": out.block, "rows": made}


def _write(path: str | Path, data: dict) -> Path:
    path = Path(path)
    path.write_text(json.dumps(data) + "\n", encoding="utf-8")
    return path


def _decided_stats(out: StepOutput, rows: list[int]) -> dict[tuple[int, int], tuple[float, float]]:
    """(row, position) -> (confidence, entropy) of the tokens decided in this step in the batch
    rows ``rows``, from the step's distribution ``out.log_probs`` (positions offset .. offset + W)."""
    if out.log_probs is None or not rows:
        return {}
    index = torch.tensor(rows, device=out.log_probs.device)
    lp = out.log_probs[index].double()
    W = lp.shape[1]
    changed = out.changed[index, out.offset : out.offset + W]
    if not changed.any():
        return {}
    tokens = out.x_prev[index, out.offset : out.offset + W].clamp(0, lp.shape[-1] - 1)
    conf = lp.gather(-1, tokens[..., None]).squeeze(-1).exp()
    p = lp.exp()
    ent = -(torch.where(p > 0, p * lp, torch.zeros_like(p))).sum(-1)
    result = {}
    for k, w in changed.nonzero().tolist():
        result[(rows[k], out.offset + w)] = (float(conf[k, w]), float(ent[k, w]))
    return result
