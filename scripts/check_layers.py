"""The layers check (`make lint`): paperops' own imports only go down the stack, with no circles.

Every module belongs to a room (its first package under `paperops`); rooms stand in layers, top
first. A module may import its own room and any room in a lower layer; an import of a room in the
same layer (two rooms that must stay independent) or a higher one is a violation. Imports inside
functions count too: deferring an import hides a dependency from the reader, not from the graph.
Circles between modules are violations even inside one room. Exit 1 with one line per violation.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "paperops"
LAYERS: list[set[str]] = [
    {
        "cli",
        "calibrate",
        "generation",
    },  # the CLI; legacy re-exports for pyfunc models logged before 0.3
    {"serve", "monitor"},
    {"train"},  # builds the hybrid family's int8 encoder through export
    {"export"},
    {"evaluate"},
    {"tracking"},
    {"inference"},
    {"models"},
    {"uncertainty", "data", "requestlog"},
    {"config", "io", "log", "dburl", ""},  # "" is paperops/__init__.py (the version)
]
LAYER_OF = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imported(tree: ast.Module, module: str, is_package: bool, known: set[str]) -> Iterable[str]:
    """paperops modules imported anywhere in `tree` (the most specific known module)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            names = [f"{base}.{a.name}" for a in node.names] or [base]
            names = [n if n in known else base for n in names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name.split(".")[0] == PACKAGE and name != module:
                yield name


def graph(src: Path) -> dict[str, set[str]]:
    files = {module_name(p, src): p for p in (src / PACKAGE).rglob("*.py")}
    known = set(files)
    return {
        m: set(imported(ast.parse(p.read_text()), m, p.name == "__init__.py", known))
        for m, p in files.items()
    }


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def violations(src: Path) -> list[str]:
    edges = graph(src)
    out = []
    for m in sorted(edges):
        a = room_of(m)
        if a not in LAYER_OF:
            out.append(
                f"{m}: room {a!r} is in no layer (add it to LAYERS in {Path(__file__).name})"
            )
            continue
        for t in sorted(edges[m]):
            b = room_of(t)
            if b == a or b not in LAYER_OF:
                continue
            if LAYER_OF[b] <= LAYER_OF[a]:
                where = "up" if LAYER_OF[b] < LAYER_OF[a] else "across"
                out.append(f"{m} imports {t}: {where} the layers ({a} may not import {b})")
    out += [f"import circle among {len(c)} modules: {', '.join(c)}" for c in circles(edges)]
    return out


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "src"
    found = violations(src)
    for line in found:
        print(line)
    edges = graph(src)
    print(
        f"layers: {len(edges)} modules, {sum(map(len, edges.values()))} imports between them, "
        f"{len(found)} violations"
    )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
