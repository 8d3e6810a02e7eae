"""Benchmark: attribute control — classifier-free guidance and classifier guidance vs guidance scale.

    python bench/control.py --budget 600

The attribute is the source of a passage: Shakespeare (``shakespeare_complete_modern.txt``) or
the King James Bible (``kjv.txt``), passages of 60-200 characters with line breaks folded into
spaces, 12,000 of each (label by source; a hash split). Trained through the real CLI, same
backbone and wall-clock budget for the two generative models:

* ``cond``: a class-conditional masked diffusion model (``train --labels``, label dropped 10 % of
  the time), sampled with CFG at scales w, and, through its "no label" half, the unconditional
  model that classifier guidance steers;
* ``judge``: the AR twin on the same passages (no labels), for judge perplexity;
* ``guide``: a classifier of the diffusion run's noisy inputs (``train-classifier``), for
  classifier guidance;
* ``eval``: a separately trained classifier (another seed and depth), applied to clean samples:
  the success rate is the fraction of samples it assigns to the asked label.

For each method and scale: success rate, judge perplexity and unigram entropy of 64 samples
(32 per label, 128 characters, 64 steps). Writes ``bench/out/control.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, cpu_model, run_measured, train_overrides  # noqa: E402

DATA = REPO.parent / "shared" / "data"
LABELS = ("bible", "shakespeare")


def passages(path: Path, kind: str, n: int, seed: int) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if kind == "bible":  # one verse per line; skip the "Genesis 1" headings
        chunks = [line for line in text.splitlines() if not re.fullmatch(r"[\w ]+ \d+", line.strip())]
    else:  # speeches and stanzas: blocks between blank lines
        chunks = re.split(r"\n\s*\n", text)
    chunks = [re.sub(r"\s+", " ", c).strip() for c in chunks]
    chunks = [c for c in chunks if 60 <= len(c) <= 200 and not c.isupper()]
    random.Random(seed).shuffle(chunks)
    return chunks[:n]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "bench" / "out"))
    p.add_argument("--budget", type=float, default=600, help="training seconds per generative model (default 600)")
    p.add_argument("--max-steps", type=int, default=1500)
    p.add_argument("--per-label", type=int, default=12000)
    p.add_argument("--scales", default="0,1,2,4", help="guidance scales (comma list)")
    p.add_argument("--num", type=int, default=32, help="samples per label and scale (default 32)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    data = out / "control-passages.jsonl"
    if not data.exists():
        rows = [{"text": t, "label": "bible"} for t in passages(DATA / "kjv.txt", "bible", args.per_label, 0)]
        rows += [{"text": t, "label": "shakespeare"}
                 for t in passages(DATA / "shakespeare_complete_modern.txt", "shakespeare", args.per_label, 1)]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = ["--set", "model.n_layer=4", "--set", "model.n_head=4", "--set", "model.d_model=256",
             "--set", "model.context=201", "--set", "data.tokenizer=char"]
    train = [*train_overrides(args.budget, args.max_steps, 32), *model]
    runs = {"cond": out / "control-cond", "judge": out / "control-judge"}
    if not (runs["cond"] / "checkpoint").exists():
        run_measured(["train", "--labels", "--data", data, "--out", runs["cond"], "--quiet", *train])
    if not (runs["judge"] / "checkpoint").exists():
        run_measured(["train", "--data", data, "--out", runs["judge"], "--process", "ar", "--quiet", *train])
    classifiers = {"guide": (out / "control-guide", ["--layers", "2", "--seed", "0"]),
                   "eval": (out / "control-eval", ["--layers", "3", "--seed", "1"])}
    for path, extra in classifiers.values():
        if not (path / "classifier.safetensors").exists():
            run_measured(["train-classifier", runs["cond"], "--data", data, "--out", path, "--steps", "400",
                          "--batch-size", "32", "--quiet", *extra])

    from textdiffusion.evaluation import judge_perplexity, unigram_entropy
    from textdiffusion.runs import load_run
    from textdiffusion.training.classifier import classify, load_classifier

    judge, cond = load_run(runs["judge"]), load_run(runs["cond"])
    evaluator = load_classifier(classifiers["eval"][0])
    rows = []
    for method in ("cfg", "classifier"):
        for w in [float(x) for x in args.scales.split(",")]:
            texts, hits = [], 0
            for label in LABELS:
                cmd = ["sample", runs["cond"], "--num", args.num, "--length", 128, "--steps", 64, "--seed", 0, "--json",
                       "--label", label, "--guidance", w]
                if method == "classifier":
                    cmd += ["--classifier", classifiers["guide"][0]]
                res = json.loads(run_measured(cmd)[0])
                probs = classify(cond, evaluator, res["texts"])
                hits += int((probs.argmax(1) == evaluator.label_id(label)).sum())
                texts += res["texts"]
            row = {"method": method, "scale": w, "success": hits / len(texts),
                   "judge_perplexity": judge_perplexity(judge.model, judge.tokenizer, texts),
                   "unigram_entropy": unigram_entropy([judge.tokenizer.encode(t).tolist() for t in texts]),
                   "example": texts[0]}
            rows.append(row)
            print(f"{method} w={w}: success {row['success']:.2f}, judge ppl {row['judge_perplexity']:.2f}", file=sys.stderr)
    info = json.loads((classifiers["eval"][0] / "classifier.json").read_text())
    results = {"date": datetime.date.today().isoformat(), "cpu_model": cpu_model(),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
               "budget_seconds": args.budget, "eval_classifier_accuracy": info["val_accuracy_at_t"], "rows": rows}
    (out / "control.json").write_text(json.dumps(results, indent=2))
    print(markdown(results))


def markdown(r: dict) -> str:
    acc = r["eval_classifier_accuracy"]["0.0"]
    lines = [f"Machine: {r['cpu_model']} ({r['machine']}). Date: {r['date']}. Evaluation classifier accuracy on "
             f"held-out clean passages: {acc:.3f}.", "",
             "| method | scale w | success (eval classifier) | judge ppl | entropy | example |", "|---|---|---|---|---|---|"]
    for x in r["rows"]:
        ex = x["example"][:60].replace("|", "/")
        lines.append(f"| {x['method']} | {x['scale']:g} | {x['success']:.2f} | {x['judge_perplexity']:.2f} | "
                     f"{x['unigram_entropy']:.3f} | {ex} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
