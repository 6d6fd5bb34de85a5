"""The layout keeps its promises: a core that imports no adapter, and every lifecycle name in
one module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from callstate import lifecycle as L
from tests.conftest import ROOT

ADAPTERS = ("callstate.client", "callstate.server", "callstate.cli")
CORE = ROOT / "callstate"

# Names no module may retype: states, events, cancel kinds, sides, and the moves that are not
# also ordinary words of the script vocabulary ("complete", "abort", "fatal", "call", "cancel").
GUARDED = {L.C, L.CAN, L.WCOMP, L.COMP, L.D, L.A, L.END, L.STARTED, L.START_FAILED, L.CANCEL_ISSUED, L.COMPLETED,
           L.ABORTED, L.DISPATCH, L.ENTER, L.COMPLETE_PENDING, L.CANCEL_SENT, L.CANCEL_ESCALATED, L.CANCEL_SEEN,
           L.ABORTIVE, L.NON_ABORTIVE, L.CLIENT, L.SERVER}
SOURCES = [p for d in ("callstate", "server", "client", "cli", "observe", "integrations", "schema") for p in sorted((ROOT / d).rglob("*.py"))
           if "v1" not in p.relative_to(ROOT).parts and p != CORE / "lifecycle.py"]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


# `python -m callstate` needs callstate/__main__.py: a two-line shim into the CLI, not core code.
@pytest.mark.parametrize("path", sorted(p for p in CORE.rglob("*.py") if "v1" not in p.parts and p.name != "__main__.py"),
                         ids=lambda p: p.name)
def test_the_core_imports_no_client_server_or_cli(path: Path) -> None:
    bad = sorted(m for m in imported_modules(path) if m.startswith(ADAPTERS))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_import_walk_sees_a_forbidden_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from callstate.client import Client\n")
    assert "callstate.client" in imported_modules(probe)


def docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def bare_names(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    skip = docstrings(tree)
    return [f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in GUARDED
            and id(node) not in skip]


def test_no_lifecycle_name_is_retyped_outside_the_lifecycle_module() -> None:
    found = [hit for path in SOURCES for hit in bare_names(path)]
    assert not found, "import the constant from callstate.lifecycle instead:\n" + "\n".join(found)


def test_the_literal_scan_finds_a_retyped_name(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text('"""WComp in a docstring is fine."""\nif state == "WComp":\n    pass\n')
    assert bare_names_of(probe) == ["'WComp'"]


def bare_names_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    skip = docstrings(tree)
    return [repr(n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and n.value in GUARDED and id(n) not in skip]
