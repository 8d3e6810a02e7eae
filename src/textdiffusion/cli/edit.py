"""textdiffusion edit: rewrite a span of a text, keeping the rest."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from .common import (
    POSITIVE,
    add_sampling_args,
    classifier_of,
    load,
    print_control,
    read_text,
    sampler_options,
    with_card,
)

NAME = "edit"
PARSER = dict(help="rewrite a span of a text, keeping the rest",
              description="Re-noise a span to --strength (0 < s <= 1; 1 regenerates it) and denoise it "
                          "with the text around it fixed. Give the span as --span A:B (character "
                          "offsets) or mark it in the text as [EDIT]...[/EDIT]. The span keeps its "
                          "length in tokens; text outside it is returned verbatim.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory or shipped model name (textdiffusion models)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to edit")
    src.add_argument("--file", help="read the text from this file")
    p.add_argument("--span", help="A:B, the characters text[A:B] to rewrite (default: the [EDIT] marks)")
    p.add_argument("--strength", type=float, default=0.5, help="noise level of the span, in (0, 1] (default 0.5)")
    p.add_argument("--num", type=POSITIVE, default=1, help="edits to draw, as one batch (default 1)")
    add_sampling_args(p, card=True)
    p.add_argument("--json", action="store_true", help="print one JSON object (texts, spans, nfe, ...)")
    p.set_defaults(steps=None, temperature=None, top_k=None, top_p=None)  # unset: the model card's


def _parse_span(span: str) -> tuple[int, int]:
    try:
        a, b = span.split(":")
        return int(a), int(b)
    except ValueError:
        raise UsageError(f"--span takes A:B character offsets, e.g. 10:25; got {span!r}") from None


def main(args) -> int:
    from ..control import edit

    text = read_text(args.text, args.file, "text")
    start, end = _parse_span(args.span) if args.span else (None, None)
    run = load(str(with_card(args, args.run)), args.device, args.threads)
    result = edit(run, text, start, end, strength=args.strength, num=args.num, steps=args.steps,
                  sampler=args.sampler, seed=args.seed, label=args.label, guidance=args.guidance,
                  classifier=classifier_of(args), **sampler_options(args))  # holes and spans have a fixed size
    print_control(result, args, {})
    return 0
