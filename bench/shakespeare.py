"""Benchmark: every diffusion process vs the AR twin on Tiny Shakespeare, same backbone, same wall-clock budget.

    python bench/shakespeare.py --data ../shared/data/tinyshakespeare.txt --budget 900

Runs everything through the real CLI in subprocesses (so peak memory is per phase, read with
``os.wait4``), then writes ``bench/out/shakespeare.json`` and prints a Markdown table for
BENCHMARKS.md. Reports: training tokens/s and MFU (FLOPs per token over the peak fp32 matmul
rate measured in this run), peak memory of training and sampling, validation bits/char
(diffusion ELBO vs AR exact NLL), judge perplexity (the AR twin is the judge) and unigram
entropy of samples at several step counts, and a few samples.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, cpu_model, peak_matmul_flops, run_measured, train_overrides  # noqa: E402

SAMPLERS = {"ar": ("ar",), "masked": ("ancestral", "confidence"), "gaussian": ("ddpm", "ddim"),
            "sedd-absorb": ("ancestral", "euler"), "sedd-uniform": ("ancestral", "euler")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "tinyshakespeare.txt"))
    p.add_argument("--out", default=str(REPO / "bench" / "out"))
    p.add_argument("--budget", type=float, default=900, help="training seconds per model (default 900)")
    p.add_argument("--max-steps", type=int, default=520, help="LR schedule length (sized to the budget)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", default="16,64,256", help="sampling step budgets for the diffusion models")
    p.add_argument("--num-samples", type=int, default=8)
    p.add_argument("--max-windows", type=int, default=0, help="validation windows to score (0 = all)")
    p.add_argument("--processes", default="masked,ar",
                   help="comma list of masked, uniform, gaussian, sedd-absorb, sedd-uniform, ar (the AR twin is the judge)")
    p.add_argument("--reuse", action="store_true",
                   help="reuse finished runs and results in --out (bench/out/shakespeare.json); train only the missing ones")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)

    peak = peak_matmul_flops()
    results: dict = {
        "date": datetime.date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}", "cpu_model": cpu_model(),
        "peak_fp32_matmul_gflops": peak / 1e9, "budget_seconds": args.budget, "data": args.data, "models": {},
        "samples": [],
    }
    previous = out / "shakespeare.json"
    if args.reuse and previous.exists():
        results["models"] = json.loads(previous.read_text())["models"]
        results["samples"] = json.loads(previous.read_text())["samples"]
    processes = [p for p in args.processes.split(",") if p]
    if "ar" not in processes and not (out / "shakespeare-ar" / "checkpoint").exists():
        raise SystemExit("the AR twin is the judge: include ar in --processes (or keep its run in --out)")
    overrides = train_overrides(args.budget, args.max_steps, args.batch_size)
    for process in processes:
        run_dir = out / f"shakespeare-{process}"
        if args.reuse and process in results["models"]:
            continue
        entry: dict = {"run": str(run_dir)}
        cmd = ["train", "--data", args.data, "--out", run_dir, "--config", REPO / "configs" / "shakespeare-char.toml",
               "--process", process, "--quiet", *overrides]
        entry["train_command"] = "textdiffusion " + " ".join(map(str, cmd))
        _, rss, wall = run_measured(cmd)
        entry.update(train_peak_rss_bytes=rss, train_wall_seconds=wall)
        metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        last = [m for m in metrics if "loss" in m][-1]
        cfg = json.loads((run_dir / "config.json").read_text())
        from textdiffusion.runs import load_run

        loaded = load_run(run_dir)
        flops = loaded.model.flops_per_token(cfg["model"]["context"])
        entry.update(steps=last["step"], tokens_per_second=last["tokens_per_second"], flops_per_token=flops,
                     mfu=last["tokens_per_second"] * flops / peak, params=loaded.model.num_params(False))
        ev, _, wall = run_measured(["eval", run_dir, "--data", args.data, "--json", "--max-windows", args.max_windows,
                                    "--mc-samples", "2", "--num-samples", "0"])
        entry["eval"] = json.loads(ev)
        entry["eval_seconds"] = wall
        results["models"][process] = entry
        print(f"{process}: {entry['eval']['bits_per_token']:.4f} bits/char, {entry['tokens_per_second']:.0f} tok/s, "
              f"MFU {entry['mfu']:.2%}", file=sys.stderr)

    from textdiffusion.evaluation import judge_perplexity, unigram_entropy
    from textdiffusion.runs import load_run

    judge = load_run(out / "shakespeare-ar")
    samples = [s for s in results["samples"] if s["process"] not in processes and s["process"] != "data"]
    plan = []
    for process in processes:
        samplers = SAMPLERS.get(process, ("ancestral",))
        steps = (256,) if process == "ar" else tuple(int(n) for n in args.steps.split(","))
        plan += [(process, s, n) for s in samplers for n in steps]
    for process, sampler, steps in plan:
        run_dir = out / f"shakespeare-{process}"
        cmd = ["sample", run_dir, "--num", args.num_samples, "--length", 256, "--steps", steps, "--seed", 0, "--json"]
        if sampler != "ar":
            cmd += ["--sampler", sampler]
        stdout, rss, _ = run_measured(cmd)
        res = json.loads(stdout)
        tokens = [judge.tokenizer.encode(t).tolist() for t in res["texts"]]
        samples.append({"process": process, "sampler": sampler, "steps": steps, "nfe": res["nfe"],
                        "tokens_per_second": res["tokens_per_second"], "sample_peak_rss_bytes": rss,
                        "judge_perplexity": judge_perplexity(judge.model, judge.tokenizer, res["texts"]),
                        "unigram_entropy": unigram_entropy(tokens), "examples": res["texts"][:2]})
        print(f"{sampler} {steps}: judge ppl {samples[-1]['judge_perplexity']:.2f}, "
              f"entropy {samples[-1]['unigram_entropy']:.3f}", file=sys.stderr)
    # reference: real validation text, cut into pieces of the samples' length
    text = Path(args.data).read_text()
    val = text[int(len(text) * 0.9):]
    pieces = [val[i * 256 : (i + 1) * 256] for i in range(args.num_samples)]
    samples.insert(0, {"process": "data", "sampler": "validation text", "steps": 0, "nfe": 0, "tokens_per_second": 0,
                       "sample_peak_rss_bytes": 0, "judge_perplexity": judge_perplexity(judge.model, judge.tokenizer, pieces),
                       "unigram_entropy": unigram_entropy([judge.tokenizer.encode(t).tolist() for t in pieces]),
                       "examples": pieces[:1]})
    results["samples"] = samples
    (out / "shakespeare.json").write_text(json.dumps(results, indent=2))
    print(markdown(results))


def markdown(r: dict) -> str:
    models = r["models"]
    names = list(models)
    ar = models.get("ar")
    gib = 2**30

    def row(label, fmt):
        return f"| {label} | " + " | ".join(fmt(models[n]) for n in names) + " |"

    def bound(m):
        kind = "exact NLL" if m["eval"]["exact"] else "ELBO bound"
        return f"{m['eval']['bits_per_token']:.4f} ± {m['eval']['stderr_bits_per_token']:.4f} ({kind})"

    lines = [
        f"Machine: {r['cpu_model']} ({r['machine']}); peak fp32 matmul measured in the run: "
        f"{r['peak_fp32_matmul_gflops']:.0f} GFLOP/s. Date: {r['date']}. Budget: {r['budget_seconds']:.0f} s of training each.",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        row("parameters", lambda m: f"{m['params'] / 1e6:.2f}M"),
        row("optimiser steps in budget", lambda m: str(m["steps"])),
        row("training tokens/s", lambda m: f"{m['tokens_per_second']:.0f}"
            + (f" ({m['tokens_per_second'] / ar['tokens_per_second']:.3f}× AR)" if ar else "")),
        row("MFU", lambda m: f"{m['mfu']:.1%}"),
        row("peak RSS, training", lambda m: f"{m.get('train_peak_rss_bytes', 0) / gib:.2f} GiB"),
        row("validation bits/char", bound),
        "",
        "| model | sampler | steps | NFE | tokens/s (batch 8) | peak RSS | judge ppl | unigram entropy (bits) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in r["samples"]:
        lines.append(f"| {s['process']} | {s['sampler']} | {s['steps']} | {s['nfe']} | {s['tokens_per_second']:.0f} | "
                     f"{s['sample_peak_rss_bytes'] / gib:.2f} GiB | {s['judge_perplexity']:.2f} | {s['unigram_entropy']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
