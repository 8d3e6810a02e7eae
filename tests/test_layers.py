"""The package is layered: its rooms (each sub-package and each module at the package root) import
one another in one direction only, so that each room can be read, tested and moved with only the
rooms below it (docs/architecture.md, "The floors"). Imports inside functions count: a lazy import
is still a dependency, only a later one."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "textdiffusion"


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["textdiffusion", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_edges() -> set[tuple[str, str, str]]:
    """(importing module, imported module, line) for every import of a module of this package,
    at any depth of the file (top level, functions, TYPE_CHECKING blocks)."""
    modules, edges = _modules(), set()
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                # ``from .x import y``: y itself when it is a module, else the module x
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    edges.add((name, target, f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"))
    return edges


def room(module: str) -> str:
    """The room a module is in: its sub-package, or itself at the package root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def room_cycles(edges) -> list[list[str]]:
    """The rooms' strongly connected components of more than one room (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        if room(a) != room(b):
            graph.setdefault(room(a), set()).add(room(b))
            graph.setdefault(room(b), set())
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_two_rooms_of_the_package_import_each_other():
    """No circle of rooms, however long: the import graph between the package's rooms is a
    ladder. Planted bugs seen failing: models/transformer.py reading ``DTYPES`` from runs/loaded.py
    inside a function (the old loaded.py <-> models/ pair: runs/ builds models), and runs/shipped.py
    asking ``sampling.registry`` for option names (a card's settings checked below the samplers:
    sampling/speculative.py loads its drafter through runs/)."""
    edges = import_edges()
    cycles = room_cycles(edges)
    where = [f"{a} -> {b} ({line})" for comp in cycles for a, b, line in sorted(edges)
             if room(a) in comp and room(b) in comp and room(a) != room(b)]
    assert not cycles, f"rooms that import each other: {cycles}; the imports:\n" + "\n".join(where)


def test_the_walk_sees_lazy_and_relative_imports():
    """The checker itself: a lazy relative import inside a function is an edge (a walker that
    read only the top level, or resolved ``..`` one level off, would pass anything)."""
    edges = {(a, b) for a, b, _ in import_edges()}
    assert ("textdiffusion.runs", "textdiffusion.runs.loaded") in edges  # inside load_run
    assert ("textdiffusion.sampling.speculative", "textdiffusion.runs") in edges  # inside load_drafter
    assert ("textdiffusion.runs.adapters.common", "textdiffusion.models.transformer") in edges  # three dots
    assert room("textdiffusion.runs.adapters.common") == "runs" and room("textdiffusion.config") == "config"
    assert room_cycles({("textdiffusion.a.x", "textdiffusion.b", ""), ("textdiffusion.b", "textdiffusion.c.y", ""),
                        ("textdiffusion.c", "textdiffusion.a", "")}) == [["a", "b", "c"]]
