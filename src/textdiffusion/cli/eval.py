"""textdiffusion eval: held-out likelihood bound, sample quality and speed."""

from __future__ import annotations

import argparse
import json

from .common import (
    NON_NEGATIVE,
    POSITIVE,
    add_checkpoint_arg,
    add_sampling_args,
    checkpoint_folder,
    generate_texts,
    load,
)

NAME = "eval"
PARSER = dict(help="held-out likelihood bound, sample quality and speed",
              description="Evaluate a run: ELBO (diffusion) or exact NLL (AR) in bits/token and "
                          "bits/byte, with --likelihood duel also the exact likelihood of a masked run's "
                          "sampler (DUEL), then sample quality (judge perplexity, entropy) and speed.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory or shipped model name (textdiffusion models)")
    p.add_argument("--data", required=True, help="text to score: the training source (its --split is used) or any other file, folder, "
                                                    "JSONL, parquet or Arrow file or saved dataset")
    p.add_argument("--text-field", metavar="NAME", help="the JSONL field or table column with the text "
                                                        "(default: the run's own, else text)")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default=None,
                   help="which split to score (default: val for the run's own data, all otherwise)")
    p.add_argument("--judge", help="an AR run directory whose perplexity of the samples is reported")
    p.add_argument("--discrete-steps", type=NON_NEGATIVE, default=None, metavar="T",
                   help="report the discrete-time bound with T steps (0 = continuous; default: the run's own)")
    p.add_argument("--mc-samples", type=POSITIVE, default=4, help="Monte Carlo draws of t per window (default 4)")
    p.add_argument("--max-windows", type=NON_NEGATIVE, default=256, help="cap on scored windows; 0 = all (default 256)")
    p.add_argument("--batch-size", type=POSITIVE, default=16, help="windows per forward pass (default 16)")
    g = p.add_argument_group("exact likelihood of a masked run's sampler (DUEL, arXiv:2603.01367)")
    g.add_argument("--likelihood", choices=("elbo", "duel"), default="elbo",
                   help="elbo (default): the ELBO bound (AR runs: their exact NLL). duel: also DUEL's exact "
                        "log-likelihood of the --duel-order sampler (masked and sedd-absorb runs; AR runs: their "
                        "NLL, exact already). Cost: one network call per step, i.e. per token of the context at one "
                        "token per step, for every --batch-size windows (1,024 calls per 16 windows of a 1,024-token "
                        "context), against 2 x --mc-samples for the ELBO; hence --duel-windows")
    g.add_argument("--duel-order", default=None, metavar="ORDER",
                   help="the sampler DUEL scores, one whose order does not depend on its draws: top-prob (highest "
                        "top-1 probability first: DUEL's confidence; default), left-to-right, margin or entropy "
                        "(not confidence: it ranks by the token it drew). With --temperature, --top-k, --top-p and "
                        "--schedule as given")
    g.add_argument("--duel-steps", type=POSITIVE, default=None, metavar="N",
                   help="its steps (network calls per batch of windows; default: the context, one token per step); "
                        "fewer reveal ceil(masked / steps left) per step (--schedule linear)")
    g.add_argument("--duel-windows", type=NON_NEGATIVE, default=16, metavar="N",
                   help="windows DUEL scores, the first of those the ELBO scores (default 16; 0 = all)")
    p.add_argument("--num-samples", type=NON_NEGATIVE, default=8, help="samples for quality and speed (default 8; 0 = skip)")
    p.add_argument("--length", type=POSITIVE, default=None, help="tokens per sample (default: the context)")
    add_sampling_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_checkpoint_arg(p)


def main(args) -> int:
    args.run = checkpoint_folder(args.run, args.checkpoint)
    from ..evaluation import distinct_n, judge_perplexity, self_bleu, unigram_entropy
    from ..evaluation.run import evaluate_run

    run = load(args.run, args.device, args.threads)
    result = {"run": str(args.run), **evaluate_run(run, args.data, split=args.split, discrete_steps=args.discrete_steps,
                                                   mc_samples=args.mc_samples, batch_size=args.batch_size,
                                                   max_windows=args.max_windows, seed=args.seed,
                                                   text_field=args.text_field, **duel_arguments(args))}
    if args.num_samples > 0:
        out, texts, sampler = generate_texts(run, args, "", args.num_samples, args.length)
        token_lists = out.new_tokens.tolist()
        result.update(sampler=sampler, steps=args.steps, nfe=out.nfe, tokens_per_second=out.tokens_per_second,
                      sample_length=out.new_tokens.shape[1], unigram_entropy=unigram_entropy(token_lists),
                      distinct_1=distinct_n(token_lists, 1), distinct_2=distinct_n(token_lists, 2),
                      distinct_3=distinct_n(token_lists, 3), texts=texts[:2], samples=texts[:2])  # samples: old key
        if len(token_lists) >= 2:
            result["self_bleu"] = self_bleu(token_lists)
        if args.judge:
            judge = load(args.judge, args.device, args.threads)
            result["judge"] = str(args.judge)
            result["judge_perplexity"] = judge_perplexity(judge.model, judge.tokenizer, texts)
    if args.json:
        print(json.dumps(result))
    else:
        kind = "exact NLL" if result["exact"] else "ELBO bound"
        print(f"{args.run} on {args.data} [{result['split']}: {result['split_reason']}]: "
              f"{result['bits_per_token']:.4f} ± {result['stderr_bits_per_token']:.4f} bits/token, "
              f"{result['bits_per_byte']:.4f} bits/byte ({kind}, {result['num_tokens']:,} tokens)")
        if "duel" in result:
            print(duel_line(result["duel"]))
        if "nfe" in result:
            line = (f"samples ({result['sampler']}, {args.steps} steps): {result['nfe']} network calls, "
                    f"{result['tokens_per_second']:,.0f} tokens/s, unigram entropy {result['unigram_entropy']:.3f} bits, "
                    f"distinct-1/2/3 {result['distinct_1']:.3f}/{result['distinct_2']:.3f}/{result['distinct_3']:.3f}")
            if "self_bleu" in result:
                line += f", self-BLEU {result['self_bleu']:.3f}"
            if "judge_perplexity" in result:
                line += f", judge perplexity {result['judge_perplexity']:.3f}"
            print(line)
    return 0


def duel_arguments(args) -> dict:
    """evaluate_run's DUEL settings from the command line (none unless --likelihood duel)."""
    if args.likelihood != "duel":
        return {}
    return dict(likelihood="duel", duel_order=args.duel_order, duel_steps=args.duel_steps,
                duel_windows=args.duel_windows, progress=True,
                duel_sampling=dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                   schedule=args.schedule))


def duel_line(d: dict) -> str:
    """The DUEL line of the text output (beside the ELBO line above it)."""
    if "note" in d:
        return f"DUEL: {d['note']}"
    how = "one token per step" if d["steps"] >= d["num_tokens"] // max(d["num_windows"], 1) else \
        f"{d['steps']} steps, {d['schedule']} schedule"
    filters = [f"temperature {d['temperature']:g}"] if d["temperature"] != 1 else []
    filters += [f"top-k {d['top_k']}"] if d["top_k"] else []
    filters += [f"top-p {d['top_p']:g}"] if d["top_p"] < 1 else []
    return (f"DUEL exact log-likelihood of the {d['order']} sampler ({', '.join([how, *filters])}): "
            f"{d['bits_per_token']:.4f} ± {d['stderr_bits_per_token']:.4f} bits/token, {d['bits_per_byte']:.4f} "
            f"bits/byte ({d['num_tokens']:,} tokens in {d['num_windows']} windows, {d['network_calls']:,} network "
            f"calls; ELBO bound on these windows: {d['elbo_bits_per_token']:.4f} bits/token, "
            f"{d['elbo_bits_per_byte']:.4f} bits/byte)")
