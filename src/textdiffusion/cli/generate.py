"""textdiffusion generate: generate text (default: the shipped English model)."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import UsageError
from .common import (
    POSITIVE,
    add_checkpoint_arg,
    add_sampling_args,
    add_trace_arg,
    checkpoint_folder,
    classifier_of,
    generate_texts,
    load,
    print_control,
    sampler_options,
    save_trace,
    trace_recorder,
    unescape,
    with_card,
)

NAME = "generate"
PARSER = dict(help="generate text (default: the shipped English model)",
              description="Generate text from a shipped model (textdiffusion models lists them) or any run "
                          "directory; --watch shows the denoising live. Sampling options left unset come from the "
                          "model's card (textdiffusion models --json shows them), else the usual defaults.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", default="",
                   help="text the output starts with (kept verbatim); [MASK], [MASK:n] or [MASK:a-b] holes "
                        "anywhere are filled instead (see infill); \\n and \\t are newline and tab")
    p.add_argument("--model", default=None, metavar="NAME|DIR", help="a shipped model name (english, code) or a "
                                                                     "run directory (default: the English model)")
    p.add_argument("--raw", action="store_true", help="do not turn \\n and \\t in PROMPT into newline and tab")
    p.add_argument("--length", type=POSITIVE, default=None, help="new tokens (default: up to 128, within the context)")
    p.add_argument("--num", type=POSITIVE, default=1, help="samples, generated as one batch (default 1)")
    p.add_argument("--watch", action="store_true", help="show every denoising step of the first sample in the terminal")
    add_sampling_args(p, card=True)
    p.add_argument("--json", action="store_true", help="print one JSON object (texts, nfe, seconds, ...)")
    add_trace_arg(p)
    # unset sampling options come from the model's card (textdiffusion models), else the usual defaults
    p.set_defaults(steps=None, temperature=None, top_k=None, top_p=None)
    add_checkpoint_arg(p)


def main(args) -> int:
    args.model = checkpoint_folder(args.model, args.checkpoint)
    from ..control.templates import has_holes

    prompt = unescape(args.prompt, args.raw)
    holes = has_holes(prompt)  # a malformed hole is an error before any model loads
    folder = with_card(args, args.model, "infill" if holes else "generate")
    run = load(str(folder), args.device, args.threads)
    if holes:  # holes anywhere: fill them, keep the rest verbatim
        from ..control import infill

        for flag, value in (("--length", args.length), ("--watch", args.watch), ("--stop-at-eot", args.stop_at_eot)):
            if value:
                raise UsageError(f"{flag} does not apply to a prompt with holes (size them with [MASK:n] or [MASK:a-b])")

        recorder = trace_recorder(args, run)
        result = infill(run, prompt, num=args.num, steps=args.steps, sampler=args.sampler, seed=args.seed,
                        label=args.label, guidance=args.guidance, classifier=classifier_of(args), on_step=recorder,
                        **sampler_options(args))
        save_trace(args, recorder, run, result.texts, result.sampler, 0)
        print_control(result, args, {"template": prompt, "model": str(run.run_dir)})
        return 0
    if args.watch:
        from ..viz import TerminalWatch

        watch = TerminalWatch(run.tokenizer, args.steps)
    else:
        watch = None
    recorder = trace_recorder(args, run, watch=watch)  # --watch draws the trace's frames
    out, texts, sampler = generate_texts(run, args, prompt, args.num, args.length, on_step=recorder)
    save_trace(args, recorder, run, texts, sampler, out.prompt_length)
    if watch is not None:
        watch.finish()
    if args.json:
        print(json.dumps({"texts": texts, "model": str(run.run_dir), "nfe": out.nfe, "seconds": out.seconds,
                          "tokens_per_second": out.tokens_per_second, "sampler": sampler, "steps": args.steps,
                          "seed": args.seed, "prompt": prompt, **({"stats": out.stats} if out.stats else {})}))
    else:
        print("\n\n".join(texts))
        extra = ""
        if "mean_accepted" in out.stats:  # speculative decoding
            st = out.stats
            extra = (f"; {st['mean_accepted']:.2f} drafts kept per round, {st['tokens_per_target_call']:.2f} tokens "
                     f"per AR call, {st['target_calls']} AR + {st['draft_calls']} drafter calls")
        print(f"[{sampler}: {out.nfe} network calls, {out.seconds:.2f} s{extra}]", file=sys.stderr)
    return 0
