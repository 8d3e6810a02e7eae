"""Benchmark: what a sampler's own loop costs beside the network, per row and step.

    python bench/sampler_overhead.py                          # every family at batch 1, 64, 1024; english at 64
    python bench/sampler_overhead.py --label after --compare bench/out/sampler_overhead/before.json
    python bench/sampler_overhead.py --smoke                  # seconds: does it run

Part 1, the sampler alone. The network is exact and nearly free: ``ProductDenoiser``, the true
p(x0 | x_t) of data whose positions are independent with known marginals q_i (a fixed random
table): at a masked position it is q_i, at an unmasked one certainty of the token there. Its call
is a gather, so what is timed is the sampler: for each family (masked process: ancestral, remdm,
confidence, semi-ar) and batch size B, rows of LENGTH free positions are started and stepped
(``Sampler.start``, then ``step`` until every row is done, as a server drives them, with no
per-step record) under one seeded generator. Row-steps = the unfinished rows summed over steps.
Reported: row-steps per second, the microseconds per row-step spent outside the network call,
and the network's share of the loop.

Part 2, the shipped English model at batch 64 (--english-batch): the same loop with the real
network, for ancestral and confidence; reported: the share of each step spent outside the network
call (the issue 40 goal: at most 10 %).

Runs are labelled (--label, default "before"); results go to OUT/LABEL.json. With --compare
FILE the table puts that file's row-steps per second beside this run's and their ratio (the
goal: at least 10x at batch 1024 for the ancestral and remasking families). Times are medians of
--repeats runs; the machine, torch threads and torch version are recorded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_model  # noqa: E402

from textdiffusion.config import ModelConfig  # noqa: E402
from textdiffusion.sampling import build_sampler  # noqa: E402

FAMILIES = [("ancestral", "ancestral", {}), ("ancestral", "remdm", {"eta": 0.04}),
            ("remasking", "confidence", {}), ("semi-ar", "semi-ar", {"block_length": 16})]
ENGLISH = [("ancestral", "ancestral", {}), ("remasking", "confidence", {})]


class ProductDenoiser(nn.Module):
    """p(x0 | x_t) exactly, for data whose positions are independent with marginals ``q`` (T, V)
    over the ids that are text: q_i at a masked position, one-hot on the token at an unmasked
    one. Called like the project's Transformer; ``seconds`` sums the time spent in its calls."""

    def __init__(self, length: int, tokenizer, seed: int = 0):
        super().__init__()
        vocab, mask_id = tokenizer.vocab_size, tokenizer.mask_id
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(length, vocab, generator=g) * 2.0
        logits[:, list(tokenizer.banned_ids)] = float("-inf")  # the mask, padding, unknown: never a value
        self.register_buffer("log_q", torch.log_softmax(logits, -1))
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # next(model.parameters()): the device
        self.cfg = ModelConfig(n_layer=1, n_head=1, d_model=2, context=length, vocab_size=vocab, time_cond=False)
        self.mask_id, self.seconds, self.calls = mask_id, 0.0, 0

    def forward(self, x, t=None, attn_mask=None, **_):
        start = time.perf_counter()
        B, T = x.shape
        V = self.log_q.shape[1]
        out = self.log_q[:T].expand(B, T, V).clone()  # one write of the (B, T, V) output: the masked positions'
        b, i = (x != self.mask_id).nonzero(as_tuple=True)
        if b.numel():  # the known positions: certain of their token
            out[b, i] = -1e4
            out[b, i, x[b, i].clamp(max=V - 1)] = 0.0
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


class Timed(nn.Module):
    """A real network, its calls timed (``seconds``)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.cfg, self.seconds, self.calls = net, net.cfg, 0.0, 0

    def forward(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.net(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def drive(sampler, net, process, batch: int, length: int, steps: int, seed: int) -> dict:
    """Start ``batch`` rows and step them to the end as a server does: (loop seconds, network
    seconds, row-steps, network calls)."""
    from textdiffusion.sampling.base import resolve_canvas

    canvas = resolve_canvas(net, None, batch, length, None)
    net.seconds, net.calls = 0.0, 0
    start = time.perf_counter()
    state = sampler.start(net, process, canvas, steps, torch.Generator().manual_seed(seed))
    state.report = False
    row_steps = 0
    while not state.finished:
        row_steps += len(state.active())
        sampler.step(state, net)
    return {"seconds": time.perf_counter() - start, "network": net.seconds, "row_steps": row_steps, "calls": net.calls}


def measure(sampler, net, process, batch, length, steps, repeats) -> dict:
    drive(sampler, net, process, min(batch, 4), length, min(steps, 4), 0)  # warm-up
    runs = [drive(sampler, net, process, batch, length, steps, seed) for seed in range(repeats)]
    seconds = statistics.median(r["seconds"] for r in runs)
    network = statistics.median(r["network"] for r in runs)
    row_steps = runs[0]["row_steps"]
    outside = max(seconds - network, 0.0)
    return {"row_steps": row_steps, "seconds": round(seconds, 5), "network_seconds": round(network, 5),
            "row_steps_per_s": round(row_steps / seconds, 1), "us_outside_per_row_step": round(1e6 * outside / row_steps, 2),
            "outside_share": round(outside / seconds, 4), "calls": runs[0]["calls"]}


def part_one(args, log) -> list[dict]:
    from textdiffusion.processes.masked import MaskedProcess
    from textdiffusion.tokenizers import CharTokenizer

    tok = CharTokenizer([chr(0x100 + i) for i in range(args.vocab)])
    process = MaskedProcess(tok.vocab_size, tok.mask_id)
    net = ProductDenoiser(args.length, tok).eval()
    rows = []
    for family, name, options in FAMILIES:
        sampler = build_sampler(name, process, tok, **options)
        for batch in args.batches:
            r = measure(sampler, net, process, batch, args.length, args.steps, args.repeats)
            rows.append({"part": "exact", "family": family, "sampler": name, "batch": batch, **r})
            log(f"exact   {name:<10} B={batch:<5} {r['row_steps_per_s']:>10,.0f} row-steps/s  "
                f"{r['us_outside_per_row_step']:>7.1f} us outside the network per row-step  "
                f"network {1 - r['outside_share']:.1%} of the loop")
    return rows


def part_two(args, log) -> list[dict]:
    from textdiffusion.runs import load_run

    run = load_run("english")
    net = Timed(run.model.eval())
    rows = []
    for family, name, options in ENGLISH:
        sampler = build_sampler(name, run.process, run.tokenizer, **options)
        r = measure(sampler, net, run.process, args.english_batch, args.english_length, args.english_steps,
                    args.repeats)
        rows.append({"part": "english", "family": family, "sampler": name, "batch": args.english_batch, **r})
        log(f"english {name:<10} B={args.english_batch:<5} outside the network: {r['outside_share']:.1%} of the step "
            f"({r['us_outside_per_row_step']:.1f} us per row-step)")
    return rows


def table(rows: list[dict], before: dict | None) -> str:
    head = "| part | sampler (family) | batch | row-steps/s | us outside the network per row-step | outside share |"
    sep = "|---|---|---|---|---|---|"
    if before:
        head += " before row-steps/s | ratio |"
        sep += "---|---|"
    lines = [head, sep]
    for r in rows:
        line = (f"| {r['part']} | {r['sampler']} ({r['family']}) | {r['batch']} | {r['row_steps_per_s']:,.0f} | "
                f"{r['us_outside_per_row_step']:.1f} | {r['outside_share']:.1%} |")
        if before:
            b = before.get((r["part"], r["sampler"], r["batch"]))
            line += (f" {b['row_steps_per_s']:,.0f} | {r['row_steps_per_s'] / b['row_steps_per_s']:.1f}x |" if b
                     else " - | - |")
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label", default="before", help="this run's name in OUT/LABEL.json (default before)")
    p.add_argument("--compare", type=Path, default=None, metavar="FILE", help="an earlier run's JSON to put beside this one")
    p.add_argument("--out", type=Path, default=Path("bench/out/sampler_overhead"))
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 64, 1024])
    p.add_argument("--length", type=int, default=64, help="free positions per row (default 64)")
    p.add_argument("--steps", type=int, default=64, help="steps per row (default 64: about one token a step)")
    p.add_argument("--vocab", type=int, default=252, help="letters of the exact network's vocabulary (default 252)")
    p.add_argument("--english-batch", type=int, default=64)
    p.add_argument("--english-length", type=int, default=64)
    p.add_argument("--english-steps", type=int, default=16)
    p.add_argument("--no-english", action="store_true", help="skip part 2 (the shipped English model)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per setting; the median is kept (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: does it run")
    args = p.parse_args(argv)
    if args.smoke:
        args.batches, args.length, args.steps, args.repeats = [1, 8], 8, 4, 1
        args.english_batch, args.english_length, args.english_steps = 2, 8, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    machine = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "python": platform.python_version(), "date": datetime.date.today().isoformat()}
    log(f"{machine['cpu']}, {machine['threads']} torch threads, torch {machine['torch']}")
    with torch.inference_mode():
        rows = part_one(args, log) + ([] if args.no_english else part_two(args, log))
    before = None
    if args.compare:
        old = json.loads(args.compare.read_text())
        before = {(r["part"], r["sampler"], r["batch"]): r for r in old["rows"]}
    out = {"label": args.label, "machine": machine, "settings": {k: v for k, v in vars(args).items()
                                                                  if k not in ("out", "compare")}, "rows": rows}
    (args.out / f"{args.label}.json").write_text(json.dumps(out, indent=1, default=str))
    print(table(rows, before))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
