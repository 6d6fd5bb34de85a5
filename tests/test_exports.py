"""The public API is declared: each public package's `__all__` names exist, and every name the
documentation imports from a callstate package is one it declares."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys

import pytest

from tests.documentation import _text, blocks, pages

# callstate.locust patches the process for gevent when imported: it is checked in a child
PACKAGES = ["callstate", "callstate.client", "callstate.server", "callstate.schema", "callstate.pytest_plugin"]


@pytest.mark.parametrize("name", PACKAGES)
def test_every_declared_name_exists(name: str) -> None:
    module = importlib.import_module(name)
    declared = module.__all__
    assert declared and len(set(declared)) == len(declared)
    missing = [n for n in declared if not hasattr(module, n) and not _is_submodule(name, n)]
    assert not missing, f"{name}.__all__ names what it does not have: {missing}"


def _is_submodule(package: str, name: str) -> bool:
    try:
        importlib.import_module(f"{package}.{name}")
        return True
    except ImportError:
        return False


def test_the_locust_integration_declares_what_it_has() -> None:
    code = "import callstate.locust as m; missing = [n for n in m.__all__ if not hasattr(m, n)]; print(missing)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def documented_imports(modules: tuple[str, ...] = tuple(PACKAGES) + ("callstate.locust",)) -> set[tuple[str, str]]:
    """(module, name) of every `from callstate... import name` in the docs' Python examples whose
    module is one of `modules` (or starts with "callstate" when `modules` is empty)."""
    found = set()
    for page in pages():
        for block in blocks(_text(page), "python"):
            for node in ast.walk(ast.parse(block)):
                if isinstance(node, ast.ImportFrom) and (node.module in modules or not modules and
                                                         (node.module or "").startswith("callstate")):
                    found.update((node.module, alias.name) for alias in node.names)
    return found


def test_every_name_the_documentation_imports_is_declared_public() -> None:
    names = documented_imports()
    assert ("callstate.client", "AsyncClient") in names   # the scan sees the examples
    undeclared = []
    for module, name in sorted(names):
        if module == "callstate.locust":
            continue   # checked in a child above; its examples subclass CallstateUser
        if name not in importlib.import_module(module).__all__:
            undeclared.append(f"{module}.{name}")
    assert not undeclared, f"the docs import names their package does not declare: {undeclared}"


# The core's modules a user imports by name (`from callstate.lifecycle import C`), and the stubs.
CORE_MODULES = ("callstate.lifecycle", "callstate.codes", "callstate.script", "callstate.pipe_script",
                "callstate.check", "callstate.statelog", "callstate.logfile", "callstate.cancel_points", "callstate.v1")


def test_the_docs_import_a_public_package_or_a_core_module_never_an_internal_one() -> None:
    """`from callstate.server.app import EmulatorServer` works today and breaks with the next
    refactor: the docs name the package that declares it."""
    public = set(PACKAGES) | {"callstate.locust"} | set(CORE_MODULES)
    internal = sorted(f"{module}.{name}" for module, name in documented_imports(()) if module not in public)
    assert not internal, f"the docs import from modules that are not public: {internal}"


def test_every_name_the_docs_import_from_the_core_exists() -> None:
    names = documented_imports(CORE_MODULES)
    assert ("callstate.lifecycle", "WCOMP") in names   # the scan sees the pytest page's example
    missing = [f"{module}.{name}" for module, name in sorted(names)
               if not hasattr(importlib.import_module(module), name) and not _is_submodule(module, name)]
    assert not missing, f"the docs import names the core does not have: {missing}"


def test_the_package_root_names_the_core_modules() -> None:
    import callstate
    assert {f"callstate.{n}" for n in callstate.__all__ if n != "__version__"} == set(CORE_MODULES) - {"callstate.v1"}
