"""textdiffusion infill: fill [MASK] holes anywhere in a text."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from .common import (
    POSITIVE,
    add_checkpoint_arg,
    add_sampling_args,
    checkpoint_folder,
    classifier_of,
    load,
    print_control,
    read_text,
    sampler_options,
    unescape,
    with_card,
)

NAME = "infill"
PARSER = dict(help="fill [MASK] holes anywhere in a text",
              description="Fill the holes of a template; its fixed text is kept verbatim. Holes: "
                          "[MASK] (one token), [MASK:n] (n tokens), [MASK:a-b] (a to b tokens: filled "
                          "at a few lengths, the most likely text under the model is kept). In the "
                          "TEMPLATE argument \\n and \\t are newline and tab (use --raw to keep them).",
              formatter_class=argparse.RawDescriptionHelpFormatter,
              epilog='example:\n  textdiffusion infill runs/code "def add(a, b):\\n    [MASK:12]\\n"')


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory or shipped model name (textdiffusion models)")
    p.add_argument("template", nargs="?", help="text with holes ('-' reads standard input)")
    p.add_argument("--file", help="read the template from this file instead")
    p.add_argument("--raw", action="store_true", help="do not turn \\n and \\t in TEMPLATE into newline and tab")
    p.add_argument("--num", type=POSITIVE, default=1, help="fillings to draw, as one batch (default 1)")
    p.add_argument("--candidates", type=POSITIVE, default=4,
                   help="lengths tried for each variable-length hole [MASK:a-b] (default 4)")
    add_sampling_args(p, card=True)
    p.add_argument("--json", action="store_true", help="print one JSON object (texts, fills, nfe, ...)")
    p.set_defaults(steps=None, temperature=None, top_k=None, top_p=None)  # unset: the model card's
    add_checkpoint_arg(p)


def main(args) -> int:
    args.run = checkpoint_folder(args.run, args.checkpoint)
    from ..control import infill

    if args.template is not None and args.file:
        raise UsageError("give a TEMPLATE or --file, not both")
    template = read_text(args.template, args.file, "TEMPLATE")
    if args.template not in (None, "-"):
        template = unescape(template, args.raw)
    run = load(str(with_card(args, args.run, "infill")), args.device, args.threads)
    result = infill(run, template, num=args.num, steps=args.steps, sampler=args.sampler, seed=args.seed,
                    candidates=args.candidates, label=args.label, guidance=args.guidance, classifier=classifier_of(args),
                    **sampler_options(args))  # holes and spans have a fixed size
    print_control(result, args, {"template": template})
    return 0
