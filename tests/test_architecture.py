"""The package's import graph has no circles (issue 19): every ``from dyncli... import`` and
``import dyncli...`` counts, inside functions too (a lazy import still ties two modules
together); imports under ``if TYPE_CHECKING:`` do not."""

from __future__ import annotations

import ast
from pathlib import Path

import dyncli

ROOT = Path(dyncli.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(tree: ast.AST) -> list[str]:
    """Every dyncli module named by an import in ``tree``, outside TYPE_CHECKING blocks."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.extend([node.module] + [f"{node.module}.{a.name}" for a in node.names])
        elif isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return [n for n in names if n == "dyncli" or n.startswith("dyncli.")]


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for imported in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            while imported not in modules and "." in imported:
                imported = imported.rsplit(".", 1)[0]
            # a package's own __init__ importing its submodules is not a circle through it
            if imported in modules and imported != name and not imported.startswith(name + "."):
                deps.add(imported)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_checker_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_dyncli_has_no_import_circles() -> None:
    graph = import_graph()
    assert "dyncli.methods.blank_skip.policy" in graph  # the walk saw the package
    assert cycles(graph) == []


def test_the_package_root_holds_only_small_modules() -> None:
    """The root is for what every part uses; the rest lives in folders (issue 19). Only
    errors, fileio, checkpoint and environment may pass ~150 lines."""
    allowed = {"errors.py", "fileio.py", "checkpoint.py", "environment.py"}
    big = {
        path.name: n
        for path in ROOT.glob("*.py")
        if path.name not in allowed
        and (n := len(path.read_text(encoding="utf-8").splitlines())) > 150
    }
    assert big == {}
