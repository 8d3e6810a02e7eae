"""Benchmark: speculative decoding with a diffusion drafter against the AR twin's KV-cached decoding.

    python bench/speculative.py --target RUN_AR --draft RUN_DIFFUSION [--length 128] [--k 4,8,16]

Batch 1, one thread, the same prompts for every setting (the first lines of held-out text), in
one process: AR + KV cache, then ``--sampler speculative --draft-len K`` for each K, greedy
(the tokens must be identical to AR's: checked) and sampled (temperature 1: the AR model's own
distribution, so only speed and acceptance are reported). Each prompt is decoded by AR and by
the setting back to back, ``--repeats`` times: the ratio is the median of those A/B pairs (a
shared machine's speed drifts between minutes; a pair sees the same), tokens/s the median of
the setting's runs; mean drafts proposed and kept per round, tokens per AR call, and the share
of the time spent in the drafter's and the AR model's forward passes. Writes
bench/out/speculative.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, cpu_model  # noqa: E402

PROMPTS = ["ROMEO:\n", "First Citizen:\nBefore we proceed", "KING HENRY:\nWhat", "JULIET:\nO ", "MENENIUS:\n"]


class Clock:
    """Seconds spent inside a module's forward (the drafter's, the target's)."""

    def __init__(self, module):
        self.seconds, self.forward = 0.0, module.forward

        def forward(*a, **k):
            t = time.perf_counter()
            try:
                return self.forward(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t

        module.forward = forward


def timed(sampler, run, ids, length: int, seed: int):
    out = sampler.generate(run.model, run.process, length=length, prompt=ids, gen=torch.Generator().manual_seed(seed))
    return out, out.tokens_per_second


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="the AR run")
    p.add_argument("--draft", required=True, help="the masked or block diffusion run (same tokenizer)")
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--k", default="4,8,16", help="draft lengths, comma-separated")
    p.add_argument("--draft-steps", type=int, default=1, help="drafter calls per round (0: K, one token a call)")
    p.add_argument("--draft-confidence", type=float, default=0.0,
                   help="end a round's draft where the drafter's top probability falls below this (0: off)")
    p.add_argument("--repeats", type=int, default=3, help="A/B pairs per prompt and setting (default 3)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "speculative.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from textdiffusion.runs import load_run
    from textdiffusion.sampling import build_sampler

    target, drafter = load_run(args.target), load_run(args.draft)
    draft_clock, target_clock = Clock(drafter.model), Clock(target.model)
    tok = target.tokenizer
    prompts = [torch.from_numpy(tok.encode(text)) for text in PROMPTS]
    rows = []
    for temperature in (0.0, 1.0):
        ar = build_sampler("ar", target.process, tok, temperature=temperature)
        timed(ar, target, prompts[0], 16, 0)  # warm-up
        base = [timed(ar, target, ids, args.length, i) for i, ids in enumerate(prompts)]
        ar_rate = statistics.median(r for _, r in base)
        rows.append({"temperature": temperature, "sampler": "ar", "k": None, "tokens_per_second": ar_rate, "ratio": 1.0,
                     "identical": True})
        for k in map(int, args.k.split(",")):
            spec = build_sampler("speculative", target.process, tok, temperature=temperature, draft_run=drafter,
                                 draft_len=k, draft_steps=min(args.draft_steps or k, k),
                                 draft_confidence=args.draft_confidence)
            timed(spec, target, prompts[0], 16, 0)
            ratios, rates, outs, wall, in_draft, in_target = [], [], [], 0.0, 0.0, 0.0
            for rep in range(args.repeats):  # each prompt: AR, then speculative, back to back (an A/B pair)
                for i, ids in enumerate(prompts):
                    _, ar_now = timed(ar, target, ids, args.length, i)
                    d1, a1, t0 = draft_clock.seconds, target_clock.seconds, time.perf_counter()
                    o, r = timed(spec, target, ids, args.length, i)
                    wall += time.perf_counter() - t0
                    in_draft, in_target = in_draft + draft_clock.seconds - d1, in_target + target_clock.seconds - a1
                    ratios.append(r / ar_now)
                    rates.append(r)
                    if rep == 0:
                        outs.append((o, r))
            split = {"drafter_share": in_draft / wall, "target_share": in_target / wall}
            same = all(torch.equal(o.tokens, b.tokens) for (o, _), (b, _) in zip(outs, base))
            stats = [o.stats for o, _ in outs]
            rows.append({"temperature": temperature, "sampler": "speculative", "k": k,
                         "tokens_per_second": statistics.median(rates), "ratio": statistics.median(ratios),
                         "identical": same if temperature == 0 else None,
                         "mean_accepted": statistics.mean(s["mean_accepted"] for s in stats),
                         "mean_drafted": statistics.mean(s["mean_drafted"] for s in stats),
                         "tokens_per_target_call": statistics.mean(s["tokens_per_target_call"] for s in stats),
                         "draft_calls_per_token": statistics.mean(s["draft_calls"] / args.length for s in stats),
                         **split})
            print(json.dumps(rows[-1]), file=sys.stderr)
    record = {"date": datetime.date.today().isoformat(), "machine": cpu_model(), "threads": args.threads,
              "draft_steps": args.draft_steps, "draft_confidence": args.draft_confidence,
              "torch": torch.__version__, "target": args.target, "draft": args.draft, "length": args.length,
              "prompts": len(prompts), "repeats": args.repeats, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    print("| temperature | sampler | K | tokens/s | vs AR | identical to AR | drafted / round | kept / round | tokens / AR call "
          "| time in drafter / AR / the rest |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        split = (f"{r['drafter_share']:.2f} / {r['target_share']:.2f} / {1 - r['drafter_share'] - r['target_share']:.2f}"
                 if "drafter_share" in r else "-")
        print(f"| {r['temperature']:g} | {r['sampler']} | {r['k'] or '-'} | {r['tokens_per_second']:.0f} | "
              f"{r['ratio']:.2f} | {'-' if r['identical'] is None else 'yes' if r['identical'] else 'NO'} | "
              f"{r.get('mean_drafted', float('nan')):.2f} | {r.get('mean_accepted', float('nan')):.2f} | "
              f"{r.get('tokens_per_target_call', 1.0):.2f} | {split} |")


if __name__ == "__main__":
    main()
