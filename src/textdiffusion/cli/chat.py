"""textdiffusion chat: talk to an instruction-tuned run (train --sft)."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import UsageError
from .common import (
    POSITIVE,
    add_sampling_args,
    load,
    sampler_options,
)

NAME = "chat"
PARSER = dict(help="talk to an instruction-tuned run (train --sft)",
              description="Reply to MESSAGE, or (without one) talk turn by turn on standard input "
                          "(an empty line or end of input ends). The conversation is wrapped in the "
                          "chat template the run was tuned with; replies end at end-of-text.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory (trained with --sft) or shipped model name")
    p.add_argument("message", nargs="?", help="one message to answer (default: interactive)")
    p.add_argument("--length", type=POSITIVE, default=None, help="reply tokens at most (default: the rest of the context)")
    p.add_argument("--num", type=POSITIVE, default=1, help="replies to draw for a one-shot MESSAGE (default 1)")
    add_sampling_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (replies, nfe, ...); interactive: one "
                                                          "JSON line per turn")


def main(args) -> int:
    from ..control import chat

    run = load(args.run, args.device, args.threads)
    opts = sampler_options(args)  # chat always ends replies at end-of-text
    if not run.cfg.data.sft:
        print(f"textdiffusion: note: {args.run} was not instruction-tuned (train --sft): it has never seen the chat "
              f"template, so its replies continue the text rather than answer it", file=sys.stderr)

    def reply(message: str, history: list, num: int):
        if args.label is not None or args.classifier:
            raise UsageError("chat guides on the prompt; --label and --classifier are for sample, infill and edit")
        return chat(run, message, history, length=args.length, steps=args.steps, sampler=args.sampler,
                    seed=args.seed, num=num, guidance=args.guidance, **opts)

    if args.message is not None:
        result = reply(args.message, [], args.num)
        if args.json:
            print(json.dumps({"replies": result.texts, "message": args.message, **result.to_dict()}))
        else:
            print("\n".join(result.texts))
        return 0
    history: list[tuple[str, str]] = []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = _read_line(len(history) + 1)
        if not line.strip():
            return 0
        result = reply(line.strip(), history, 1)
        if args.json:  # one JSON line per turn
            print(json.dumps({"message": line.strip(), "reply": result.texts[0], "nfe": result.nfe}), flush=True)
        else:
            print(("model> " if interactive else "") + result.texts[0], flush=True)
        history.append((line.strip(), result.texts[0]))


def _read_line(number: int) -> str:
    """One line of standard input as UTF-8 text (whatever the locale), or a one-line error."""
    raw = sys.stdin.buffer.readline() if hasattr(sys.stdin, "buffer") else sys.stdin.readline()
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"line {number} of standard input is not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                         f"position {exc.start}): convert it first, e.g. iconv -f latin1 -t utf-8") from None
