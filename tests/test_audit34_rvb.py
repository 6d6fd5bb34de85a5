"""Review (session 34, rvb34) of the commands that catch Ctrl-C getting Python's handler back when
started with SIGINT ignored.

main() run in a process that goes on (a test; pytest run as a script's background job, which
ignores SIGINT) must give back the handler it found, however the command ends
(docs/testing.md, "In-process main() leaves nothing behind"). The handler given for the run of
call, watch, load and conformance stayed after it: Python's, where SIGINT had been ignored, so
from then on that process took a Ctrl-C meant for the foreground job, and every process it
started afterwards had SIGINT at its default instead of ignored. A run that starts an event loop
left the same (asyncio puts Python's handler back when it removes its own, never an ignored one).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Iterator

import pytest


@pytest.fixture
def sigint_ignored() -> Iterator[None]:
    """SIGINT ignored for the test, as in a script's background job; the handler found, back after."""
    found = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, found)


@pytest.mark.parametrize("ends", ["refused in its run", "after its event loop"])
def test_main_gives_back_an_ignored_sigint_after_running_a_command_that_catches_it(
        sigint_ignored: None, refused_target: str, tmp_path: Path, ends: str) -> None:
    from callstate.cli import main

    if ends == "refused in its run":   # past the parse, refused before any call (no event loop)
        argv = ["call", "--target", refused_target, "--method", "no.Such/Method", "--proto",
                str(tmp_path / "absent.proto")]
        expected = 2
    else:   # the call made, its event loop run and closed: 1722 from the refused port
        argv = ["call", "--target", refused_target, "--outcome", "complete", "--timeout", "10"]
        expected = 1
    assert main(argv) == expected
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN, "main() left Python's handler in place of the ignored one"


def test_the_run_itself_still_has_python_s_handler(sigint_ignored: None, monkeypatch: pytest.MonkeyPatch,
                                                  refused_target: str, tmp_path: Path) -> None:
    """The fix gives the ignored handler back only after the run: during it, Python's is in place
    (flk34's fix: a Ctrl-C before the command's own handler is not lost)."""
    import callstate.cli.call as call_command
    from callstate.cli import main

    during: list[object] = []

    def run(opts: object) -> int:
        during.append(signal.getsignal(signal.SIGINT))
        return 0
    monkeypatch.setattr(call_command, "run", run)
    assert main(["call", "--target", refused_target]) == 0
    assert during == [signal.default_int_handler]
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_command_that_never_catches_ctrl_c_ignores_it_while_it_loads_too(
        sigint_ignored: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`callstate check log &` in a script ignores the terminal's Ctrl-C once loaded (it installs
    no handler of its own); one that came while it loaded was noted and ended it with 130, as if
    it had been a foreground command. Now it runs on (2: the absent log), the handler untouched."""
    import callstate.cli as cli_module

    real, during = cli_module.build_parser, []

    def loading(*args: object, **kwargs: object) -> object:
        during.append(signal.getsignal(signal.SIGINT))
        signal.raise_signal(signal.SIGINT)   # the terminal's Ctrl-C, in the middle of the imports
        return real(*args, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(cli_module, "build_parser", loading)
    assert cli_module.main(["check", str(tmp_path / "absent.jsonl")]) == 2   # 130 before
    assert during == [signal.SIG_IGN]
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.parametrize("command", ["call", "serve"])
def test_a_command_that_catches_ctrl_c_still_notes_it_while_it_loads(
        sigint_ignored: None, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """call, watch, load, conformance and serve catch SIGINT once started, ignored or not: one while
    they load is noted (130), as before."""
    import callstate.cli as cli_module

    real = cli_module.build_parser

    def loading(*args: object, **kwargs: object) -> object:
        signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(cli_module, "build_parser", loading)
    argv = ["call", "--target", "127.0.0.1:1"] if command == "call" else ["serve", "--port", "0"]
    assert cli_module.main(argv) == 130
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
