"""Benchmark: the shipped models (MODEL_CARD.md) beside their AR twins.

    python bench/shipped.py     # needs bench/out/ship-{english,english-ar,code,code-ar} (commands in MODEL_CARD.md)

For each model and its twin: the held-out likelihood (``textdiffusion eval --max-windows 0``: every
validation window; the diffusion ELBO bound against the twin's exact NLL, in bits/token and
bits/byte = bits/char on ASCII text), then samples under a grid of sampler settings, 16 samples
of 128 tokens each, unprompted, judged by the AR twin (perplexity; lower reads better to the
twin), with unigram entropy (too low = repetition) and self-BLEU (too high = the samples look
alike). The twin's own samples and real validation text, judged the same way, frame the numbers.
Writes ``bench/out/shipped.json`` and prints the tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, cpu_model, run_measured  # noqa: E402

DATA = {"english": str(REPO.parent / "shared" / "data" / "shakespeare_complete_modern.txt"), "code": "stdlib"}
# (sampler, steps, temperature, top-p)
GRID = [("ancestral", 64, 1.0, 1.0), ("ancestral", 32, 1.0, 1.0), ("ancestral", 32, 0.8, 1.0),
        ("ancestral", 32, 1.0, 0.9), ("ancestral", 32, 0.9, 0.9), ("ancestral", 32, 0.8, 0.9), ("remdm", 32, 1.0, 0.9),
        ("confidence", 32, 1.0, 1.0), ("confidence", 32, 0.8, 1.0), ("semi-ar", 32, 1.0, 1.0),
        ("threshold", 32, 1.0, 1.0)]


def eval_json(args: list) -> dict:
    out, _, seconds = run_measured(["eval", *args, "--json"])
    return {**json.loads(out), "wall_seconds": seconds}


def real_text_perplexity(judge_dir: Path, data: str, num: int, length: int) -> float:
    """Judge perplexity of ``num`` validation windows of ``length`` tokens: what real text scores."""
    import numpy as np

    from textdiffusion.data import load_token_splits
    from textdiffusion.evaluation import judge_perplexity
    from textdiffusion.runs import load_run

    judge = load_run(judge_dir)
    val = np.asarray(load_token_splits(judge.cfg.data, judge.tokenizer, judge_dir / "tokenizer.json")["val"])
    starts = np.linspace(0, len(val) - length - 1, num).astype(int)
    texts = [judge.tokenizer.decode(val[s : s + length].tolist()) for s in starts]
    return judge_perplexity(judge.model, judge.tokenizer, texts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "bench" / "out"))
    p.add_argument("--models", nargs="+", default=["english", "code"])
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--run", action="append", default=[], metavar="NAME=DIR",
                   help="the diffusion run of a model (default bench/out/ship-NAME)")
    p.add_argument("--twin", action="append", default=[], metavar="NAME=DIR",
                   help="its AR twin (default bench/out/ship-NAME-ar)")
    args = p.parse_args()
    try:
        runs, twins = (dict(x.split("=", 1) for x in xs) for xs in (args.run, args.twin))
    except ValueError:
        p.error("--run and --twin take NAME=DIR")
    out = Path(args.out)
    record = {"date": datetime.date.today().isoformat(), "machine": cpu_model(), "cores": os.cpu_count(),
              "python": platform.python_version(), "num": args.num, "length": args.length, "models": {}}
    for name in args.models:
        run, twin = Path(runs.get(name, out / f"ship-{name}")), Path(twins.get(name, out / f"ship-{name}-ar"))
        data = DATA[name]
        rec = {"data": data, "run": str(run), "twin": str(twin)}
        for key, d in (("diffusion", run), ("ar", twin)):
            rec[f"{key}_likelihood"] = eval_json([d, "--data", data, "--max-windows", 0, "--mc-samples", 4,
                                                  "--num-samples", 0])
            lk = rec[f"{key}_likelihood"]
            print(f"{name} {key}: {lk['bits_per_token']:.3f} bits/token, {lk['bits_per_byte']:.3f} bits/byte", flush=True)
        common = ["--data", data, "--max-windows", 1, "--mc-samples", 1, "--num-samples", args.num, "--length",
                  args.length, "--judge", twin, "--seed", 0]
        rows = []
        for sampler, steps, temperature, top_p in GRID:
            r = eval_json([run, *common, "--sampler", sampler, "--steps", steps, "--temperature", temperature,
                           "--top-p", top_p])
            rows.append({"model": "diffusion", "sampler": sampler, "steps": steps, "temperature": temperature,
                         "top_p": top_p,
                         **{k: r[k] for k in ("nfe", "judge_perplexity", "unigram_entropy", "self_bleu", "samples",
                                              "tokens_per_second")}})
            print(f"{name} {sampler} {steps} T={temperature} top-p={top_p}: judge ppl {r['judge_perplexity']:.1f}, entropy "
                  f"{r['unigram_entropy']:.2f}, self-BLEU {r['self_bleu']:.3f}", flush=True)
        r = eval_json([twin, *common])
        rows.append({"model": "ar twin", "sampler": "ar", "steps": r["nfe"], "temperature": 1.0, "top_p": 1.0,
                     **{k: r[k] for k in ("nfe", "judge_perplexity", "unigram_entropy", "self_bleu", "samples",
                                          "tokens_per_second")}})
        rec["samples"] = rows
        rec["real_text_judge_perplexity"] = real_text_perplexity(twin, data, args.num, args.length)
        print(f"{name} AR twin: judge ppl {r['judge_perplexity']:.1f}; real text {rec['real_text_judge_perplexity']:.1f}",
              flush=True)
        record["models"][name] = rec
    out.mkdir(parents=True, exist_ok=True)
    path = out / "shipped.json"
    if path.exists():  # keep the other models' figures (--models runs one at a time)
        record["models"] = {**json.loads(path.read_text())["models"], **record["models"]}
    path.write_text(json.dumps(record, indent=1))
    print(markdown(record))


def markdown(r: dict) -> str:
    lines = []
    for name, rec in r["models"].items():
        d, a = rec["diffusion_likelihood"], rec["ar_likelihood"]
        lines += [f"### {name}", "",
                  f"Held-out ({d['num_tokens']:,} tokens): diffusion {d['bits_per_token']:.3f} ± "
                  f"{d['stderr_bits_per_token']:.3f} bits/token = {d['bits_per_byte']:.3f} bits/char (ELBO bound); "
                  f"AR twin {a['bits_per_token']:.3f} bits/token = {a['bits_per_byte']:.3f} bits/char (exact).", "",
                  f"{r['num']} unprompted samples of {r['length']} tokens; judge = the AR twin; real validation text "
                  f"scores {rec['real_text_judge_perplexity']:.1f}.", "",
                  "| model | sampler | steps | temperature | top-p | judge ppl | unigram entropy | self-BLEU |",
                  "|---|---|---|---|---|---|---|---|"]
        for x in rec["samples"]:
            lines.append(f"| {x['model']} | {x['sampler']} | {x['steps']} | {x['temperature']} | {x.get('top_p', 1.0)} | "
                         f"{x['judge_perplexity']:.1f} | {x['unigram_entropy']:.2f} | {x['self_bleu']:.3f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
