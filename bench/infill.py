"""Benchmark: code infilling on held-out standard-library files, diffusion vs the AR fill-in-the-middle twin.

    python bench/infill.py --budget 900          # 4 x 256 models (configs/code-bpe.toml otherwise)
    python bench/infill.py --masked bench/out/ship-code --ar bench/out/ship-code-ar --name infill-shipped
                                                 # already trained runs (the shipped code model, MODEL_CARD.md)

Two models on the same backbone, data (the stdlib train split, BPE), and wall-clock budget: a
masked diffusion model and the AR twin trained with fill-in-the-middle (``--set
data.fim_rate=0.5``: half the windows rearranged prefix-suffix-middle). Tasks: function bodies
of the stdlib **test split** (files never seen in training) with 4-48 body tokens; each task
shows the model up to ``--prefix-tokens`` of code before the body and ``--suffix-tokens`` after
it, and asks for exactly the body's number of tokens (both models get the true length).
Reported: exact match of the infilled body, ``ast.parse`` success of the whole file with the
body replaced, seconds per task; the diffusion model with several samplers and step budgets.
Writes ``bench/out/infill.json`` (or ``--name``.json) and prints the table.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, cpu_model, run_measured, train_overrides  # noqa: E402

CODE = ["--config", str(REPO / "configs" / "code-bpe.toml")]


def tasks(tokenizer, limit: int, prefix_tokens: int, suffix_tokens: int) -> list[dict]:
    """Function bodies of stdlib test-split files, with the code around them."""
    from textdiffusion.data import read_documents, split_of

    out = []
    for doc in read_documents("stdlib"):
        if split_of(doc.name, 0.05, test=True) != "test":
            continue
        try:
            tree = ast.parse(doc.text)
        except SyntaxError:
            continue
        lines = doc.text.splitlines(keepends=True)
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.body[0].lineno == node.lineno:
                continue
            start = offsets[node.body[0].lineno - 1]  # the body from the start of its first line
            end = offsets[node.end_lineno]
            body = doc.text[start:end]
            n = len(tokenizer.encode(body))
            if not 4 <= n <= 48:
                continue
            prefix = doc.text[max(0, start - 4000) : start]
            while len(tokenizer.encode(prefix)) > prefix_tokens:
                prefix = prefix[len(prefix) // 8 :]
            suffix = doc.text[end : end + 2000]
            while len(tokenizer.encode(suffix)) > suffix_tokens:
                suffix = suffix[: len(suffix) * 7 // 8]
            out.append({"file": doc.name, "function": node.name, "prefix": prefix, "body": body, "suffix": suffix,
                        "tokens": n, "start": start, "end": end, "source": doc.text})
            if len(out) >= limit:
                return out
    return out


def score(task: dict, fill: str) -> tuple[bool, bool]:
    exact = fill.strip() == task["body"].strip()
    try:
        ast.parse(task["source"][: task["start"]] + fill + task["source"][task["end"] :])
        parses = True
    except (SyntaxError, ValueError):
        parses = False
    return exact, parses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "bench" / "out"))
    p.add_argument("--budget", type=float, default=900, help="training seconds per model (default 900)")
    p.add_argument("--max-steps", type=int, default=2000)
    p.add_argument("--tasks", type=int, default=100)
    p.add_argument("--prefix-tokens", type=int, default=128)
    p.add_argument("--suffix-tokens", type=int, default=64)
    p.add_argument("--layers", type=int, default=4, help="transformer layers of both models (default 4)")
    p.add_argument("--width", type=int, default=256, help="d_model of both models (default 256)")
    p.add_argument("--masked", help="a trained masked run to use instead of training one")
    p.add_argument("--ar", help="a trained AR fill-in-the-middle run to use instead of training one")
    p.add_argument("--name", default="infill", help="output file name in --out, without .json (default infill)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    train = [*train_overrides(args.budget, args.max_steps, 16), "--set", f"model.n_layer={args.layers}",
             "--set", f"model.d_model={args.width}", "--set", "model.n_head=4"]
    runs = {"masked": Path(args.masked or out / "infill-masked"), "ar-fim": Path(args.ar or out / "infill-ar-fim")}
    if not (runs["masked"] / "checkpoint").exists():
        run_measured(["train", "--data", "stdlib", "--out", runs["masked"], "--quiet", *CODE, *train])
    if not (runs["ar-fim"] / "checkpoint").exists():
        run_measured(["train", "--data", "stdlib", "--out", runs["ar-fim"], "--process", "ar", "--quiet", *CODE, *train,
                      "--set", "data.fim_rate=0.5"])

    from textdiffusion.control import Hole, Template, infill
    from textdiffusion.training.checkpoint import load_run

    loaded = {k: load_run(v) for k, v in runs.items()}
    task_list = tasks(loaded["masked"].tokenizer, args.tasks, args.prefix_tokens, args.suffix_tokens)
    configs = [("ar-fim", "ar", None), ("masked", "ancestral", 1.0), ("masked", "confidence", 1.0),
               ("masked", "confidence", 0.5), ("masked", "semi-ar", 1.0)]
    rows = []
    for run_name, sampler, steps_per_token in configs:
        run = loaded[run_name]
        exact = parses = 0
        seconds = 0.0
        examples = []
        for task in task_list:
            steps = max(1, round(task["tokens"] * (steps_per_token or 1)))
            opts = {"block_length": 8} if sampler == "semi-ar" else {}
            t0 = time.perf_counter()
            res = infill(run, Template([task["prefix"], Hole(task["tokens"], task["tokens"]), task["suffix"]]),
                         steps=steps, sampler=sampler, seed=0, temperature=0.0, **opts)
            seconds += time.perf_counter() - t0
            e, ok = score(task, res.fills[0][0])
            exact += e
            parses += ok
            if len(examples) < 2:
                examples.append({"function": task["function"], "truth": task["body"], "fill": res.fills[0][0]})
        row = {"model": run_name, "sampler": sampler, "steps_per_token": steps_per_token,
               "exact_match": exact / len(task_list), "parses": parses / len(task_list),
               "seconds_per_task": seconds / len(task_list), "examples": examples}
        rows.append(row)
        print(f"{run_name} {sampler} {steps_per_token}: exact {row['exact_match']:.3f}, parses {row['parses']:.3f}",
              file=sys.stderr)
    results = {"date": datetime.date.today().isoformat(), "cpu_model": cpu_model(),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
               "python": platform.python_version(), "runs": {k: str(v) for k, v in runs.items()},
               "budget_seconds": None if args.masked else args.budget, "tasks": len(task_list),
               "mean_body_tokens": sum(t["tokens"] for t in task_list) / max(len(task_list), 1), "rows": rows}
    (out / f"{args.name}.json").write_text(json.dumps(results, indent=2))
    print(markdown(results))


def markdown(r: dict) -> str:
    lines = [f"Machine: {r['cpu_model']} ({r['machine']}), Python {r['python']}. Date: {r['date']}. "
             f"{r['tasks']} held-out functions, {r['mean_body_tokens']:.1f} body tokens on average; greedy decoding.", "",
             "| model | sampler | steps / token | exact match | ast.parse ok | s / task |", "|---|---|---|---|---|---|"]
    for x in r["rows"]:
        spt = "-" if x["model"] == "ar-fim" else f"{x['steps_per_token']:g}"
        lines.append(f"| {x['model']} | {x['sampler']} | {spt} | {x['exact_match']:.3f} | {x['parses']:.3f} | "
                     f"{x['seconds_per_task']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
