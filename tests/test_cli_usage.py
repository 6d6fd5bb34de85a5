"""The command line as users meet it: the reference page generated from the parsers, refused
abbreviations, usage errors that point at the command's own help, options that would be
silently ignored, and the documented defaults pinned."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from callstate.cli import build_parser, subcommands
from tests.conftest import ROOT, ServerProcess, cli

PAGE = ROOT / "docs" / "cli.md"


def test_the_cli_reference_is_generated_from_the_parsers_and_current() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "cli_reference.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_every_flag_of_every_command_is_in_the_cli_reference() -> None:
    page = PAGE.read_text()
    for name, parser in subcommands(build_parser()).items():
        section = page.split(f"\n## callstate {name}\n", 1)[1].split("\n## ", 1)[0]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            for flag in action.option_strings or [action.metavar or action.dest]:
                assert f"`{flag}" in section, f"callstate {name} {flag} is not in docs/cli.md"


@pytest.mark.parametrize("args, command", [(["call", "--outcom", "hold"], "call"),
                                           (["load", "--calls", "1", "--concurrenc", "2"], "load"),
                                           (["health", "--targe", "REFUSED"], "health"),
                                           (["load", "--no-such-flag"], "load")])
def test_abbreviations_and_unknown_flags_are_refused_pointing_at_the_commands_help(args: list[str], command: str,
                                                                                    refused_target: str) -> None:
    result = cli(*(refused_target if a == "REFUSED" else a for a in args))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"callstate {command}: error: ") and line.endswith(f"(see callstate {command} --help)"), line


def test_an_abort_code_without_an_abort_is_refused(refused_target: str) -> None:
    """`call --code 5001` alone made a call that completed, the code silently dropped."""
    for args in (["--code", "5001"], ["--outcome", "fatal", "--grpc-status", "9"],
                 ["--pipe", "out", "--code", "7"]):
        result = cli("call", "--target", refused_target, *args)
        assert result.returncode == 2, (args, result.stderr)
        [line] = result.stderr.strip().splitlines()
        assert "apply to --outcome abort only" in line or "applies to --outcome abort only" in line, line


def test_the_keepalive_default_is_30_seconds_on_every_side() -> None:
    """The documented default (docs/cli.md, README "Security"): a silent peer is given up on
    within 30 s, pinging every 12 s, on clients, servers and every CLI command."""
    from callstate.client.channel import ChannelSettings, keepalive_options
    from callstate.server.security import keepalive_options as server_keepalive_options
    from callstate.wire import DEFAULT_KEEPALIVE

    assert DEFAULT_KEEPALIVE == 30.0
    assert ("grpc.keepalive_time_ms", 12_000) in ChannelSettings().options()
    assert ("grpc.keepalive_timeout_ms", 12_000) in keepalive_options(DEFAULT_KEEPALIVE)
    from callstate.server.app import ServerOptions
    assert ("grpc.keepalive_time_ms", 12_000) in server_keepalive_options(ServerOptions().keepalive)
    for name, parser in subcommands(build_parser()).items():
        for action in parser._actions:
            if "--keepalive" in action.option_strings:
                assert action.default == 30.0, name
    assert "give up on a server that stops answering" in PAGE.read_text() and "(default: 30.0)" in PAGE.read_text()


def test_watch_of_one_call_prints_its_history_and_exits_when_it_has_ended(shared_server: ServerProcess) -> None:
    """`watch --call-id` of an ended call waited forever for entries that had all been written."""
    from callstate.client import Client, Script

    with Client(shared_server.target) as client:
        call = client.start(Script("complete"))
        call.result(10)
    shared_server.wait_entries(call.call_id)
    done = cli("watch", "--target", shared_server.target, "--call-id", call.call_id, "--json", timeout=30)
    assert done.returncode == 0, done.stderr
    got = [json.loads(x) for x in done.stdout.splitlines()]
    assert [e["state"] for e in got] == ["D", "Comp", "End"] and {e["call_id"] for e in got} == {call.call_id}


def test_watch_of_one_call_follows_it_live_and_exits_at_its_end(shared_server: ServerProcess) -> None:
    from callstate.client import Client, Script

    with Client(shared_server.target) as client:
        call = client.start(Script("hold"))
        shared_server.wait_entries(call.call_id, until=lambda es: [e["state"] for e in es] == ["D"])
        watch = subprocess.Popen([sys.executable, "-m", "callstate", "watch", "--target", shared_server.target,
                                  "--call-id", call.call_id, "--json"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            assert watch.stdout is not None
            first = json.loads(watch.stdout.readline())   # its history so far: dispatched
            assert first["state"] == "D"
            call.cancel()
            with pytest.raises(Exception):
                call.result(10)
            out, err = watch.communicate(timeout=30)
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait(10)
    assert watch.returncode == 0, err
    assert [json.loads(x)["state"] for x in out.splitlines()][-2:] == ["A", "End"]


def test_ctrl_c_while_a_command_loads_exits_130_without_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the first half second of `callstate conformance` (its modules importing grpc)
    printed a KeyboardInterrupt traceback: it is an interrupted command like any other."""
    import callstate.cli as cli_module

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt
    monkeypatch.setattr(cli_module, "build_parser", interrupted)
    try:
        status = cli_module.main(["conformance", "--help"])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main(): the user gets its traceback")
    assert status == 130
