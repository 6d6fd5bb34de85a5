"""The layout keeps its promises: a core without I/O that imports nothing of ours, packages that
import only the layers below them, no import cycle, and every lifecycle name in one module.
Nothing is exempt: a breach or a cycle fails the run."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import get_args

import pytest

from callstate import lifecycle as L
from callstate import pipe_script as PS
from callstate import script as S
from callstate.cancel_points import PIPE as PIPE_POINTS, UNARY as UNARY_POINTS
from tests.conftest import ROOT
from tests.import_graph import PACKAGE_DIRS, cycles, imported_names, module_graph, product_modules

CORE = ROOT / "callstate"
# The core's I/O edge: the only callstate/*.py that may touch files, threads or grpc, each for one
# reason. `__main__.py` is the two-line shim `python -m callstate` needs into the CLI.
IO_MODULES = {"logfile.py": "the state-log writer thread, its exit hook, reading log files",
              "grpc_status.py": "the code table's status names as grpc.StatusCode",
              "files.py": "reading PEM and rules files",
              "__main__.py": "python -m callstate: runs the CLI"}
NO_IO_IMPORTS = ("grpc", "threading", "asyncio", "socket", "atexit", "subprocess")
FILE_CALLS = {"open", "read_text", "read_bytes", "write_text", "write_bytes"}
CORE_MODULES = sorted(p for p in CORE.glob("*.py") if p.name not in IO_MODULES) + [ROOT / "schema" / "model.py"]


def io_uses(path: Path) -> list[str]:
    """The I/O a module reaches for: an import of NO_IO_IMPORTS, or a call that opens a file."""
    found = [f"line {line}: import {name}" for names, line in imported_names(path) for name in names[-1:]
             if name.split(".")[0] in NO_IO_IMPORTS]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            called = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if called in FILE_CALLS:
                found.append(f"line {node.lineno}: {called}()")
    return found


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: p.name)
def test_the_core_does_no_io(path: Path) -> None:
    found = io_uses(path)
    assert not found, f"{path.relative_to(ROOT)} does I/O (move it to an I/O module: {sorted(IO_MODULES)}): {found}"


def test_importing_the_core_loads_no_grpc() -> None:
    """What the scan promises, at run time: no module of the core pulls grpc in on the side."""
    modules = [f"callstate.{p.stem}" for p in CORE_MODULES if p.parent == CORE and p.stem != "__init__"]
    code = f"import sys\nimport {', '.join(modules)}\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'grpc'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_the_io_scan_sees_threads_grpc_and_files(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import threading\nfrom grpc import aio\ndef f(p):\n    with open(p) as f:\n        pass\n"
                     "    return p.read_text()\n")
    assert sorted(hit.split(": ")[1] for hit in io_uses(probe)) == ["import grpc", "import threading", "open()",
                                                                    "read_text()"]


# -- layers: which package may import which ------------------------------------------------------
# core: callstate/ (with schema/model.py, the pure model of a user's schema that rules.py compiles
# against); main: callstate/__main__.py. A package may import itself and the layers listed.
LAYER_OF_MODULE = {"callstate.schema.model": "core", "callstate.__main__": "main"}
LAYERS = {"callstate": "core", "callstate.schema": "schema", "callstate.observe": "observe",
          "callstate.client": "client", "callstate.server": "server", "callstate.cli": "cli",
          "callstate.pytest_plugin": "integrations", "callstate.locust": "integrations"}
ALLOWED = {
    "core": set(),
    "schema": {"core"},
    "observe": {"core"},
    "client": {"core", "schema", "observe"},
    "server": {"core", "schema", "observe"},
    "integrations": {"core", "schema", "observe", "client", "server"},   # never the CLI
    "cli": {"core", "schema", "observe", "client", "server"},           # the applications: anything below
    "main": {"cli"},
}


def layer_of(module: str) -> str:
    if module in LAYER_OF_MODULE:
        return LAYER_OF_MODULE[module]
    package = max((p for p in LAYERS if in_package(module, p)), key=len)
    return LAYERS[package]


def layer_breaches(graph: dict[str, dict[str, int]]) -> list[tuple[str, str, str]]:
    """(importing module, imported module, "module:line imports module (layer -> layer)") for every
    import the table forbids."""
    out = []
    for module, edges in sorted(graph.items()):
        mine = layer_of(module)
        for target, line in sorted(edges.items()):
            theirs = layer_of(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                out.append((module, target, f"{module}:{line} imports {target} ({mine} -> {theirs})"))
    return out


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


GRAPH = module_graph(product_modules())


def test_every_package_is_in_the_layer_table() -> None:
    installed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert PACKAGE_DIRS == installed, "a package pyproject installs that the import graph does not read, or the reverse"
    assert set(PACKAGE_DIRS) == set(LAYERS) and set(LAYERS.values()) | {"main"} == set(ALLOWED)
    assert {layer_of(m) for m in GRAPH} == set(ALLOWED)


def test_every_package_imports_only_the_layers_below_it() -> None:
    found = [why for _, _, why in layer_breaches(GRAPH)]
    assert not found, "imports the layer table forbids:\n" + "\n".join(found)


def test_the_layer_check_sees_a_planted_breach(tmp_path: Path) -> None:
    (tmp_path / "lifecycle.py").write_text("def f():\n    from callstate.client import aio\n")
    (tmp_path / "aio.py").write_text("from callstate.lifecycle import C\n")
    graph = module_graph({"callstate.lifecycle": tmp_path / "lifecycle.py", "callstate.client.aio": tmp_path / "aio.py"})
    assert layer_breaches(graph) == [("callstate.lifecycle", "callstate.client.aio",
                                      "callstate.lifecycle:2 imports callstate.client.aio (core -> client)")]


# -- no import cycles ---------------------------------------------------------------------------
def test_no_import_cycle_between_modules_of_the_product() -> None:
    found = cycles(GRAPH)
    assert not found, f"modules that import each other (also inside functions): {found}"


def test_the_cycle_check_sees_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from typing import TYPE_CHECKING\nimport callstate.b\n"
                                   "if TYPE_CHECKING:\n    from callstate import c\n")
    (tmp_path / "b.py").write_text("def f():\n    from callstate.a import g\n")
    (tmp_path / "c.py").write_text("import callstate.a\n")
    modules = {f"callstate.{n}": tmp_path / f"{n}.py" for n in "abc"}
    assert cycles(module_graph(modules)) == [["callstate.a", "callstate.b"]]   # a TYPE_CHECKING import is no edge


# -- no vocabulary name retyped -----------------------------------------------------------------
# A name of the model is written as a string once, in its home module, and imported everywhere
# else. Guarded: the lifecycle's states, events, moves, cancel kinds and sides (callstate/lifecycle.py);
# the outcome and on-cancel names of scripts (callstate/script.py; complete, abort and fatal are
# the lifecycle's moves); the caller's cancel points (callstate/cancel_points.py).
#
# What counts as a name use: any string constant equal to a guarded name, wherever it stands (a
# comparison, a default, an argument, a dict key, argparse choices). Not counted: docstrings;
# the strings of a `Literal[...]` type (type checkers read only literals there; a test holds each
# Literal equal to its table); longer text that contains a name ("complete=60,abort=20" is an
# option's value, "cancel the pipe at ..." a message: only an exact match is a name); and
# SAME_WORD, a constant that is the same word naming something else.
LIFECYCLE_NAMES = {L.C, L.CAN, L.WCOMP, L.COMP, L.D, L.A, L.END, L.STARTED, L.START_FAILED, L.CANCEL_ISSUED,
                   L.COMPLETED, L.ABORTED, L.DISPATCH, L.ENTER, L.COMPLETE_PENDING, L.CANCEL_SENT,
                   L.CANCEL_ESCALATED, L.CANCEL_SEEN, L.ABORTIVE, L.NON_ABORTIVE, L.CLIENT, L.SERVER,
                   L.COMPLETE, L.ABORT, L.FATAL}
HOME = ({name: CORE / "lifecycle.py" for name in LIFECYCLE_NAMES}
        | {name: CORE / "script.py" for name in (set(S.OUTCOMES) | set(S.ON_CANCEL)) - LIFECYCLE_NAMES}
        | {name: CORE / "cancel_points.py" for name in UNARY_POINTS.names() + PIPE_POINTS.names()})
GUARDED = set(HOME)
# (fragments of the module's path, the constant's name): the same word as a guarded name, meaning
# something else
SAME_WORD = {(("conformance", "properties"), "FATAL"): "the id of a conformance row, not an outcome",
             (("conformance", "properties"), "HELD"): "the id of a conformance row, not a cancel point",
             (("conformance", "run"), "SERVER_HEADER"): "an HTTP response header's name, not the server side"}
SOURCES = sorted(product_modules().values())


def docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def exempt(tree: ast.AST, path: Path) -> set[int]:
    """The string constants that are not name uses: docstrings, Literal[...] members, SAME_WORD."""
    skip = docstrings(tree)
    same = {name for (parts, name) in SAME_WORD if all(part in str(path) for part in parts)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and getattr(node.value, "id", getattr(node.value, "attr", "")) == "Literal":
            skip.update(id(n) for n in ast.walk(node.slice))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(getattr(t, "id", None) in same for t in targets):
                skip.add(id(node.value))
    return skip


def bare_names(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every guarded name `path` retypes outside the name's home module."""
    tree = ast.parse(path.read_text())
    skip = exempt(tree, path)
    return sorted((node.lineno, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in GUARDED
                  and HOME[node.value] != path and id(node) not in skip)


def test_no_vocabulary_name_is_retyped_outside_its_home_module() -> None:
    found = [f"{path.relative_to(ROOT)}:{line}: {name!r} (import it from {HOME[name].relative_to(ROOT)})"
             for path in SOURCES for line, name in bare_names(path)]
    assert not found, "use the constant instead:\n" + "\n".join(found)


def test_the_literal_scan_finds_a_retyped_name(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text('"""WComp, hold and after-headers in a docstring are fine."""\n'
                     'Outcome = Literal["hold", "abort"]\n'
                     'if state == "WComp" and outcome != "hold" and point == "after-headers":\n'
                     '    script = Script("abort", on_cancel="ignore")\n'
                     'help = "cancel at after-headers"\n')
    assert sorted(name for _, name in bare_names(probe)) == ["WComp", "abort", "after-headers", "hold", "ignore"]


def test_a_same_word_constant_is_exempt_only_in_its_module(tmp_path: Path) -> None:
    for folder in ("conformance_properties", "elsewhere"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "m.py").write_text('FATAL = "fatal"\n')
    assert bare_names(tmp_path / "conformance_properties" / "m.py") == []
    assert bare_names(tmp_path / "elsewhere" / "m.py") == [(1, "fatal")]


def test_the_literal_types_spell_the_tables() -> None:
    assert get_args(S.OutcomeName) == tuple(S.OUTCOMES)
    assert set(get_args(S.OnCancelName)) == set(S.ON_CANCEL)
    assert set(get_args(PS.PointName)) == set(PS.POINTS)
