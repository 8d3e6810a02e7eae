"""The planning benchmark (bench/planning.py) and its Sudoku generator (bench/sudoku.py): every
puzzle has one solution, the stored one; a seed names a data set; the splits share no grid; the
script runs end to end in --quick mode, resumes its trainings, and scores and shows a solve."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))

import sudoku  # noqa: E402


def test_every_puzzle_has_exactly_one_solution_the_stored_one():
    """Each generated puzzle, at 22-26 givens where careless blanking often leaves several
    solutions, has exactly one (the solver finds no second one), that solution is the stored grid,
    the grid is a valid Sudoku keeping every given, and the number of givens is in the asked
    range. Catches blanking without the uniqueness check (planted: 'keep the blank' always; all 30 of
    the puzzles had two solutions or more)."""
    pairs = sudoku.make_puzzles(7, 30, (22, 26))
    assert len(pairs) == 30
    for puzzle, solution in pairs:
        assert sudoku.solutions(puzzle, 2) == [solution]
        assert sudoku.is_valid_solution(solution)
        assert sudoku.agrees(puzzle, solution)
        assert 22 <= 81 - puzzle.count(".") <= 26


def test_validity_check_reads_rows_columns_and_boxes():
    """A grid whose rows and columns each hold 1-9 but whose boxes do not (a cyclic Latin square)
    is not a Sudoku, and neither is one with a repeated digit in a row; the solver refuses a
    puzzle with two equal digits in a box. Catches a check that forgets the boxes (planted: UNITS
    without its 9 boxes; the Latin square passed)."""
    latin = "".join(str((r + c) % 9 + 1) for r in range(9) for c in range(9))
    assert all(sorted(latin[r * 9 : r * 9 + 9]) == list("123456789") for r in range(9))
    assert all(sorted(latin[c::9]) == list("123456789") for c in range(9))
    assert not sudoku.is_valid_solution(latin)
    puzzle, solution = sudoku.make_puzzles(1, 1, (30, 40))[0]
    assert sudoku.is_valid_solution(solution)
    assert not sudoku.is_valid_solution(solution[1] + solution[0] + solution[2:])  # two digits swapped in a row
    assert sudoku.solutions("12" + "." * 7 + "." * 72, 2) != []
    assert sudoku.solutions("1" + "." * 9 + "1" + "." * 70, 2) == []  # a 1 at (0,0) and (1,1): one box


def test_a_seed_names_the_puzzles_whatever_the_processes():
    """The same seed gives the same puzzles, made in one process or two, and another seed other
    puzzles. Catches a draw from the global random module instead of the puzzle's own generator
    (planted: random.shuffle in make_puzzle; two runs of the same seed differed)."""
    one = sudoku.make_puzzles(5, 70, (30, 40), workers=1)
    assert one == sudoku.make_puzzles(5, 70, (30, 40), workers=2)
    assert one == sudoku.make_puzzles(5, 70, (30, 40), workers=1)
    other = sudoku.make_puzzles(6, 70, (30, 40), workers=1)
    assert not {s for _, s in one} & {s for _, s in other}


def test_splits_share_no_puzzle_and_no_solution_grid():
    """Training and held-out puzzles come from different draws: no puzzle and no solution grid is
    in both, none is twice in one split, and each split has the asked number (nothing was dropped
    as a repeat). Catches the split's name left out of the puzzles' seeds (planted: every training
    puzzle repeated a held-out one and 20 of 60 were dropped)."""
    splits = sudoku.make_splits(2, 60, 20, (30, 40))
    train, test = splits["train"], splits["test"]
    assert len(train) == 60 and len(test) == 20
    assert not {p for p, _ in train} & {p for p, _ in test}
    assert not {s for _, s in train} & {s for _, s in test}
    assert len({s for _, s in train}) == 60 and len({s for _, s in test}) == 20


def test_bad_settings_are_one_line_errors(tmp_path):
    """Givens outside 17-80, a width the heads do not divide into even halves, a call count
    outside 1..90 (1..5 for a path of 4 arms' 4 nodes), a graph of more than 52 nodes: one line
    naming the option, exit 2, nothing trained."""
    for args, words in ((["--givens", "10-20"], "--givens"), (["--width", "30", "--heads", "4"], "--width"),
                        (["--calls", "120"], "--calls"), (["--calls", "9x"], "--calls"),
                        (["--task", "star", "--degree", "20", "--arm", "3"], "--degree"),
                        (["--task", "star", "--calls", "6"], "--calls")):
        done = subprocess.run([sys.executable, str(BENCH / "planning.py"), "--quick", "--out", str(tmp_path / "x"),
                               *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr
        assert words in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """bench/planning.py --quick trained to step 2, then asked for 4 without and with --resume."""
    out = tmp_path_factory.mktemp("planning")

    def bench(*args):
        return subprocess.run([sys.executable, str(BENCH / "planning.py"), "--quick", "--test-puzzles", "4",
                               "--out", str(out), *args], capture_output=True, text=True, timeout=600)

    first = bench("--steps", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    data = next(out.glob("data-*"))
    made = (data / "train.jsonl").stat().st_mtime_ns
    refused = bench("--steps", "4")
    resumed = bench("--steps", "4", "--resume")  # (checked by the test of reruns)
    return {"out": out, "first": first, "refused": refused, "resumed": resumed, "data": data, "made": made}


def test_quick_run_trains_both_twins_and_writes_table_plot_and_trace(quick):
    """--quick runs end to end: both twins trained the same steps, the table has the AR twin at
    90 network calls and each diffusion order at 90 and 12, the plot is a PNG, and the trace of
    one held-out solve is a valid trace with one position decided per network call (a 9x9 board
    filled in 90 calls), beside the AR twin's, in the player. Counts steps and calls, never
    seconds. Catches an evaluation that ignored --calls (planted: every diffusion row run at the
    first of --calls; the 12-call rows read 90)."""
    from textdiffusion.sampling.trace import SCHEMA

    out = quick["out"]
    results = json.loads((out / "results.json").read_text())
    calls = [(r["model"], r["sampler"], r["calls"]) for r in results["rows"]]
    assert calls == [("ar", "ar", 90)] + [("masked", s, c) for s in ("confidence", "margin", "entropy")
                                          for c in (90, 12)]
    assert all(r["puzzles"] == 4 for r in results["rows"])
    assert {t: s["step"] for t, s in results["training"].items()} == {"masked": 4, "ar": 4}
    table = (out / "results.md").read_text()
    assert "| masked | margin | 12 |" in table and "| ar | ar | 90 |" in table and "Machine:" in table
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trace = json.loads((out / "trace.json").read_text())
    jsonschema.validate(trace, SCHEMA)
    assert len(trace["frames"]) == 90 and [f["nfe"] for f in trace["frames"]] == list(range(1, 91))
    assert all(len(f["rows"][0]["decided"]) == 1 for f in trace["frames"])
    ar = json.loads((out / "trace-ar.json").read_text())
    assert [f["rows"][0]["decided"][0]["position"] for f in ar["frames"]] == list(
        range(ar["prompt_length"], ar["prompt_length"] + 90))
    html = (out / "player.html").read_text()
    assert "masked: confidence" in html and "ar: ar" in html
    assert "planning.log" in {p.name for p in out.iterdir()}


def test_rerun_refuses_without_resume_and_continues_with_it(quick):
    """Asked for more steps than the runs hold, the script says to rerun with --resume (one line,
    exit 1, nothing trained); with --resume both twins continue from step 2 to 4 from their
    checkpoints (metrics logged from step 3 on, not again from 1), and the cached data is reused,
    not made again. Catches a rerun that trains from scratch over the old run (planted: the
    --resume branch dropped, the train CLI refused the run folder and the bench stopped)."""
    refused, resumed = quick["refused"], quick["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert refused.returncode == 1
    assert "--resume" in refused.stderr.strip().splitlines()[-1] and "Traceback" not in refused.stderr
    assert "continuing from step 2 to 4" in resumed.stderr
    assert "making" not in resumed.stderr
    assert (quick["data"] / "train.jsonl").stat().st_mtime_ns == quick["made"]
    for twin in ("masked", "ar"):
        steps = [json.loads(line).get("step") for line in (quick["out"] / twin / "metrics.jsonl").read_text().splitlines()
                 if "loss" in json.loads(line)]
        assert steps == sorted(steps) and steps[-1] == 4 and steps.count(1) <= 1


def test_generation_rows_are_the_rows_each_twin_was_trained_on(quick):
    """The canvas a held-out puzzle is solved on, with the true solution written into its free
    positions, is token for token the training row the twin learned from (data.sft_rows): the AR
    twin reads the row less its last token, the masked model the row less its first (its loss
    drops it). And the scorer calls the true solution solved, and not a board with any one cell
    wrong. Catches a masked canvas that starts with end-of-text as the chat template's does
    (planted: the masked model got the AR twin's canvas; the rows were shifted by one), and cells
    read one position off (planted: CELLS without the board's leading newline; a wrong last cell
    of a row passed as solved)."""
    import planning
    import torch

    from textdiffusion.data import Pair, sft_rows
    from textdiffusion.runs import load_run

    pairs = planning.read_pairs(quick["data"] / "test.jsonl")
    prompt, response = pairs[0]
    puzzle, solution = sudoku.cells_of(prompt[1:]), sudoku.cells_of(response[1:])
    task = planning.Sudoku(argparse.Namespace(givens=(30, 40)))
    assert task.response == len(response) == 90
    for twin in ("masked", "ar"):
        run = load_run(quick["out"] / twin)
        tok = run.tokenizer
        canvas, start = planning.canvas_for(run, [prompt], task.response)
        filled = canvas.tokens.clone()
        want = tok.encode(planning.board(solution)).tolist()
        filled[0, start : start + task.response] = torch.tensor(want)
        rows = sft_rows([Pair("x", planning.board(puzzle), planning.board(solution))], tok, run.cfg.model.context)
        row = torch.from_numpy(rows.tokens[0])
        assert filled[0].tolist() == (row[:-1] if twin == "ar" else row[1:]).tolist(), twin
        assert not canvas.fixed[0, start : start + task.response].any()
        assert canvas.fixed[0, :start].all() and canvas.fixed[0, start + task.response :].all()
        boards = [solution]  # the solution, then each cell in turn given another digit
        boards += [solution[:k] + str(int(solution[k]) % 9 + 1) + solution[k + 1 :] for k in range(81)]
        rows = [tok.encode(planning.board(b)).tolist() for b in boards]
        solved, right, blanks = task.score(tok, [(prompt, response)] * len(rows), rows)
        assert solved == [True] + [False] * 81
        n = puzzle.count(".")
        assert blanks == 82 * n and right == n + sum(n - (puzzle[k] == ".") for k in range(81))


# -- path-star graphs (bench/path_star.py, bench/planning.py --task star) -----------------------------

import path_star  # noqa: E402


def _walk(prompt: str) -> dict[str, list[str]]:
    edges = prompt.split(" | ")[0].split()
    out: dict[str, list[str]] = {}
    for e in edges:
        out.setdefault(e[0], []).append(e[1])
    return out


def test_path_star_answer_is_the_path_from_start_to_goal():
    """Each graph is a start with `degree` arms of `arm` distinct nodes (every other node has one
    way out, the goal none), and the stored answer is the one walk from the start that reaches the
    goal, following listed edges; a path that leaves the goal's arm, or stops short, is not an
    answer. Catches a goal taken from another arm than the path (planted: the goal always the end
    of arms[0]; the first graph whose path was another arm failed)."""
    pairs = path_star.make_splits(3, 200, 0, 4, 4)["train"]
    for prompt, path in pairs:
        out = _walk(prompt)
        start, goal = prompt.split(" | ")[1].split(">")
        assert len(out[start]) == 4 and sum(map(len, out.values())) == 16
        assert len({n for e in prompt.split(" | ")[0].split() for n in e}) == 17
        assert goal not in out and all(len(v) == 1 for k, v in out.items() if k != start)
        walks = []
        for first in out[start]:  # follow each arm to its end
            walk = [start, first]
            while walk[-1] in out:
                walk.append(out[walk[-1]][0])
            walks.append("".join(walk))
        assert [w for w in walks if w[-1] == goal] == [path] and len(path) == 5
        assert path_star.follows_edges(prompt, path)
        other = next(w for w in walks if w != path)
        assert not path_star.follows_edges(prompt, other) and not path_star.follows_edges(prompt, path[:-1])
        assert not path_star.follows_edges(prompt, path[0] + other[1] + path[2:])


def test_path_star_seed_names_the_graphs_and_splits_share_none():
    """The same seed gives the same graphs and another seed others; held-out graphs (an edge set
    and a question, in any listing order) never appear in training, and each split has the asked
    number. Catches the split's name left out of a graph's seed (planted: the training stream began
    with the 50 held-out graphs; the dedup hid it inside one call, but a training set made alone
    held them all)."""
    one = path_star.make_splits(5, 300, 50, 3, 3)
    assert one == path_star.make_splits(5, 300, 50, 3, 3)
    assert one["train"] != path_star.make_splits(6, 300, 50, 3, 3)["train"]
    train, test = one["train"], one["test"]
    assert len(train) == 300 and len(test) == 50
    assert not {path_star.key(p) for p, _ in train} & {path_star.key(p) for p, _ in test}
    assert len({path_star.key(p) for p, _ in train}) == 300
    assert sum(path_star.key(p) in {path_star.key(q) for q, _ in test}
               for p, _ in path_star.make_splits(5, 300, 0, 3, 3)["train"]) == 0


@pytest.fixture(scope="module")
def star(tmp_path_factory):
    out = tmp_path_factory.mktemp("star")
    done = subprocess.run([sys.executable, str(BENCH / "planning.py"), "--task", "star", "--quick", "--degree", "3",
                           "--arm", "3", "--test-puzzles", "4", "--steps", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_star_quick_run_scores_paths_and_traces_one_position_a_call(star):
    """--task star --quick runs end to end: the AR twin at one call per position, the four masked
    orders (left to right among them) at every position, half of them and one call, the trace one
    position a call over the 4 letters of a path; and the scorer calls the stored path solved and
    any path with one letter changed not, counting first steps apart. Catches a scorer that reads
    only the path's ends (planted: solved = first and last letters right; the middle-letter
    changes passed)."""
    import planning

    from textdiffusion.runs import load_run

    results = json.loads((star / "results.json").read_text())
    calls = [(r["model"], r["sampler"], r["calls"]) for r in results["rows"]]
    assert calls == [("ar", "ar", 4)] + [("masked", s, c) for s in ("confidence", "margin", "entropy", "left-to-right")
                                         for c in (4, 2, 1)]
    assert "first-step accuracy" in (star / "results.md").read_text()
    trace = json.loads((star / "trace.json").read_text())
    assert [f["nfe"] for f in trace["frames"]] == [1, 2, 3, 4]
    assert all(len(f["rows"][0]["decided"]) == 1 for f in trace["frames"])
    data = next(star.glob("data-star-*"))
    pairs = planning.read_pairs(data / "test.jsonl")
    prompt, path = pairs[0]
    task = planning.Star(argparse.Namespace(degree=3, arm=3))
    tok = load_run(star / "masked").tokenizer
    letters = sorted(set(path_star.NODES) - set(path))
    wrong = [path[:k] + letters[k] + path[k + 1 :] for k in range(4)]
    solved, first, n = task.score(tok, [(prompt, path)] * 5, [tok.encode(x).tolist() for x in [path, *wrong]])
    assert solved == [True, False, False, False, False] and n == 5 and first == 4  # wrong[1] misses the first step
