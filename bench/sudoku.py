"""Sudoku 9x9 for the planning benchmark (bench/planning.py): a seeded generator of puzzles with
exactly one solution, the solver that proves it, and the text format both twins read and write.

A puzzle is made from a random full grid (a randomized backtracking fill) by blanking cells in a
random order, each blank kept only while the solver, counting solutions up to two, still finds
exactly one; it stops at a number of givens drawn from ``givens`` (lo, hi). Puzzle k of a split
is drawn from ``random.Random(f"{seed}:{split}:{k}")`` alone, so a seed names a data set (whatever
the number of processes that made it). ``make_splits`` drops any puzzle whose solution grid came
earlier (a held-out one, or another training one): two independent random grids essentially
never coincide, but the split promises it rather than hoping.

Cells are strings of 81 characters, row-major, ``1``-``9`` and ``.`` for a blank. The text the
models see is the board as 9 lines of 9 characters (``board_text``): the newlines let the trace
player draw the board as a 9x9 grid.

    python bench/sudoku.py --seed 0 --count 3      # print three puzzles, their solutions and stats
"""

from __future__ import annotations

import argparse
import random

DIGITS = "123456789"
ALL = 0x1FF  # the nine candidate bits, digit d is bit d - 1
ROW = [i // 9 for i in range(81)]
COL = [i % 9 for i in range(81)]
BOX = [(i // 27) * 3 + (i % 9) // 3 for i in range(81)]
UNITS = ([[r * 9 + c for c in range(9)] for r in range(9)] + [[r * 9 + c for r in range(9)] for c in range(9)]
         + [[b // 3 * 27 + b % 3 * 3 + r * 9 + c for r in range(3) for c in range(3)] for b in range(9)])


def _digits(mask: int) -> list[int]:
    return [d for d in range(1, 10) if mask >> (d - 1) & 1]


class _Board:
    """Digits placed so far and, per row, column and box, the bitmask of digits used."""

    def __init__(self, cells: str):
        if len(cells) != 81 or any(c not in DIGITS + "." for c in cells):
            raise ValueError(f"a board is 81 characters of 1-9 and '.'; got {cells!r}")
        self.grid = [0 if c == "." else int(c) for c in cells]
        self.rows, self.cols, self.boxes = [0] * 9, [0] * 9, [0] * 9
        self.ok = True  # False: two equal digits in a unit (no solution)
        for i, d in enumerate(self.grid):
            if d:
                bit = 1 << (d - 1)
                if (self.rows[ROW[i]] | self.cols[COL[i]] | self.boxes[BOX[i]]) & bit:
                    self.ok = False
                self.place(i, d)

    def place(self, i: int, d: int) -> None:
        bit = 1 << (d - 1)
        self.grid[i] = d
        self.rows[ROW[i]] |= bit
        self.cols[COL[i]] |= bit
        self.boxes[BOX[i]] |= bit

    def clear(self, i: int) -> None:
        bit = ~(1 << (self.grid[i] - 1))
        self.grid[i] = 0
        self.rows[ROW[i]] &= bit
        self.cols[COL[i]] &= bit
        self.boxes[BOX[i]] &= bit

    def candidates(self, i: int) -> int:
        return ALL & ~(self.rows[ROW[i]] | self.cols[COL[i]] | self.boxes[BOX[i]])

    def text(self) -> str:
        return "".join(str(d) if d else "." for d in self.grid)


def _search(b: _Board, limit: int, found: list[str], rng: random.Random | None) -> None:
    """Depth-first search, most constrained blank first; appends solutions to ``found`` until it
    holds ``limit`` of them. ``rng``: try the digits of a cell in a random order (the fill)."""
    best, best_mask, best_n = -1, 0, 10
    for i in range(81):
        if b.grid[i]:
            continue
        mask = b.candidates(i)
        n = bin(mask).count("1")
        if n < best_n:
            best, best_mask, best_n = i, mask, n
            if n <= 1:
                break
    if best < 0:  # no blank left: a solution
        found.append(b.text())
        return
    if best_n == 0:
        return
    digits = _digits(best_mask)
    if rng is not None:
        rng.shuffle(digits)
    for d in digits:
        b.place(best, d)
        _search(b, limit, found, rng)
        b.clear(best)
        if len(found) >= limit:
            return


def solutions(cells: str, limit: int = 2) -> list[str]:
    """Up to ``limit`` solutions of the puzzle ``cells`` (two are enough to tell it is not unique)."""
    b = _Board(cells)
    if not b.ok:
        return []
    found: list[str] = []
    _search(b, limit, found, None)
    return found


def is_valid_solution(cells: str) -> bool:
    """A full grid whose every row, column and 3x3 box holds the digits 1-9 once each."""
    if len(cells) != 81 or any(c not in DIGITS for c in cells):
        return False
    return all(sorted(cells[i] for i in unit) == list(DIGITS) for unit in UNITS)


def agrees(puzzle: str, solution: str) -> bool:
    """The solution keeps every given of the puzzle."""
    return all(p == "." or p == s for p, s in zip(puzzle, solution))


def full_grid(rng: random.Random) -> str:
    """A random complete grid: the search over an empty board, digits in a random order."""
    found: list[str] = []
    _search(_Board("." * 81), 1, found, rng)
    return found[0]


def make_puzzle(rng: random.Random, givens: tuple[int, int]) -> tuple[str, str]:
    """(puzzle, solution): a random full grid, then cells blanked in a random order, each kept
    blank only if the puzzle still has exactly one solution, down to a number of givens drawn
    uniformly from ``givens`` (a grid that cannot get that low is dropped for a new one)."""
    lo, hi = givens
    while True:
        solution = full_grid(rng)
        target = rng.randint(lo, hi)
        cells = list(solution)
        left = 81
        order = list(range(81))
        rng.shuffle(order)
        for i in order:
            if left == target:
                break
            keep, cells[i] = cells[i], "."
            if len(solutions("".join(cells), 2)) == 1:
                left -= 1
            else:
                cells[i] = keep
        if left == target:
            return "".join(cells), solution


def make_puzzles(seed: int, count: int, givens: tuple[int, int], split: str = "train",
                 workers: int = 1, progress=None) -> list[tuple[str, str]]:
    """``count`` puzzles of one split; puzzle k is drawn from ``random.Random("seed:split:k")``
    alone, so the same seed gives the same puzzles whatever the number of ``workers`` (processes).
    ``progress(done, count)`` is called now and then."""
    jobs = [(f"{seed}:{split}:{k}", givens) for k in range(count)]
    if workers <= 1 or count < 64:
        out = []
        for job in jobs:
            out.append(_puzzle_job(job))
            if progress is not None and len(out) % 500 == 0:
                progress(len(out), count)
        return out
    import multiprocessing

    out = []
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for pair in pool.imap(_puzzle_job, jobs, chunksize=32):
            out.append(pair)
            if progress is not None and len(out) % 500 == 0:
                progress(len(out), count)
    return out


def _puzzle_job(job: tuple[str, tuple[int, int]]) -> tuple[str, str]:
    seed, givens = job
    return make_puzzle(random.Random(seed), givens)


def make_splits(seed: int, train: int, test: int, givens: tuple[int, int], workers: int = 1,
                progress=None) -> dict[str, list[tuple[str, str]]]:
    """Training and held-out puzzles (drawn from ``seed`` with the split's name); a training
    puzzle whose solution grid is a held-out one's, or an earlier training one's, is dropped, so
    no solution grid (hence no puzzle) is in both splits or twice in training."""
    seen: set[str] = set()
    out = {}
    for split, count, hook in (("test", test, None), ("train", train, progress)):
        out[split] = []
        for p, s in make_puzzles(seed, count, givens, split, workers, hook):
            if s not in seen:
                seen.add(s)
                out[split].append((p, s))
    return out


def singles_solvable(cells: str) -> bool:
    """Whether naked and hidden singles alone (a cell with one candidate; a digit with one place
    in a unit) fill the puzzle: the easy end of human difficulty ratings, no search needed."""
    b = _Board(cells)
    progress = True
    while progress:
        progress = False
        for i in range(81):
            if not b.grid[i]:
                mask = b.candidates(i)
                if mask == 0:
                    return False
                if mask & (mask - 1) == 0:
                    b.place(i, mask.bit_length())
                    progress = True
        for unit in UNITS:
            for d in range(1, 10):
                bit = 1 << (d - 1)
                spots = [i for i in unit if not b.grid[i] and b.candidates(i) & bit]
                if len(spots) == 1:
                    b.place(spots[0], d)
                    progress = True
    return 0 not in b.grid


def board_text(cells: str) -> str:
    """The board as the models read and write it: 9 lines of 9 characters."""
    return "\n".join(cells[r * 9 : r * 9 + 9] for r in range(9))


def cells_of(text: str) -> str | None:
    """The 81 cells of a board in ``board_text`` form, or None if the text is not one."""
    lines = text.split("\n")
    if len(lines) != 9 or any(len(line) != 9 for line in lines):
        return None
    return "".join(lines)


def parse_givens(text: str) -> tuple[int, int]:
    """``"30-40"`` or ``"36"`` -> (lo, hi); 17 <= lo <= hi <= 80 (17: the fewest givens any
    9x9 puzzle with one solution has)."""
    try:
        lo, _, hi = text.partition("-")
        pair = (int(lo), int(hi or lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--givens takes LO-HI or N (e.g. 30-40); got {text!r}") from None
    if not 17 <= pair[0] <= pair[1] <= 80:
        raise argparse.ArgumentTypeError(f"--givens must satisfy 17 <= LO <= HI <= 80; got {text!r}")
    return pair


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--givens", type=parse_givens, default=(30, 40), help="LO-HI givens per puzzle (default 30-40)")
    args = p.parse_args()
    for puzzle, solution in make_puzzles(args.seed, args.count, args.givens):
        givens = 81 - puzzle.count(".")
        print(f"{givens} givens, singles alone solve it: {singles_solvable(puzzle)}")
        for a, b in zip(board_text(puzzle).split("\n"), board_text(solution).split("\n")):
            print(f"  {a}   {b}")
        print()


if __name__ == "__main__":
    main()
