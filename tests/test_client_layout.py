"""The client reads forward: no module of client/ imports (at any level, functions included) a
module that imports it back, and one call's walk through it does not bounce (docs/client-design.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, ServerProcess

CLIENT = ROOT / "client"
PACKAGE = "callstate.client"


def client_imports(path: Path, package: Path = CLIENT, name: str = PACKAGE) -> set[str]:
    """The modules of the client package `path` imports anywhere in it (inside functions too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        out.update(m for m in found if m.startswith(name + ".") and (package / f"{m[len(name) + 1:]}.py").exists())
    return out


def import_graph(package: Path = CLIENT, name: str = PACKAGE) -> dict[str, set[str]]:
    return {f"{name}.{p.stem}": client_imports(p, package, name) - {f"{name}.{p.stem}"}
            for p in sorted(package.glob("*.py")) if p.name != "__init__.py"}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, each as the modules around it (a depth-first walk)."""
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(module, ())):
            if nxt in path:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    return found


def test_no_module_of_the_client_imports_one_that_imports_it_back() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.pipe_aio" in graph[f"{PACKAGE}.aio"]   # the walk sees the imports it must
    assert not cycles(graph), "import cycles in client/:\n" + "\n".join(" -> ".join(c) for c in cycles(graph))


def test_the_cycle_detector_sees_a_planted_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    pkg = tmp_path / "client"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from callstate.client.b import B\n")
    (pkg / "b.py").write_text("def late():\n    from callstate.client import c\n")
    (pkg / "c.py").write_text("import json\n\ndef later():\n    from callstate.client.a import A\n")
    assert cycles(import_graph(pkg)) == [[f"{PACKAGE}.a", f"{PACKAGE}.b", f"{PACKAGE}.c", f"{PACKAGE}.a"]]
    (pkg / "c.py").write_text("import json\n")
    assert cycles(import_graph(pkg)) == []


def test_one_calls_walk_through_the_client_does_not_bounce(shared_server: ServerProcess) -> None:
    """tools/call_walk.py follows `callstate call --outcome abort` under a profiler: no call comes
    back into a file the walk is already inside of, and no base class calls a hook of its
    subclass (7 such returns on main before the redesign)."""
    import json
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "call_walk.py"), "--target", shared_server.target,
                           "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    walk = json.loads(done.stdout)
    files = [stop["file"] for stop in walk["walk"]]
    assert walk["exit"] == 1 and {"client/aio.py", "client/call_core.py", "callstate/lifecycle.py"} <= set(files)
    assert walk["returns"] < 10, done.stdout
    assert walk["returns"] == 0, [stop for stop in walk["walk"] if any(f.startswith("<-") for f in stop["functions"])]


def test_the_walk_sees_a_template_hook() -> None:
    """A base class's method calling its subclass's method on the same object is a return; the
    subclass calling its base, or a call on another object, is not."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import call_walk
    finally:
        sys.path.remove(str(ROOT / "tools"))

    class Base:
        def run(self) -> None:
            self.hook()
            Other().hook()

        def hook(self) -> None:
            pass

    class Sub(Base):
        def hook(self) -> None:
            super().hook()

    class Other(Sub):
        pass

    seen: list[tuple[str, bool]] = []

    def profile(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "call" and frame.f_code.co_name == "hook":
            seen.append((frame.f_code.co_qualname.split(".")[-2], call_walk._hook(frame)))

    sys.setprofile(profile)
    try:
        Sub().run()
    finally:
        sys.setprofile(None)
    # Base.run -> Sub.hook (a hook), Sub.hook -> Base.hook (down), then another object's hooks
    assert seen == [("Sub", True), ("Base", False), ("Sub", False), ("Base", False)], seen


def test_a_pipes_walk_bounces_only_where_its_caller_asked_for_a_callback(shared_server: ServerProcess) -> None:
    """`callstate call --pipe both`: the one return is cli/pipe.py's `on_started`, a callback the
    command hands drive_pipe (a Script/PipeScript helper calling back into its caller made two more)."""
    import json
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "call_walk.py"), "--target", shared_server.target,
                           "--json", "--", "--pipe", "both", "--messages", "3"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    walk = json.loads(done.stdout)
    bounces = [(stop["file"], f) for stop in walk["walk"] for f in stop["functions"] if f.startswith("<-")]
    assert walk["exit"] == 0 and bounces == [("cli/pipe.py", "<- _pipe.<locals>.on_started")], bounces


def _call_walk():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import call_walk
    finally:
        sys.path.remove(str(ROOT / "tools"))
    return call_walk


def test_a_fold_recounts_the_returns() -> None:
    """`--fold`: a call between files merged into one no longer lands back in another file, and one
    from outside the merge into it may now do so (the returns had been carried over unfolded)."""
    cw = _call_walk()
    R = cw.Reach
    walk = [R("a.py", "f", False, (), False), R("b.py", "g", False, ("a.py",), False),
            R("a.py", "h", True, ("a.py", "b.py"), False), R("c.py", "k", False, ("a.py", "b.py"), False),
            R("d.py", "m", False, ("a.py", "b.py", "c.py"), False), R("a.py", "n", True, ("a.py",), True)]
    assert cw.counts(walk)["returns"] == 2
    merged = cw.folded(walk, {"a.py", "b.py"})
    assert [r.back for r in merged] == [False, False, False, False, False, True]   # h is inside a.py now; n a hook
    across = cw.folded(walk, {"b.py", "d.py"})
    assert [(r.file, r.back) for r in across][4] == ("b.py", True)   # c.py calling into the merged b.py, below it


def test_a_fold_naming_no_file_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt name would fold nothing and print the unfolded counts as if they were a merge's."""
    with pytest.raises(SystemExit) as exit_:
        _call_walk().main(["--target", "127.0.0.1:1", "--fold", "client/aio.py,client/aoi.py"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("no such file in the repository: client/aoi.py")
