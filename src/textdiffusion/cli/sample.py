"""textdiffusion sample: generate text from a trained run."""

from __future__ import annotations

import argparse
import json
import sys

from .common import (
    POSITIVE,
    add_sampling_args,
    add_trace_arg,
    generate_texts,
    load,
    save_trace,
    trace_recorder,
)

NAME = "sample"
PARSER = dict(help="generate text from a trained run",
              description="Generate text from a run directory. Diffusion runs start from their "
                          "prior (all-mask, or random tokens) and denoise; AR runs decode left to "
                          "right with a KV cache.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory or shipped model name (textdiffusion models)")
    p.add_argument("--prompt", default="", help="text the samples start with (kept verbatim)")
    p.add_argument("--num", type=POSITIVE, default=1, help="number of samples, generated as one batch (default 1)")
    p.add_argument("--length", type=POSITIVE, default=None, help="new tokens per sample (default: fill the context, at most 128)")
    add_sampling_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (texts, nfe, tokens_per_second, ...)")
    add_trace_arg(p)


def main(args) -> int:
    run = load(args.run, args.device, args.threads)
    recorder = trace_recorder(args, run)
    out, texts, sampler = generate_texts(run, args, args.prompt, args.num, args.length, on_step=recorder)
    save_trace(args, recorder, run, texts, sampler, out.prompt_length)
    if args.json:
        print(json.dumps({"texts": texts, "samples": texts,  # "samples": the old key, kept for one release
                          "nfe": out.nfe, "tokens_per_second": out.tokens_per_second,
                          "seconds": out.seconds, "sampler": sampler,
                          "steps": out.nfe if sampler == "ar" else args.steps,
                          "length": out.new_tokens.shape[1], "seed": args.seed, "prompt": args.prompt,
                          "label": args.label, "guidance": args.guidance,
                          "process": run.cfg.process.name}))
    else:
        for i, text in enumerate(texts):
            if i:
                print("\n" + "─" * 40)
            print(text)
        print(f"[{sampler}: {out.nfe} network calls, {out.tokens_per_second:,.0f} tokens/s]", file=sys.stderr)
    return 0
