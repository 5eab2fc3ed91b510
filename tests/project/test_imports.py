"""The import graph of ``nasnet_det`` and ``search``: no cycles, and ``nasnet_det`` never imports ``search``.

The graph counts every import statement, at module level and inside functions (a function-level import
still ties the two modules together), and the imports Python makes without one: importing ``a.b.c`` runs the
``__init__`` of each package on the way (``a``, ``a.b``) that the importer is not itself inside, and a package
whose ``__init__`` calls ``import_modules`` (the plug-in packages) imports every module in it. Imports under
``if TYPE_CHECKING:`` never run and do not count.
``python tests/project/test_imports.py`` prints the cycles found.
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


def _packages_run(importer: str, target: str, files: dict[str, Path]) -> set[str]:
    """The packages whose ``__init__`` importing ``target`` runs: those on its dotted path that ``importer`` is
    not inside (an importer's own packages are already initialised or initialising)."""
    parts = target.split(".")
    outer = {".".join(parts[:i]) for i in range(1, len(parts))}
    return {p for p in outer if p in files and not (importer == p or importer.startswith(p + "."))}


def _calls_import_modules(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None))
               == "import_modules" for node in ast.walk(tree))


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """The import statements under ``if TYPE_CHECKING:`` (for type checkers only: they never run)."""
    out: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            out |= {n for stmt in node.body for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from A import B`` counts as ``A.B`` when that is a module;
    with the packages whose ``__init__`` that runs and the modules of a package that calls ``import_modules``)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        if path.name == "__init__.py" and _calls_import_modules(tree):
            graph[name] |= {m for m in files if m.rpartition(".")[0] == name}
        typing_only = _type_checking_only(tree)
        for node in ast.walk(tree):
            if node in typing_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            found = {t for t in targets if t in files and t != name}
            graph[name] |= found
            for target in found:
                graph[name] |= _packages_run(name, target, files)
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


def test_the_graph_sees_plugin_packages_and_package_inits():
    """The imports without an import statement are edges: a plug-in package imports its modules, and a module
    importing another package's module runs that package's ``__init__``."""
    graph = import_graph()
    assert {"search.estimators.size", "search.estimators.zero_cost"} <= graph["search.estimators"]
    assert {"search.strategies.random_search", "search.strategies.oneshot"} <= graph["search.strategies"]
    assert "search.estimators" in graph["search.strategies.zero_cost"]  # it imports search.estimators.base ...
    assert "search.estimators" not in graph["search.estimators.size"]  # ... a module of the package does not


if __name__ == "__main__":
    found = find_cycles(import_graph())
    for cycle in found:
        print(" <-> ".join(cycle))
    print(f"{len(found)} import cycle(s)")
    sys.exit(1 if found else 0)
