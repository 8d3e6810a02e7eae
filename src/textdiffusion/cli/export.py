"""textdiffusion export: save a run for inference only (bf16 weights, config, tokenizer)."""

from __future__ import annotations

import argparse
import sys

from .common import (
    add_checkpoint_arg,
    checkpoint_folder,
    setting,
)

NAME = "export"
PARSER = dict(help="save a run for inference only (bf16 weights, config, tokenizer)",
              description="Write what inference needs (config, tokenizer, labels, the EMA weights in "
                          "--dtype) into a new directory that every command and Pipeline.from_pretrained "
                          "read; with --description / --default it also gets a card.json (what the shipped "
                          "models carry).",
              formatter_class=argparse.RawDescriptionHelpFormatter,
              epilog="example:\n  textdiffusion export runs/mine --out my-model --description 'my notes' "
                     "--default sampler=confidence --default steps=32")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory (or a saved model)")
    p.add_argument("--out", required=True, help="directory to create (must not exist or be empty)")
    p.add_argument("--format", choices=("textdiffusion", "transformers"), default="textdiffusion",
                   help="textdiffusion (default): a model directory of ours; transformers: also loads with "
                        "transformers' AutoModelForMaskedLM / AutoModelForCausalLM and AutoTokenizer (pip install "
                        "'textdiffusion[hf]')")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                   help="weight precision (default bfloat16: half the size of float32)")
    p.add_argument("--description", help="one line about the model, shown by textdiffusion models")
    p.add_argument("--default", action="append", default=[], metavar="KEY=VALUE",
                   help="a sampling setting generate uses when not given (sampler, steps, temperature, top_k, top_p, "
                        "threshold, ...); repeatable")
    p.add_argument("--infill-default", action="append", default=[], metavar="KEY=VALUE",
                   help="a sampling setting for filling holes (generate with [MASK] holes, infill) when not given; "
                        "without any, holes use the --default settings; repeatable")
    add_checkpoint_arg(p)


def main(args) -> int:
    args.run = checkpoint_folder(args.run, args.checkpoint)
    from ..pipeline import Pipeline
    from ..sampling import build_sampler
    from ..sampling.cards import check_settings
    from ..sampling.registry import options_named

    pipe = Pipeline.from_pretrained(args.run)
    card = dict(pipe.card)
    for task, items, flag in (("generate", args.default, "--default"), ("infill", args.infill_default, "--infill-default")):
        settings = check_settings({**pipe.card.get(task, {}), **dict(setting(item, flag) for item in items)}, flag)
        options = {k: v for k, v in settings.items() if k not in ("sampler", "steps")}
        with options_named("name"):  # KEY=VALUE settings: their errors say top_p, as typed
            build_sampler(settings.get("sampler"), pipe.run.process, pipe.tokenizer, **options)  # they must fit the run
        if settings:
            card[task] = settings
        else:
            card.pop(task, None)
    if args.description:
        card["description"] = args.description
    out = pipe.save_pretrained(args.out, dtype=args.dtype, card=card, format=args.format)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"saved {args.run} ({args.dtype}) in {out}: {size / 1e6:.1f} MB", file=sys.stderr)
    return 0
