"""The import graph of ``nasnet_det`` and ``search``: no cycles, and ``nasnet_det`` never imports ``search``.

The graph counts every import statement, at module level and inside functions (a function-level import
still ties the two modules together). ``python tests/project/test_imports.py`` prints the cycles found.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("nasnet_det", "search")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from A import B`` counts as ``A.B`` when that is a module)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_nasnet_det_does_not_import_search():
    graph = import_graph()
    wrong = sorted(f"{m} imports {t}" for m, targets in graph.items() if m.split(".")[0] == "nasnet_det"
                   for t in targets if t.split(".")[0] == "search")
    assert not wrong, "; ".join(wrong)



def test_dispatcher_and_subcommands_do_not_import_each_other():
    """``nasnet-det`` finds its subcommands as entry points; they report errors through nasnet_det.utils.errors."""
    graph = import_graph()
    subcommands = {"search.cli", "nasnet_det.classification.cli", "nasnet_det.detection.cli", "nasnet_det.pipeline.cli"}
    assert not graph["nasnet_det.cli"] & subcommands, graph["nasnet_det.cli"]
    assert not [m for m, targets in graph.items() if "nasnet_det.cli" in targets]

if __name__ == "__main__":
    found = find_cycles(import_graph())
    for cycle in found:
        print(" <-> ".join(cycle))
    print(f"{len(found)} import cycle(s)")
    sys.exit(1 if found else 0)
