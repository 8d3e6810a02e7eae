"""Benchmark: parallel decoding vs the AR twin's KV-cache decoding, quality against speed.

    python bench/parallel.py --budget 900                      # Tiny Shakespeare (reuses shakespeare.py's runs)
    python bench/parallel.py --corpus stdlib --budget 420      # Python code, smaller budget

Models (same backbone, data and training budget): masked diffusion, block diffusion (BD3-LM,
``--block-size``) and the AR twin; runs already in --out are reused. Every sampler generates
256-token continuations through the real CLI in a subprocess (peak RSS from ``os.wait4``), at
batch 1 (latency: tokens/s, NFE) and batch 16 (throughput, and the quality figures: judge
perplexity under the AR twin and unigram entropy of the 16 samples). Writes
``bench/out/parallel-<corpus>.json``, the frontier plot ``bench/out/parallel-<corpus>.png`` and
prints the Markdown table for BENCHMARKS.md.
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

from common import REPO, cpu_model, run_measured, train_overrides  # noqa: E402

LENGTH = 256
# (run, sampler, extra CLI options, step budgets)
PLAN = [
    ("masked", "ancestral", [], (16, 64, 256)),
    ("masked", "confidence", [], (16, 64, 256)),
    ("masked", "remdm", ["--eta", "0.04"], (64, 256)),
    ("masked", "semi-ar", ["--block-length", "32"], (16, 64, 256)),
    ("masked", "threshold", ["--block-length", "32", "--threshold", "0.9", "--kv-cache", "dual"], (64, 256)),
    ("masked", "threshold", ["--block-length", "32", "--threshold", "0.7", "--kv-cache", "dual"], (64, 256)),
    ("masked", "threshold", ["--block-length", "32", "--threshold", "0.9", "--kv-cache", "prefix"], (256,)),
    ("block", "block", [], (16, 64, 256)),
    ("block", "block", ["--order", "confidence"], (64, 256)),
    ("ar", "ar", [], (LENGTH,)),
]
CORPORA = {
    "shakespeare": dict(data=str(REPO.parent / "shared" / "data" / "tinyshakespeare.txt"),
                        config=REPO / "configs" / "shakespeare-char.toml", prefix="shakespeare", extra=[]),
    "stdlib": dict(data="stdlib", config=REPO / "configs" / "shakespeare-char.toml", prefix="stdlib",
                   extra=["--set", "data.tokenizer=bpe", "--set", "data.vocab_size=2048", "--set", "data.max_docs=400"]),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", choices=tuple(CORPORA), default="shakespeare")
    p.add_argument("--out", default=str(REPO / "bench" / "out"))
    p.add_argument("--budget", type=float, default=900, help="training seconds per model (default 900)")
    p.add_argument("--max-steps", type=int, default=520)
    p.add_argument("--batch-size", type=int, default=16, help="training batch size")
    p.add_argument("--block-size", type=int, default=16, help="block diffusion's block size (default 16)")
    p.add_argument("--quality-batch", type=int, default=16, help="samples per quality measurement (default 16)")
    p.add_argument("--only", default="", help="comma list of samplers to run (default all)")
    args = p.parse_args()
    corpus = CORPORA[args.corpus]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    runs = {}
    for name, process in (("masked", "masked"), ("block", "block"), ("ar", "ar")):
        run_dir = out / f"{corpus['prefix']}-{name}"
        runs[name] = run_dir
        if (run_dir / "checkpoint").exists():
            continue
        cmd = ["train", "--data", corpus["data"], "--out", run_dir, "--config", corpus["config"], "--process", process,
               "--quiet", *train_overrides(args.budget, args.max_steps, args.batch_size), *corpus["extra"]]
        if process == "block":
            cmd += ["--set", f"process.block_size={args.block_size}"]
        print("textdiffusion " + " ".join(map(str, cmd)), file=sys.stderr)
        run_measured(cmd)

    from textdiffusion.evaluation import judge_perplexity, unigram_entropy
    from textdiffusion.runs import load_run

    judge = load_run(runs["ar"])
    rows = []
    only = set(filter(None, args.only.split(",")))
    for run, sampler, options, budgets in PLAN:
        if only and sampler not in only:
            continue
        for steps in budgets:
            row = {"run": run, "sampler": sampler, "options": " ".join(options), "steps": steps}
            for batch in (1, args.quality_batch):
                cmd = ["sample", runs[run], "--num", batch, "--length", LENGTH, "--steps", steps, "--seed", 0,
                       "--json", "--sampler", sampler, *options]
                stdout, rss, _ = run_measured(cmd)
                res = json.loads(stdout)
                key = "b1" if batch == 1 else "bq"
                row[f"{key}_tokens_per_second"] = res["tokens_per_second"]
                row[f"{key}_nfe"] = res["nfe"]
                row[f"{key}_peak_rss_bytes"] = rss
                if batch != 1:
                    texts = res["texts"]
                    row["judge_perplexity"] = judge_perplexity(judge.model, judge.tokenizer, texts)
                    row["unigram_entropy"] = unigram_entropy([judge.tokenizer.encode(t).tolist() for t in texts])
                    row["example"] = texts[0]
            rows.append(row)
            print(f"{run} {sampler} {' '.join(options)} {steps}: b1 {row['b1_tokens_per_second']:.0f} tok/s "
                  f"(NFE {row['b1_nfe']}), b{args.quality_batch} {row['bq_tokens_per_second']:.0f} tok/s, "
                  f"ppl {row['judge_perplexity']:.2f}, H {row['unigram_entropy']:.3f}", file=sys.stderr)
    results = {"date": datetime.date.today().isoformat(), "corpus": args.corpus, "cpu_model": cpu_model(),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
               "device": "cpu", "length": LENGTH, "quality_batch": args.quality_batch, "rows": rows,
               "runs": {k: str(v) for k, v in runs.items()}}
    path = out / f"parallel-{args.corpus}.json"
    if args.only and path.exists():  # merge a partial rerun into the earlier results
        old = json.loads(path.read_text())
        keep = [r for r in old["rows"] if r["sampler"] not in only]
        results["rows"] = keep + rows
    path.write_text(json.dumps(results, indent=2))
    plot(results, out / f"parallel-{args.corpus}.png")
    print(markdown(results))


def plot(r: dict, path: Path) -> None:
    """Quality (judge perplexity, lower is better) against batch-1 tokens/s, one series per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5))
    series: dict[str, list] = {}
    for row in r["rows"]:
        label = "AR twin (KV cache)" if row["sampler"] == "ar" else f"{row['run']}: {row['sampler']} {row['options']}".strip()
        series.setdefault(label, []).append(row)
    for label, rows in series.items():
        rows = sorted(rows, key=lambda x: x["steps"])
        xs, ys = [x["b1_tokens_per_second"] for x in rows], [x["judge_perplexity"] for x in rows]
        if label.startswith("AR"):
            ax.scatter(xs, ys, marker="*", s=220, color="black", zorder=5, label=label)
        else:
            ax.plot(xs, ys, marker="o", label=label)
            for x, y, row in zip(xs, ys, rows):
                ax.annotate(str(row["steps"]), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens/s at batch 1 (log)")
    ax.set_ylabel("judge perplexity under the AR twin (log, lower is better)")
    ax.set_title(f"{r['corpus']}: quality vs speed, {r['length']}-token samples, {r['device']} ({r['date']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: no point hides behind it
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(r: dict) -> str:
    q = r["quality_batch"]
    gib = 2**30
    ar = next((x for x in r["rows"] if x["sampler"] == "ar"), None)
    lines = [f"Machine: {r['cpu_model']} ({r['machine']}), {r['device']}. Date: {r['date']}. "
             f"{r['length']}-token samples; quality from {q} samples (batch {q}).", "",
             f"| model | sampler | options | steps | NFE (b1) | tokens/s b1 | × AR b1 | tokens/s b{q} | × AR b{q} | "
             f"peak RSS b{q} | judge ppl | entropy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        rel1 = f"{x['b1_tokens_per_second'] / ar['b1_tokens_per_second']:.2f}" if ar else "-"
        relq = f"{x['bq_tokens_per_second'] / ar['bq_tokens_per_second']:.2f}" if ar else "-"
        lines.append(f"| {x['run']} | {x['sampler']} | {x['options'] or '-'} | {x['steps']} | {x['b1_nfe']} | "
                     f"{x['b1_tokens_per_second']:.0f} | {rel1} | {x['bq_tokens_per_second']:.0f} | {relq} | "
                     f"{x['bq_peak_rss_bytes'] / gib:.2f} GiB | {x['judge_perplexity']:.2f} | {x['unigram_entropy']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
