"""The product's modules and the imports between them, as tests/test_architecture.py reads them.

Every import counts, also one inside a function (a cycle hidden that way still binds the two
modules together); only imports under `if TYPE_CHECKING:` are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator

from tests.conftest import ROOT

# Where each package of the product lives in the repository (pyproject's package-dir).
PACKAGE_DIRS = {"callstate": "callstate", "callstate.server": "server", "callstate.client": "client",
                "callstate.cli": "cli", "callstate.observe": "observe", "callstate.schema": "schema",
                "callstate.pytest_plugin": "integrations/pytest_plugin", "callstate.locust": "integrations/locust"}
GENERATED = "callstate.v1"   # the stubs protoc writes: wire code, not ours to shape


def product_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the product by its dotted name (packages by their own name)."""
    out = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(root / folder).with_suffix("").parts if p != "__init__"]
            name = ".".join([package, *parts])
            if not (name == GENERATED or name.startswith(GENERATED + ".")):
                out[name] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of `tree` except what sits under `if TYPE_CHECKING:`."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _absolute(module: str | None, level: int, importer: str, is_package: bool) -> str:
    """The absolute name a (possibly relative) `from ... import` names."""
    if not level:
        return module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imported_names(path: Path, importer: str = "") -> list[tuple[tuple[str, ...], int]]:
    """What `path` imports at run time: (candidate names, line) per name imported. `from m import x`
    gives ("m.x", "m"): x is the module m.x when there is one, else a name defined in m."""
    out: list[tuple[tuple[str, ...], int]] = []
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.extend(((alias.name,), node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node.module, node.level, importer, path.name == "__init__.py")
            out.extend(((f"{module}.{alias.name}", module), node.lineno) for alias in node.names)
    return out


def module_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {product module it imports: first line it does}."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for candidates, line in imported_names(path, name):
            target = next((c for c in candidates if c in modules), None)
            if target is not None and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return sorted(found)
