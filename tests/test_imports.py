"""Layers that point one way: rd3fast's wings import only wings below them, its modules import each other
without a cycle, and only public names.

The wings, bottom to top (README "Layout"): the shared modules at the top level of the package (config,
errors, atomic writes, ...) -> ``data/`` -> ``engine/`` (with ``rd3fast.kernels``) -> ``methods/`` ->
``bench/`` -> the entry points (``run``, ``demo``, ``evaluate``, ``pretrain``, ``distill``, ``prepare`` and the
package ``__init__``). A module may import its own wing and any wing below it, never one above.

A cycle means no module of it can be read (or tested, or replaced) on its own, and it only works as long as
every import in it stays inside a function; importing another module's ``_private`` name couples the two
through something the owner is free to change. Both are checked on the source with ``ast``: every import
counts, including those inside functions and under ``if TYPE_CHECKING``. ``kernels/`` is checked as the
``rd3fast.kernels`` package it is installed as.

Import edges: ``import a.b`` and ``from a.b import name`` import ``a.b`` (a package means its __init__),
``from a import b`` where ``a.b`` is a module imports ``a.b``; relative imports are resolved against the
importing module's package. The parent packages Python initializes on the way (``rd3fast`` for
``rd3fast.data.sets``) are not edges: every module would otherwise "import" rd3fast/__init__.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"rd3fast": ROOT / "rd3fast", "rd3fast.kernels": ROOT / "kernels"}  # module prefix -> folder


def module_files() -> dict[str, Path]:
    """Every module of the installed package: dotted name -> source file."""
    mods: dict[str, Path] = {}
    for prefix, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join([prefix, *parts])] = path
    return mods


MODULES = module_files()

WINGS = ("shared", "data", "engine", "methods", "bench", "entry")  # bottom to top
# The top level of the package holds two kinds of module: what every wing shares, and the entry points.
SHARED = {"atomic", "cachedir", "cliargs", "config", "errors", "host", "lock", "outputs", "progress", "results",
          "version"}
ENTRY = {"ddranking", "demo", "distill", "evaluate", "prepare", "pretrain", "run"}


def wing(module: str) -> str:
    """The wing of an rd3fast module (AssertionError for a top-level module that is in neither list: a new
    one has to be placed consciously)."""
    parts = module.split(".")
    if parts == ["rd3fast"]:
        return "entry"
    if parts[1] == "kernels":
        return "engine"  # the Triton kernels of the engine's augmentation, installed as rd3fast.kernels
    if parts[1] in WINGS[1:-1]:
        return parts[1]
    assert len(parts) == 2, module
    if parts[1] in SHARED:
        return "shared"
    assert parts[1] in ENTRY, f"{module}: a top-level module is either shared (SHARED) or an entry point (ENTRY)"
    return "entry"


def _package_of(module: str) -> str:
    """The package a module's relative imports start from (a package's own name for its __init__)."""
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def _base(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = _package_of(module)
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports(module: str) -> list[tuple[str, int, list[str]]]:
    """(imported rd3fast module, line, names taken from it) for every import statement of ``module``."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found: list[tuple[str, int, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, []) for a in node.names if a.name in MODULES]
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, node)
            for a in node.names:
                if f"{base}.{a.name}" in MODULES:  # `from pkg import submodule`
                    found.append((f"{base}.{a.name}", node.lineno, []))
                elif base in MODULES:
                    found.append((base, node.lineno, [a.name]))
    return found


def graph() -> dict[str, dict[str, list[str]]]:
    """importer -> imported -> ["file:line", ...] over rd3fast's modules (self-imports included)."""
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for module, path in MODULES.items():
        for target, line, _ in imports(module):
            where = f"{path.relative_to(ROOT)}:{line}"
            if where not in edges[module][target]:  # `from x import a, b` is one edge
                edges[module][target].append(where)
    for targets in edges.values():
        for where in targets.values():
            where.sort(key=lambda w: int(w.rpartition(":")[2]))
    return edges


def strongly_connected(edges: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Tarjan's strongly connected components with a cycle in them (more than one module, or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, {}):
                found.append(sorted(component))

    for v in sorted(set(edges) | {w for targets in edges.values() for w in targets}):
        if v not in index:
            visit(v)
    return found


def one_cycle(component: list[str], edges: dict[str, dict[str, list[str]]]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first), as a list of modules."""
    start, members = component[0], set(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges.get(v, {})):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w in members and w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # cannot happen for a strongly connected component


def test_modules_are_found() -> None:
    assert {"rd3fast", "rd3fast.data.sets", "rd3fast.data.backends", "rd3fast.kernels", "rd3fast.kernels.augment"} <= set(MODULES)
    edges = graph()
    assert "rd3fast.engine.aug" in edges["rd3fast.kernels.augment"]  # absolute `from rd3fast import aug`
    assert "rd3fast.kernels" in edges["rd3fast.engine.loader"]  # an import inside a function


def test_every_module_has_a_wing() -> None:
    assert {wing(m) for m in MODULES} == set(WINGS)
    assert wing("rd3fast.data.backends.dali") == "data" and wing("rd3fast.kernels.augment") == "engine"
    assert wing("rd3fast.run") == "entry" and wing("rd3fast.config") == "shared"


def test_wings_point_one_way() -> None:
    """No import from a wing into one above it (``data`` -> ``engine``, ``engine`` -> ``bench``, a wing -> an entry
    point), inside functions included."""
    rank = {w: i for i, w in enumerate(WINGS)}
    bad = [f"  {a} ({wing(a)}) -> {b} ({wing(b)})  ({', '.join(where)})"
           for a, targets in graph().items() for b, where in targets.items() if rank[wing(b)] > rank[wing(a)]]
    assert not bad, "imports that point up the wings (" + " -> ".join(WINGS) + "):\n" + "\n".join(sorted(bad))


def test_cycle_finder() -> None:
    edges = {"a": {"b": ["a.py:1"]}, "b": {"c": ["b.py:2"]}, "c": {"a": ["c.py:3"], "d": ["c.py:4"]}, "d": {},
             "e": {"e": ["e.py:5"]}}
    assert strongly_connected(edges) == [["a", "b", "c"], ["e"]]
    assert one_cycle(["a", "b", "c"], edges) == ["a", "b", "c", "a"] and one_cycle(["e"], edges) == ["e", "e"]


def test_no_import_cycles() -> None:
    edges = graph()
    report = []
    for component in strongly_connected(edges):
        cycle = one_cycle(component, edges)
        hops = [f"  {a} -> {b}  ({', '.join(edges[a][b])})" for a, b in zip(cycle, cycle[1:])]
        inside = [f"  {a} -> {b}  ({', '.join(edges[a][b])})" for a in component for b in sorted(edges.get(a, {}))
                  if b in component]
        report.append(f"cycle among {', '.join(component)}, e.g.\n" + "\n".join(hops)
                      + "\nall imports inside it:\n" + "\n".join(inside))
    assert not report, "rd3fast's modules import each other in a circle:\n" + "\n".join(report)


def test_no_private_names_cross_modules() -> None:
    """Neither ``from .x import _y`` nor ``x._y`` on an imported rd3fast module (dunders such as
    ``__version__`` are public)."""

    def private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    bad = []
    for module, path in MODULES.items():
        where = path.relative_to(ROOT)
        for target, line, names in imports(module):
            bad += [f"{where}:{line}: {name} from {target}" for name in names if private(name)]
        # Names bound to rd3fast modules (`from . import data`, `import rd3fast.kernels.augment as K`).
        tree = ast.parse(path.read_text())
        bound: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bound |= {a.asname or a.name.split(".")[0] for a in node.names if a.name in MODULES}
            elif isinstance(node, ast.ImportFrom):
                base = _base(module, node)
                bound |= {a.asname or a.name for a in node.names if f"{base}.{a.name}" in MODULES}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and private(node.attr)):
                bad.append(f"{where}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not bad, "private names used across rd3fast modules:\n" + "\n".join(bad)
