"""Benchmark: planning. Masked diffusion against its AR twin on two tasks of the family of Ye et
al. 2024 ("Beyond Autoregression: Discrete Diffusion for Complex Reasoning and Planning": left to
right is the wrong order for a puzzle, and a masked diffusion model that fills the easiest
positions first solves far more of them than an AR model of the same size).

    python bench/planning.py                  # Sudoku: data, both twins, evaluation (about 2.5 h on 2 CPU cores)
    python bench/planning.py --task star      # path-star graphs (about 1.5 h on 2 CPU cores)
    python bench/planning.py --resume         # continue stopped trainings from their checkpoints, then evaluate
    python bench/planning.py --quick          # the whole pipeline in a couple of minutes (a tiny model, 4 steps)

Tasks (--task):
* ``sudoku`` (bench/sudoku.py): seeded 9x9 puzzles with exactly one solution (--givens, default
  30-40 givens), training and held-out sets sharing no solution grid. Each board is 9 lines of 9
  characters, ``.`` for a blank. Scored: puzzles solved (every cell right), and the accuracy on
  the blank cells.
* ``star`` (bench/path_star.py): path-star graphs, a start with --degree arms of --arm nodes, the
  edges listed in a random order, and the path from the start to a goal to write. The one hard
  step is the first one (which arm?); backward from the goal every step is a lookup. Scored: paths
  exactly right, and the accuracy of the first step out of the start (chance: 1 / --degree).

Both twins train on the same instruction-tuning rows (``train --sft``: JSONL of {"prompt",
"response"}; character tokenizer), with the same backbone, steps, batch and learning-rate
schedule: ``--process masked`` and ``--process ar``. The AR twin writes the answer in its natural
order (row by row; start to goal), its best order short of being taught a solver's
(docs/planning.md says why). Data is cached in --out, named by its settings.

Evaluation on the held-out set, greedy (temperature 0): the diffusion model with the confidence,
margin and entropy orders (and, on path-star graphs, left to right: the AR twin's order, as a
control) at --calls network calls, the AR twin with its KV cache (one call per position). Written
to --out: results.md (the table, machine, date), results.json, accuracy.png (accuracy against
network calls), trace.json (one held-out solve by the diffusion model, trace format v1, one
position a call, and the AR twin's in trace-ar.json) and player.html (the two side by side in the
trace player). Progress goes to the screen and to --out/planning.log.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import path_star  # noqa: E402
import sudoku  # noqa: E402
from common import EXE, REPO, Log, cpu_model, train_overrides  # noqa: E402

ORDERS = ("confidence", "margin", "entropy")


def board(cells: str) -> str:
    """A board as both twins read (the puzzle) and write it (the solution): a newline, so that
    the board starts on a line of its own after the chat template's "User: " or "Assistant: ",
    then ``sudoku.board_text``'s 9 lines."""
    return "\n" + sudoku.board_text(cells)


class Sudoku:
    """9x9 Sudoku: a board's text is 90 positions (a newline, 9 rows of 9 cells, a newline
    between rows)."""

    name, item, items, partial = "sudoku", "puzzle", "puzzles", "blank-cell accuracy"
    response = 90
    cells = [1 + r * 10 + c for r in range(9) for c in range(9)]  # a cell's position in a board's text
    samplers = ORDERS
    # sized for 2 CPU cores: about an hour of training per twin (docs/planning.md)
    full = dict(train_puzzles=50_000, test_puzzles=128, layers=4, width=192, heads=6, steps=2200, batch_size=32,
                calls=(90, 45, 23, 12), eval_batch=64)
    quick = dict(train_puzzles=96, test_puzzles=6, layers=1, width=32, heads=2, steps=4, batch_size=8,
                 calls=(90, 12), eval_batch=8)

    def __init__(self, args):
        self.givens = args.givens

    def folder(self, seed: int, train: int, test: int) -> str:
        return f"data-seed{seed}-givens{self.givens[0]}-{self.givens[1]}-train{train}-test{test}"

    def make(self, seed: int, train: int, test: int, workers: int, say) -> tuple[dict, dict]:
        """(split -> [(prompt text, response text)], facts for results.md)."""
        g = self.givens
        say(f"making {train:,} training and {test:,} held-out puzzles ({g[0]}-{g[1]} givens, seed {seed}, "
            f"{workers} processes)")
        splits = sudoku.make_splits(seed, train, test, g, workers,
                                    progress=lambda done, n: done % 5000 or say(f"  {done:,}/{n:,} training puzzles"))
        held = splits["test"]
        meta = {"givens": list(g), "mean_givens_test": sum(81 - p.count(".") for p, _ in held) / len(held),
                "singles_solvable_test": sum(sudoku.singles_solvable(p) for p, _ in held) / len(held)}
        say(f"  {meta['singles_solvable_test']:.0%} of the held-out puzzles are solved by naked and hidden singles "
            f"alone")
        return {k: [(board(p), board(s)) for p, s in v] for k, v in splits.items()}, meta

    def describe(self, d: dict) -> str:
        return (f"{d['train']:,} training puzzles, {d['test']} held-out ({d['givens'][0]}-{d['givens'][1]} givens, "
                f"mean {d['mean_givens_test']:.1f}; {d['singles_solvable_test']:.0%} solvable by singles alone), "
                f"seed {d['seed']}")

    def score(self, tok, pairs: list[tuple[str, str]], rows: list[list[int]]) -> tuple[list[bool], int, int]:
        """(solved per puzzle, blank cells right, blank cells): a puzzle is solved when all 81 cells
        hold the solution's digits (one solution: a valid grid keeping the givens is that one)."""
        solved, right, blanks = [], 0, 0
        for (prompt, response), row in zip(pairs, rows):
            puzzle, want = sudoku.cells_of(prompt[1:]), tok.encode(response).tolist()
            ok = [row[i] == want[i] for i in self.cells]
            solved.append(all(ok))
            for k, good in enumerate(ok):
                if puzzle[k] == ".":
                    blanks += 1
                    right += good
        return solved, right, blanks


class Star:
    """Path-star graphs: the answer is the path's --arm + 1 letters."""

    name, item, items, partial = "star", "graph", "graphs", "first-step accuracy"
    samplers = (*ORDERS, "left-to-right")
    # sized for 2 CPU cores: the pilot trained each twin in about 70 min on one thread beside other work
    full = dict(train_puzzles=50_000, test_puzzles=512, layers=4, width=128, heads=4, steps=3000, batch_size=64,
                calls=None, eval_batch=128)
    quick = dict(train_puzzles=96, test_puzzles=6, layers=1, width=32, heads=2, steps=4, batch_size=8,
                 calls=None, eval_batch=8)

    def __init__(self, args):
        self.degree, self.arm = args.degree, args.arm
        self.response = args.arm + 1

    def default_calls(self) -> tuple[int, ...]:
        return tuple(sorted({self.response, (self.response + 1) // 2, 1}, reverse=True))

    def folder(self, seed: int, train: int, test: int) -> str:
        return f"data-star-seed{seed}-degree{self.degree}-arm{self.arm}-train{train}-test{test}"

    def make(self, seed: int, train: int, test: int, workers: int, say) -> tuple[dict, dict]:
        say(f"making {train:,} training and {test:,} held-out path-star graphs (degree {self.degree}, arm "
            f"{self.arm}, seed {seed})")
        return path_star.make_splits(seed, train, test, self.degree, self.arm), {"degree": self.degree,
                                                                                   "arm": self.arm}

    def describe(self, d: dict) -> str:
        return (f"{d['train']:,} training graphs, {d['test']} held-out (a start with {d['degree']} arms of "
                f"{d['arm']} nodes; chance on the first step {1 / d['degree']:.2f}), seed {d['seed']}")

    def score(self, tok, pairs: list[tuple[str, str]], rows: list[list[int]]) -> tuple[list[bool], int, int]:
        """(path exactly right per graph, first steps right, graphs): in a tree the path is the one
        answer; the first step out of the start is the hard one."""
        solved, first = [], 0
        for (_, response), row in zip(pairs, rows):
            want = tok.encode(response).tolist()
            solved.append(row == want)
            first += row[1] == want[1]
        return solved, first, len(pairs)


TASKS = {"sudoku": Sudoku, "star": Star}


def main() -> None:
    sd, st = Sudoku.full, Star.full
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), default="sudoku", help="the planning task (default sudoku)")
    p.add_argument("--out", default=None, help="folder for data, runs and results (default bench/out/planning for "
                                               "Sudoku, bench/out/planning-star; -quick added with --quick)")
    p.add_argument("--quick", action="store_true", help="a tiny model, data and training: checks the pipeline runs")
    p.add_argument("--resume", action="store_true", help="continue trainings that stopped before --steps")
    p.add_argument("--seed", type=int, default=0, help="the data set's seed (default 0)")
    p.add_argument("--givens", type=sudoku.parse_givens, default=(30, 40),
                   help="sudoku: LO-HI givens per puzzle (default 30-40)")
    p.add_argument("--degree", type=int, default=4, help="star: arms out of the start (default 4)")
    p.add_argument("--arm", type=int, default=4, help="star: nodes on each arm (default 4)")
    p.add_argument("--train-puzzles", type=int, help=f"training puzzles or graphs (default {sd['train_puzzles']:,}; "
                                                     f"star {st['train_puzzles']:,})")
    p.add_argument("--test-puzzles", type=int, help=f"held-out puzzles or graphs (default {sd['test_puzzles']}; "
                                                    f"star {st['test_puzzles']})")
    p.add_argument("--layers", type=int, help=f"transformer layers of both twins (default {sd['layers']}; "
                                              f"star {st['layers']})")
    p.add_argument("--width", type=int, help=f"d_model of both twins (default {sd['width']}; star {st['width']})")
    p.add_argument("--heads", type=int, help=f"attention heads (default {sd['heads']}; star {st['heads']})")
    p.add_argument("--steps", type=int, help=f"optimisation steps of each twin (default {sd['steps']}; "
                                             f"star {st['steps']})")
    p.add_argument("--batch-size", type=int, help=f"training rows per step (default {sd['batch_size']}; "
                                                  f"star {st['batch_size']})")
    p.add_argument("--calls", help="the diffusion samplers' network calls, comma-separated (default 90,45,23,12; "
                                   "star: every position, half of them, 1)")
    p.add_argument("--eval-batch", type=int, help=f"held-out rows per generate call (default {sd['eval_batch']}; "
                                                  f"star {st['eval_batch']})")
    p.add_argument("--workers", type=int, default=0, help="processes making puzzles (default: one per core)")
    args = p.parse_args()
    if args.task == "star":
        try:
            path_star.make_graph(random.Random(0), args.degree, args.arm)
        except ValueError as exc:
            p.error(f"--degree/--arm: {exc}")
    task = TASKS[args.task](args)
    preset = task.quick if args.quick else task.full
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.calls is None:
        args.calls = task.default_calls()
    if isinstance(args.calls, str):
        try:
            args.calls = tuple(int(c) for c in args.calls.split(","))
        except ValueError:
            p.error(f"--calls takes whole numbers separated by commas (e.g. 90,45,23,12); got {args.calls!r}")
    for name in ("train_puzzles", "test_puzzles", "layers", "width", "heads", "steps", "batch_size", "eval_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if any(not 1 <= c <= task.response for c in args.calls):
        p.error(f"--calls must each be in 1..{task.response} (the positions of an answer)")
    if args.width % args.heads or (args.width // args.heads) % 2:
        p.error(f"--width ({args.width}) must be an even multiple of --heads ({args.heads}): RoPE needs an even head size")
    name = "planning" + ("-star" if args.task == "star" else "") + ("-quick" if args.quick else "")
    out = Path(args.out or REPO / "bench" / "out" / name)
    out.mkdir(parents=True, exist_ok=True)
    say = Log(out / "planning.log")
    say(f"bench/planning.py {' '.join(sys.argv[1:])}")
    workers = args.workers or len(os.sched_getaffinity(0))
    data = make_data(task, out, args.seed, args.train_puzzles, args.test_puzzles, workers, say)
    runs = {twin: train_twin(twin, out, data, args, say) for twin in ("masked", "ar")}
    results = evaluate(task, runs, data, args, say)
    results["training"] = {twin: training_summary(run) for twin, run in runs.items()}
    results["data"] = json.loads((data / "meta.json").read_text())
    results["settings"] = {k: getattr(args, k) for k in ("task", "layers", "width", "heads", "steps", "batch_size",
                                                         "seed")}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(task, results) + "\n")
    plot(task, results, out / "accuracy.png")
    write_traces(task, runs, data, results, out, say)
    print(markdown(task, results))
    say(f"wrote {out / 'results.md'}, {out / 'accuracy.png'}, {out / 'player.html'}")


# -- data -----------------------------------------------------------------------------------------

def make_data(task, out: Path, seed: int, train: int, test: int, workers: int, say) -> Path:
    """The JSONL files of both splits, made once per setting (a folder named by it) and reused."""
    folder = out / task.folder(seed, train, test)
    if (folder / "meta.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    splits, facts = task.make(seed, train, test, workers, say)
    for split, pairs in splits.items():
        lines = [json.dumps({"prompt": prompt, "response": response}) for prompt, response in pairs]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    meta = {"task": task.name, "seed": seed, "train": len(splits["train"]), "test": len(splits["test"]), **facts,
            "seconds": round(time.perf_counter() - start, 1)}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")  # last: its presence means done
    say(f"  data made in {meta['seconds']:.0f} s")
    return folder


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """The (prompt, response) texts of a split's JSONL."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(row["prompt"], row["response"]) for row in rows]


# -- training -------------------------------------------------------------------------------------

def context_length(data: Path) -> int:
    """Tokens a training row feeds the model: the templated prompt, the answer, end-of-text (every
    row of a task has the same length)."""
    from textdiffusion.data import chat_prompt

    prompt, response = read_pairs(data / "test.jsonl")[0]
    return len(chat_prompt(prompt)) + len(response) + 1


def train_twin(twin: str, out: Path, data: Path, args, say) -> Path:
    """Train (or continue, or reuse) the ``twin`` run in ``out``; returns its folder."""
    from textdiffusion.config import Config
    from textdiffusion.runs.checkpoint import read_state

    run = out / twin
    model = {"n_layer": args.layers, "d_model": args.width, "n_head": args.heads, "context": context_length(data)}
    if (run / "config.json").exists():
        cfg = Config.load(run / "config.json")
        saved = {**{k: getattr(cfg.model, k) for k in model}, "data": cfg.data.path, "process": cfg.process.name}
        wanted = {**model, "data": str((data / "train.jsonl").resolve()), "process": twin}
        diff = [f"{k}={saved[k]} (asked {wanted[k]})" for k in wanted if saved[k] != wanted[k]]
        if diff:
            raise say.fail(f"{run} holds a run of other settings: {', '.join(diff)}; give another --out or "
                           f"remove {run}")
    step = read_state(run / "checkpoint")["step"] if (run / "checkpoint" / "state.json").exists() else None
    if step is not None and step >= args.steps:
        say(f"{twin}: trained to step {step} already")
        return run
    quiet = [] if sys.stderr.isatty() else ["--quiet"]
    sets = recipe(args.steps, args.batch_size)
    if (run / "config.json").exists():
        if not args.resume:
            where = f"trained to step {step}" if step is not None else "stopped before its first checkpoint"
            raise say.fail(f"{run} holds a run {where}, short of --steps {args.steps}: rerun with --resume to "
                           f"continue it")
        cmd = ["train", "--out", run, "--resume", *quiet, "--set", f"train.max_steps={args.steps}"]
        say(f"{twin}: continuing from step {step or 0} to {args.steps}")
    else:
        cmd = ["train", "--sft", "--data", data / "train.jsonl", "--out", run, "--process", twin, *quiet,
               "--set", "data.tokenizer=char", "--set", "data.val_fraction=0.01",
               *[x for k, v in model.items() for x in ("--set", f"model.{k}={v}")], *sets]
        say(f"{twin}: training {args.steps} steps of batch {args.batch_size}")
    say("  textdiffusion " + " ".join(map(str, cmd)))
    start = time.perf_counter()
    done = subprocess.run([str(EXE), *map(str, cmd)])
    if done.returncode:
        raise say.fail(f"{twin}: textdiffusion train stopped (exit {done.returncode}); rerun with --resume to "
                       f"continue from its last checkpoint")
    summary = training_summary(run)
    say(f"{twin}: step {summary['step']}, loss {summary['loss']:.4f}, val {summary['val_loss']:.4f} nats/token, "
        f"{summary['tokens_per_second']:,.0f} tokens/s, {time.perf_counter() - start:.0f} s this time")
    return run


def recipe(steps: int, batch_size: int) -> list[str]:
    """--set flags of both twins' training: the benchmarks' recipe (common.train_overrides: its
    learning rate, warm-up and schedule) run for a number of steps, not seconds, validated ten
    times on 4 batches."""
    mine = {"train.eval_every": max(steps // 10, 1), "train.eval_batches": 4, "train.log_every": 10}
    sets = train_overrides(0, steps, batch_size)  # (max_seconds 0: no time budget)
    pairs = [sets[i + 1] for i in range(0, len(sets), 2) if sets[i + 1].split("=")[0] not in mine]
    return [x for kv in [*pairs, *(f"{k}={v}" for k, v in mine.items())] for x in ("--set", kv)]


def training_summary(run: Path) -> dict:
    """The last logged step and validation of a run (its metrics.jsonl)."""
    last, val = {}, {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "val_loss" in rec:
            val = rec
        elif "loss" in rec:
            last = rec
    return {"step": last.get("step"), "loss": last.get("loss"), "val_loss": val.get("val_loss"),
            "tokens_per_second": last.get("tokens_per_second"), "train_seconds": last.get("seconds")}


# -- evaluation -----------------------------------------------------------------------------------

def canvas_for(run, prompts: list[str], response: int):
    """The rows to generate, as each twin was trained on them (data.rows.sft_rows): the AR twin
    reads [end-of-text, templated prompt] and writes the answer; the masked model reads the
    templated prompt, the answer's ``response`` free positions and the end-of-text after them,
    fixed (the diffusion loss drops a row's first token, so it never saw the leading end-of-text)."""
    import torch

    from textdiffusion.data import chat_prompt
    from textdiffusion.sampling.base import HOLE, Canvas

    tok = run.tokenizer
    ids = [tok.encode_exact(chat_prompt(p), "the prompt").tolist() for p in prompts]
    if run.process.name == "ar":
        rows = [[tok.eot_id, *x, *[HOLE] * response] for x in ids]
        free_from, free_to = len(rows[0]) - response, len(rows[0])
    else:
        rows = [[*x, *[HOLE] * response, tok.eot_id] for x in ids]
        free_from, free_to = len(ids[0]), len(ids[0]) + response
    tokens = torch.tensor(rows)
    fixed = torch.ones_like(tokens, dtype=torch.bool)
    fixed[:, free_from:free_to] = False
    return Canvas(tokens, fixed), free_from


def solve(run, sampler: str, calls: int | None, prompts: list[str], response: int, on_step=None):
    """Greedy answers to ``prompts``: (the answers' token rows, network calls, the generation)."""
    import torch

    from textdiffusion.sampling import build_sampler
    from textdiffusion.sampling.base import Plan, resolve_canvas

    canvas, start = canvas_for(run, prompts, response)
    smp = build_sampler(sampler, run.process, run.tokenizer, temperature=0.0)
    plan = Plan(smp, run.model, run.process, resolve_canvas(run.model, None, len(prompts), None, canvas),
                calls, torch.Generator().manual_seed(0))
    out = plan.generate(on_step)
    return out.tokens[:, start : start + response].tolist(), out.nfe, out


def evaluate(task, runs: dict[str, Path], data: Path, args, say) -> dict:
    import torch

    from textdiffusion.runs import load_run

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    pairs = read_pairs(data / "test.jsonl")
    loaded = {twin: load_run(run) for twin, run in runs.items()}
    plan = [("ar", "ar", None)] + [("masked", s, c) for s in task.samplers for c in args.calls]
    rows = []
    for twin, sampler, calls in plan:
        run = loaded[twin]
        solved, right, total, nfe, seconds = [], 0, 0, 0, 0.0
        for i in range(0, len(pairs), args.eval_batch):
            chunk = pairs[i : i + args.eval_batch]
            t0 = time.perf_counter()
            tokens, nfe, _ = solve(run, sampler, calls, [p for p, _ in chunk], task.response)
            seconds += time.perf_counter() - t0
            s, r, t = task.score(run.tokenizer, chunk, tokens)
            solved += s
            right, total = right + r, total + t
        n = len(solved)
        rate = sum(solved) / n
        row = {"model": twin, "sampler": sampler, "calls": nfe, "solved": rate,
               "solved_se": math.sqrt(rate * (1 - rate) / n), "cell_accuracy": right / total, "puzzles": n,
               "seconds_per_puzzle": seconds / n, "solved_each": [int(x) for x in solved]}
        rows.append(row)
        say(f"{twin} {sampler} {nfe} calls: solved {sum(solved)}/{n} ({rate:.3f}), {task.partial} "
            f"{right / total:.3f}")
    return {"date": datetime.date.today().isoformat(), "cpu_model": cpu_model(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
            "params": {twin: sum(p.numel() for p in run.model.parameters()) for twin, run in loaded.items()},
            "rows": rows}


# -- the trace of one solve -------------------------------------------------------------------------

def write_traces(task, runs: dict[str, Path], data: Path, results: dict, out: Path, say) -> None:
    """One held-out example solved by the masked model (confidence order, one position per call;
    the first one it solves, else the first) and by the AR twin: trace.json, trace-ar.json and
    player.html (the two side by side)."""
    from textdiffusion.runs import load_run
    from textdiffusion.sampling.trace import TraceRecorder
    from textdiffusion.viz.player import player_html
    from textdiffusion.viz.story import story

    pairs = read_pairs(data / "test.jsonl")
    best = next((r for r in results["rows"] if r["sampler"] == "confidence" and r["calls"] == task.response), None)
    k = best["solved_each"].index(1) if best and 1 in best["solved_each"] else 0
    prompt, _ = pairs[k]
    stories = {}
    for twin, sampler, calls in (("masked", "confidence", task.response), ("ar", "ar", None)):
        run = load_run(runs[twin])
        recorder = TraceRecorder(run.process.mask_id, rows=1)
        tokens, _, gen = solve(run, sampler, calls, [prompt], task.response, recorder)
        answer = run.tokenizer.decode(tokens[0])
        fixed = gen.fixed[0].nonzero().flatten().tolist() if gen.fixed is not None else None
        trace = recorder.to_dict(texts=[answer], sampler=sampler, process=run.process.name,
                                 prompt_length=gen.prompt_length, model=str(runs[twin]), steps=calls, seed=0,
                                 fixed=fixed)
        path = out / ("trace.json" if twin == "masked" else "trace-ar.json")
        path.write_text(json.dumps(trace) + "\n")
        stories[twin] = story(trace, run.tokenizer, title=f"{twin}: {sampler}")
    title = {"sudoku": f"held-out Sudoku {k}", "star": f"held-out path-star graph {k}"}[task.name]
    (out / "player.html").write_text(player_html(stories["masked"], stories["ar"],
                                                 title=f"{title}: masked diffusion (confidence) and the AR twin"),
                                     encoding="utf-8")
    say(f"trace of held-out {task.item} {k}: {out / 'trace.json'} (and trace-ar.json, player.html)")


# -- output ---------------------------------------------------------------------------------------

def markdown(task, r: dict) -> str:
    s, tr = r["settings"], r["training"]
    params = r["params"]["masked"]
    lines = [f"Machine: {r['cpu_model']} ({r['machine']}). Date: {r['date']}.",
             f"Data: {task.describe(r['data'])}. Both twins: {s['layers']} x {s['width']}, {s['heads']} heads, "
             f"{params / 1e6:.2f}M parameters, {s['steps']} steps of batch {s['batch_size']}.",
             "Training: " + "; ".join(
                 f"{twin} step {t['step']}, val {t['val_loss']:.4f} nats/token, {t['tokens_per_second']:,.0f} tokens/s"
                 for twin, t in tr.items() if t["val_loss"] is not None) + ".",
             f"Greedy decoding; solved = the whole answer right; {task.partial}.", "",
             f"| model | sampler | network calls | solved | {task.partial} | s / {task.item} |",
             "|---|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['model']} | {x['sampler']} | {x['calls']} | {x['solved']:.3f} ± {x['solved_se']:.3f} | "
                     f"{x['cell_accuracy']:.3f} | {x['seconds_per_puzzle']:.3f} |")
    return "\n".join(lines)


def plot(task, r: dict, path: Path) -> None:
    """Solved fraction and the partial score against network calls, a line per diffusion order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((axes[0], "solved", f"held-out {task.items} solved"),
                           (axes[1], "cell_accuracy", task.partial)):
        for sampler in task.samplers:
            pts = sorted((x["calls"], x[key]) for x in r["rows"] if x["sampler"] == sampler)
            ax.plot([c for c, _ in pts], [v for _, v in pts], marker="o", label=f"masked diffusion, {sampler}")
        for x in r["rows"]:
            if x["model"] == "ar":
                ax.scatter([x["calls"]], [x[key]], marker="*", s=220, color="black", zorder=5,
                           label="AR twin (left to right)")
        ax.set_xscale("log")
        ticks = sorted({x["calls"] for x in r["rows"]})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel(f"network calls per {task.item} (log)")
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    name = {"sudoku": "Sudoku", "star": "Path-star graphs"}[task.name]
    fig.suptitle(f"{name}, {r['data']['test']} held-out {task.items}: masked diffusion vs its AR twin "
                 f"({r['cpu_model']}, {r['date']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit("bench/planning.py: stopped; rerun with --resume to continue the trainings from their "
                         "last checkpoints") from None
