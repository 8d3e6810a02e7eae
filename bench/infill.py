"""Benchmark: code infilling on held-out standard-library files, diffusion vs the AR fill-in-the-middle twin.

    python bench/infill.py --budget 900          # 4 x 256 models (configs/code-bpe.toml otherwise)
    python bench/infill.py --masked bench/out/ship-code --ar bench/out/ship-code-ar --name infill-shipped
                                                 # already trained runs (the shipped code model, MODEL_CARD.md)

Two models on the same backbone, data (the stdlib train split, BPE), and wall-clock budget: a
masked diffusion model and the AR twin trained with fill-in-the-middle (``--set
data.fim_rate=0.5``: half the windows rearranged prefix-suffix-middle). Tasks: function bodies
of the stdlib **test split** (files never seen in training; at most 6 per file) with 4-48 body tokens; each task
shows the model up to ``--prefix-tokens`` of code before the body and ``--suffix-tokens`` after
it, and asks for exactly the body's number of tokens (both models get the true length).
A second task set, ``line``, holes one line of a function body (a one-line statement, its text
after the indentation, 3-24 tokens; the middle such line of each function), the single-line infilling of the code
benchmarks, which small models can get right where whole bodies are out of reach. A third,
``span``, holes a random run of 2-8 tokens inside a function body (the random-span infilling of
Bavarian et al. 2022, at token level: the hole sits on the body's own token boundaries; the span
is drawn from a seed made of the file and function names, so the set is the same every run).
With ``--text FILE`` (e.g. the Shakespeare corpus of the English model), the task set ``text``
holes random 2-8 token spans in passages of that file's validation split (the project's own
split: the last 5 %), for a model trained on it; there is no parse check, and the AR row needs a
twin trained with fill-in-the-middle.
Reported per task set: exact match of the fill, edit similarity (difflib ratio of fill and
truth, 1 = identical), ``ast.parse`` success of the whole file with the hole filled, seconds per
task; the diffusion model with several samplers and step budgets.
Writes ``bench/out/infill.json`` (or ``--name``.json) and prints the table.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import difflib
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


def _context(tokenizer, text: str, start: int, end: int, prefix_tokens: int, suffix_tokens: int) -> tuple[str, str]:
    """The code before ``start`` and after ``end``, cut to the token budgets."""
    prefix = text[max(0, start - 4000) : start]
    while len(tokenizer.encode(prefix)) > prefix_tokens:
        prefix = prefix[len(prefix) // 8 :]
    suffix = text[end : end + 2000]
    while len(tokenizer.encode(suffix)) > suffix_tokens:
        suffix = suffix[: len(suffix) * 7 // 8]
    return prefix, suffix


def _middle_line(text: str, offsets: list[int], node, tokenizer) -> tuple[int, int] | None:
    """(start, end) of the middle one-line statement of ``node``'s body (its text after the
    indentation, 3-24 tokens; not a docstring or a nested function's line), or None."""
    spans = []
    for stmt in ast.walk(node):
        if stmt is node or not isinstance(stmt, ast.stmt) or stmt.lineno != stmt.end_lineno:
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            continue  # a docstring
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        line = text[offsets[stmt.lineno - 1] : offsets[stmt.lineno]]
        content = line.strip()
        if content.startswith("#") or content.endswith(":") or ";" in content:
            continue  # a comment, or a compound statement's header
        if 3 <= len(tokenizer.encode(content)) <= 24:
            start = offsets[stmt.lineno - 1] + len(line) - len(line.lstrip())
            spans.append((start, start + len(content)))
    spans = sorted(set(spans))
    return spans[len(spans) // 2] if spans else None


def _random_span(text: str, start: int, end: int, tokenizer, seed: str) -> tuple[int, int] | None:
    """(start, end) of a random run of 2-8 of the tokens of ``text[start:end]`` (a function body),
    on its token boundaries, not splitting a word or name, not only whitespace; or None."""
    import random
    import zlib

    ids = tokenizer.encode(text[start:end]).tolist()
    rng = random.Random(zlib.crc32(seed.encode()))
    k = rng.randint(2, 8)
    if len(ids) < k + 2:
        return None

    def word(c: str) -> bool:
        return c.isalnum() or c == "_"

    for _ in range(16):
        a = rng.randint(1, len(ids) - k - 1)  # not the body's first or last token
        head, hole = tokenizer.decode(ids[:a]), tokenizer.decode(ids[a : a + k])
        i, j = start + len(head), start + len(head) + len(hole)
        if not hole.strip() or not text[start:end].startswith(head + hole):
            continue
        if (word(text[i - 1]) and word(text[i])) or (word(text[j - 1]) and word(text[j])):
            continue  # the hole would cut a word in two
        return i, j
    return None


def tasks(tokenizer, limit: int, prefix_tokens: int, suffix_tokens: int, kind: str = "body",
          per_file: int = 6) -> list[dict]:
    """Holes in functions of stdlib test-split files, with the code around them: whole bodies
    of 4-48 tokens (``kind="body"``), one line of 3-24 tokens (``kind="line"``) or a random run
    of 2-8 tokens in a body (``kind="span"``); at most
    ``per_file`` from one file, so that the set spans many modules."""
    from textdiffusion.data import read_documents, split_of

    out = []
    for doc in read_documents("stdlib"):
        if split_of(doc.name, 0.05, test=True) != "test":
            continue
        try:
            tree = ast.parse(doc.text)
        except SyntaxError:
            continue
        taken = 0
        lines = doc.text.splitlines(keepends=True)
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line))
        for node in ast.walk(tree):
            if taken >= per_file:
                break
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.body[0].lineno == node.lineno:
                continue
            if kind == "line":
                span = _middle_line(doc.text, offsets, node, tokenizer)
                if span is None:
                    continue
                start, end = span
            else:
                start = offsets[node.body[0].lineno - 1]  # the body from the start of its first line
                end = offsets[node.end_lineno]
                if kind == "span":
                    span = _random_span(doc.text, start, end, tokenizer, f"{doc.name}:{node.name}:{node.lineno}")
                    if span is None:
                        continue
                    start, end = span
            body = doc.text[start:end]
            n = len(tokenizer.encode(body))
            if not {"line": 3 <= n <= 24, "span": 1 <= n <= 8, "body": 4 <= n <= 48}[kind]:
                continue
            prefix, suffix = _context(tokenizer, doc.text, start, end, prefix_tokens, suffix_tokens)
            out.append({"file": doc.name, "function": node.name, "prefix": prefix, "body": body, "suffix": suffix,
                        "tokens": n, "start": start, "end": end, "source": doc.text})
            taken += 1
            if len(out) >= limit:
                return out
    return out


def text_tasks(tokenizer, path: str, limit: int, prefix_tokens: int, suffix_tokens: int) -> list[dict]:
    """Random 2-8 token spans in ``limit`` passages (about 6 lines each) spread evenly over the
    validation split of the text file ``path``."""
    from textdiffusion.config import DataConfig
    from textdiffusion.data import text_splits

    text = "".join(text_splits(DataConfig(path=path))["val"])
    offsets = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
    out = []
    stride = max(1, (len(offsets) - 8) // max(limit, 1))
    for n in range(0, len(offsets) - 8, stride):
        a, b = offsets[n], offsets[n + 6]
        span = _random_span(text, a, b, tokenizer, f"{path}:{n}")
        if span is None:
            continue
        start, end = span
        prefix, suffix = _context(tokenizer, text, start, end, prefix_tokens, suffix_tokens)
        out.append({"file": Path(path).name, "function": f"line {n + 1}", "prefix": prefix, "body": text[start:end],
                    "suffix": suffix, "tokens": len(tokenizer.encode(text[start:end])), "start": start, "end": end,
                    "source": None})
        if len(out) >= limit:
            break
    return out


def score(task: dict, fill: str) -> tuple[bool, float, bool | None]:
    """(exact match, edit similarity, the file parses with the hole filled: None for text)."""
    exact = fill.strip() == task["body"].strip()
    similarity = difflib.SequenceMatcher(None, fill.strip(), task["body"].strip()).ratio()
    if task["source"] is None:
        return exact, similarity, None
    try:
        ast.parse(task["source"][: task["start"]] + fill + task["source"][task["end"] :])
        parses = True
    except (SyntaxError, ValueError):
        parses = False
    return exact, similarity, parses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "bench" / "out"))
    p.add_argument("--budget", type=float, default=900, help="training seconds per model (default 900)")
    p.add_argument("--max-steps", type=int, default=2000)
    p.add_argument("--tasks", type=int, default=100)
    p.add_argument("--per-file", type=int, default=6, help="at most this many holes from one file (default 6)")
    p.add_argument("--prefix-tokens", type=int, default=128)
    p.add_argument("--suffix-tokens", type=int, default=64)
    p.add_argument("--layers", type=int, default=4, help="transformer layers of both models (default 4)")
    p.add_argument("--width", type=int, default=256, help="d_model of both models (default 256)")
    p.add_argument("--masked", help="a trained masked run to use instead of training one")
    p.add_argument("--ar", help="a trained AR fill-in-the-middle run to use instead of training one "
                                "('none': no AR row, e.g. to compare diffusion samplers alone)")
    p.add_argument("--kinds", nargs="+", choices=("body", "line", "span"), default=["body", "line", "span"],
                   help="task sets: whole function bodies, single lines, random 2-8 token spans (default all)")
    p.add_argument("--text", help="a text file: hole random spans of its validation split instead (task set 'text'; "
                   "give --masked, and --ar only for a FIM twin)")
    p.add_argument("--samplers", nargs="+", choices=("ar", "ancestral", "confidence", "semi-ar"),
                   default=["ar", "ancestral", "confidence", "semi-ar"], help="rows to run (default all)")
    p.add_argument("--name", default="infill", help="output file name in --out, without .json (default infill)")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="print the paired differences of two result files (same options) and exit")
    args = p.parse_args()
    if args.compare:
        print(compare(*args.compare))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the cores it may use (taskset)
    train = [*train_overrides(args.budget, args.max_steps, 16), "--set", f"model.n_layer={args.layers}",
             "--set", f"model.d_model={args.width}", "--set", "model.n_head=4"]
    runs = {"masked": Path(args.masked or out / "infill-masked"), "ar-fim": Path(args.ar or out / "infill-ar-fim")}
    if args.ar == "none":
        del runs["ar-fim"]
    if args.text:
        if not args.masked:
            p.error("--text scores an already trained run: give --masked RUN (and --ar for a FIM twin)")
        if not args.ar:
            runs.pop("ar-fim", None)
        args.kinds = ["text"]
    if not (runs["masked"] / "checkpoint").exists():
        run_measured(["train", "--data", "stdlib", "--out", runs["masked"], "--quiet", *CODE, *train])
    if "ar-fim" in runs and not (runs["ar-fim"] / "checkpoint").exists():
        run_measured(["train", "--data", "stdlib", "--out", runs["ar-fim"], "--process", "ar", "--quiet", *CODE, *train,
                      "--set", "data.fim_rate=0.5"])

    from textdiffusion.runs import load_run

    loaded = {k: load_run(v) for k, v in runs.items()}
    configs = [("ar-fim", "ar", None), ("masked", "ancestral", 1.0), ("masked", "confidence", 1.0),
               ("masked", "confidence", 0.5), ("masked", "semi-ar", 1.0)]
    configs = [c for c in configs if c[0] in loaded and c[1] in args.samplers]
    rows, counts, tok = [], {}, loaded["masked"].tokenizer
    for kind in args.kinds:
        task_list = (text_tasks(tok, args.text, args.tasks, args.prefix_tokens, args.suffix_tokens) if kind == "text"
                     else tasks(tok, args.tasks, args.prefix_tokens, args.suffix_tokens, kind, args.per_file))
        counts[kind] = {"tasks": len(task_list),
                        "mean_hole_tokens": sum(t["tokens"] for t in task_list) / max(len(task_list), 1)}
        for run_name, sampler, steps_per_token in configs:
            rows.append(run_config(loaded[run_name], run_name, sampler, steps_per_token, kind, task_list))
    results = {"date": datetime.date.today().isoformat(), "cpu_model": cpu_model(),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
               "python": platform.python_version(), "runs": {k: str(v) for k, v in runs.items()},
               "budget_seconds": None if args.masked else args.budget, "task_sets": counts, "rows": rows}
    (out / f"{args.name}.json").write_text(json.dumps(results, indent=2))
    print(markdown(results))


def run_config(run, run_name: str, sampler: str, steps_per_token: float | None, kind: str, task_list: list) -> dict:
    """One model and sampler over one task set (greedy: temperature 0)."""
    from textdiffusion.control import Hole, Template, infill

    exact = parses = 0
    similarity = seconds = 0.0
    examples, per_task = [], []
    for task in task_list:
        steps = max(1, round(task["tokens"] * (steps_per_token or 1)))
        opts = {"block_length": 8} if sampler == "semi-ar" else {}
        t0 = time.perf_counter()
        res = infill(run, Template([task["prefix"], Hole(task["tokens"], task["tokens"]), task["suffix"]]),
                     steps=steps, sampler=sampler, seed=0, temperature=0.0, **opts)
        seconds += time.perf_counter() - t0
        e, sim, ok = score(task, res.fills[0][0])
        exact += e
        similarity += sim
        parses += bool(ok)
        per_task.append([int(e), round(sim, 4), None if ok is None else int(ok)])
        if len(examples) < 2:
            examples.append({"function": task["function"], "truth": task["body"], "fill": res.fills[0][0]})
    n = max(len(task_list), 1)
    row = {"tasks": kind, "model": run_name, "sampler": sampler, "steps_per_token": steps_per_token,
           "exact_match": exact / n, "edit_similarity": similarity / n, "parses": None if kind == "text" else parses / n,
           "seconds_per_task": seconds / n, "examples": examples,
           "per_task": per_task}  # [exact, similarity, parses] of each task, in order: paired comparisons
    print(f"{kind} {run_name} {sampler} {steps_per_token}: exact {row['exact_match']:.3f}, similarity "
          f"{row['edit_similarity']:.3f}, parses {row['parses']}", file=sys.stderr)
    return row


def compare(a_path: str, b_path: str) -> str:
    """Paired differences (A - B, mean ± standard error over the same holes) of two result files
    made with the same task options, row by row (rows of the same task set, model and sampler)."""
    a, b = (json.loads(Path(x).read_text()) for x in (a_path, b_path))
    key = lambda x: (x["tasks"], x["model"], x["sampler"], x["steps_per_token"])  # noqa: E731
    rows_b = {key(x): x for x in b["rows"]}
    lines = [f"A = {a['runs']['masked']}, B = {b['runs']['masked']}", "",
             "| holes | model | sampler | steps / token | tasks | exact A - B | similarity A - B | parses A - B |",
             "|---|---|---|---|---|---|---|---|"]
    for x in a["rows"]:
        y = rows_b.get(key(x))
        if y is None or not x.get("per_task") or len(y.get("per_task", [])) != len(x["per_task"]):
            continue  # not in both, or made before per-task scores were kept
        cells = []
        for i in range(3):
            d = [p[i] - q[i] for p, q in zip(x["per_task"], y["per_task"]) if p[i] is not None]
            if not d:
                cells.append("-")
                continue
            mean = sum(d) / len(d)
            se = (sum((v - mean) ** 2 for v in d) / max(len(d) - 1, 1) / len(d)) ** 0.5
            cells.append(f"{mean:+.3f} ± {se:.3f}")
        spt = "-" if x["model"] == "ar-fim" else f"{x['steps_per_token']:g}"
        lines.append(f"| {x['tasks']} | {x['model']} | {x['sampler']} | {spt} | {len(x['per_task'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(r: dict) -> str:
    sets = "; ".join(f"{k}: {v['tasks']} holes of {v['mean_hole_tokens']:.1f} tokens on average"
                     for k, v in r["task_sets"].items())
    lines = [f"Machine: {r['cpu_model']} ({r['machine']}), Python {r['python']}. Date: {r['date']}. "
             f"Held-out holes ({sets}); greedy decoding.", "",
             "| holes | model | sampler | steps / token | exact match | edit similarity | ast.parse ok | s / task |",
             "|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        spt = "-" if x["model"] == "ar-fim" else f"{x['steps_per_token']:g}"
        parses = "-" if x["parses"] is None else f"{x['parses']:.3f}"
        lines.append(f"| {x['tasks']} | {x['model']} | {x['sampler']} | {spt} | {x['exact_match']:.3f} | "
                     f"{x['edit_similarity']:.3f} | {parses} | {x['seconds_per_task']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
