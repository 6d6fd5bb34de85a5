"""The applications in rooms of their own: the integrations import no CLI module, importing
the CLI loads no command, and a command's module is imported only when that command runs."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from callstate.cli import COMMANDS, build_parser, command_named, subcommands
from tests.conftest import ROOT, cli


def loaded_after(code: str) -> list[str]:
    """The callstate.cli modules a fresh interpreter has loaded after running `code`."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    return [m for m in modules if m == "callstate.cli" or m.startswith("callstate.cli.")]


def command_modules() -> set[str]:
    """Every command module and the rooms they live in (callstate.cli.load, ...)."""
    out = set()
    for command in COMMANDS.values():
        out.add(command.module)
        room = command.module.rsplit(".", 1)[0]
        if room != "callstate.cli":
            out.add(room)
    return out


def cli_imports(path: Path) -> list[str]:
    """The callstate.cli modules a source file imports, at its top or inside a function."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        out += [n for n in names if n == "callstate.cli" or n.startswith("callstate.cli.")]
    return out


@pytest.mark.parametrize("path", sorted((ROOT / "integrations").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_integration_source_names_a_cli_module(path: Path) -> None:
    """Also the imports a run-time probe would miss: those inside functions."""
    assert cli_imports(path) == []


def test_the_source_scan_sees_a_cli_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from callstate.cli.options import para\n")
    assert cli_imports(probe) == ["callstate.cli.options"]


@pytest.mark.parametrize("integration", ["callstate.locust", "callstate.pytest_plugin"])
def test_an_integration_imports_no_cli_module(integration: str) -> None:
    assert loaded_after(f"import {integration}") == []


def test_the_import_probe_sees_a_cli_module() -> None:
    assert "callstate.cli.options" in loaded_after("import callstate.cli.options")


def test_importing_the_cli_loads_no_command() -> None:
    loaded = loaded_after("import callstate.cli")
    assert "callstate.cli" in loaded
    assert not set(loaded) & command_modules(), loaded


def test_a_command_loads_its_own_module_only() -> None:
    loaded = set(loaded_after("from callstate.cli import main\ntry:\n    main(['health', '--help'])\n"
                              "except SystemExit:\n    pass"))
    assert "callstate.cli.health" in loaded
    assert not loaded & (command_modules() - {"callstate.cli.health"}), loaded


def test_the_help_lists_every_command_with_its_line() -> None:
    result = cli("--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for name, command in COMMANDS.items():
        assert f"{name} {' '.join(command.help.split())}" in text, name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_commands_help_is_its_own(name: str) -> None:
    result = cli(name, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: callstate {name} ")


def test_each_command_module_takes_its_line_of_help_from_the_table() -> None:
    """One line of help per command, in one place: the full parser shows the table's."""
    parser = build_parser()
    listing = {a.dest: a.help for a in parser._subparsers._group_actions[0]._choices_actions}  # type: ignore[union-attr]
    for name, sub in subcommands(parser).items():
        assert listing[name] == COMMANDS[name].help, name
        assert sub.prog == f"callstate {name}"


@pytest.mark.parametrize("argv, name", [(["load", "--calls", "3"], "load"), (["--version"], None),
                                        (["-h", "check", "x.jsonl"], "check"), ([], None)])
def test_the_command_a_line_runs_is_its_first_word(argv: list[str], name: str | None) -> None:
    assert command_named(argv) == name
