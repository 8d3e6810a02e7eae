"""Path-star graphs for the planning benchmark (bench/planning.py --task star): the lookahead task
of Bachmann & Nagarajan 2024 ("The Pitfalls of Next-Token Prediction"), the synthetic planning
task of Ye et al. 2024 ("Beyond Autoregression"): a start node with ``degree`` arms of ``arm``
nodes each, the edges listed in a random order, and the question: the path from the start to a
given goal (the last node of one arm).

Why it separates the twins: going forward, the only hard token is the first step out of the
start (which arm leads to the goal? that takes ``arm`` hops of lookahead); every later node is
the one successor of the node before it. An AR model trained with teacher forcing learns the easy
successor rule and guesses the first step (about 1 in ``degree`` right). Going backward from the
goal every step is a single lookup (the one edge that ends at the node), so a masked diffusion
model that fills the easiest positions first can decode the path from its end.

Nodes are single letters (a-z, A-Z: 52 names, each one token of the character tokenizer), drawn
without replacement for each graph. The prompt is the edges as two-letter pairs separated by
spaces, then `` | `` and ``START>GOAL``; the answer is the path's letters, start to goal::

    prompt:   zt Fz Ln sO wL yW GF WA Ui Ac is yE yG yU Ew cq | y>n
    response: yEwLn

Graph k of a split is drawn from ``random.Random(f"{seed}:{split}:{k}")`` alone, so a seed names
a data set; ``make_splits`` keeps the held-out graphs out of training (a graph is its edge set and
goal, whatever the order its edges are listed in).

    python bench/path_star.py --seed 0 --count 3      # print three graphs and their paths
"""

from __future__ import annotations

import argparse
import random
import string

NODES = string.ascii_letters


def make_graph(rng: random.Random, degree: int, arm: int) -> tuple[str, str]:
    """(prompt, path) of one path-star graph: ``degree`` arms of ``arm`` nodes out of the start."""
    if degree < 2 or arm < 1 or 1 + degree * arm > len(NODES):
        raise ValueError(f"a path-star graph needs degree >= 2, arm >= 1 and at most {len(NODES)} nodes "
                         f"(1 + degree x arm); got degree {degree}, arm {arm}")
    nodes = rng.sample(NODES, 1 + degree * arm)
    start = nodes[0]
    arms = [[start, *nodes[1 + i * arm : 1 + (i + 1) * arm]] for i in range(degree)]
    edges = [a[j] + a[j + 1] for a in arms for j in range(arm)]
    rng.shuffle(edges)
    path = arms[rng.randrange(degree)]
    return f"{' '.join(edges)} | {start}>{path[-1]}", "".join(path)


def key(prompt: str) -> tuple[frozenset, str]:
    """A graph's identity: its edge set and its question, whatever order the edges are listed in."""
    edges, question = prompt.split(" | ")
    return frozenset(edges.split()), question


def make_splits(seed: int, train: int, test: int, degree: int, arm: int) -> dict[str, list[tuple[str, str]]]:
    """``test`` held-out graphs, then ``train`` training graphs, none of which is a held-out one
    (nor twice in its split)."""
    seen, out = set(), {}
    for split, count in (("test", test), ("train", train)):
        pairs, k = [], 0
        while len(pairs) < count:
            prompt, path = make_graph(random.Random(f"{seed}:{split}:{k}"), degree, arm)
            k += 1
            if (graph := key(prompt)) not in seen:
                seen.add(graph)
                pairs.append((prompt, path))
        out[split] = pairs
    return out


def follows_edges(prompt: str, path: str) -> bool:
    """True when ``path`` goes from the prompt's start to its goal along the prompt's edges (in a
    tree there is one such path: the answer)."""
    edges, question = prompt.split(" | ")
    start, goal = question.split(">")
    listed = set(edges.split())
    return (len(path) >= 2 and path[0] == start and path[-1] == goal
            and all(path[i : i + 2] in listed for i in range(len(path) - 1)))


def main() -> None:
    p = argparse.ArgumentParser(description="Print seeded path-star graphs and their paths.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--degree", type=int, default=4, help="arms out of the start (default 4)")
    p.add_argument("--arm", type=int, default=4, help="nodes on each arm (default 4)")
    args = p.parse_args()
    try:
        pairs = make_splits(args.seed, args.count, 0, args.degree, args.arm)["train"]
    except ValueError as exc:
        p.error(str(exc))
    for prompt, path in pairs:
        print(f"{prompt}\n  -> {path}")


if __name__ == "__main__":
    main()
