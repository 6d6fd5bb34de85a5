"""Flakiness audit: races and leaks in the product that made tests depend on their order."""

from __future__ import annotations

import signal
from typing import Any

import pytest

HANDLED = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]


def _handlers() -> dict[int, Any]:
    return {sig: signal.getsignal(sig) for sig in HANDLED}


@pytest.mark.parametrize("argv", [["serve", "--max-hold", "1e300"], ["serve", "--no-such-flag"]])
def test_serve_refused_at_parse_time_gives_back_the_signal_handlers(argv: list[str],
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """main() notes Ctrl-C, SIGTERM and SIGHUP while `serve` loads and keeps that handler until the
    server installs its own. A `serve` refused by argparse never got there: its handler stayed in
    the calling process (a test run: Ctrl-C and SIGTERM were then only noted, never acted on, and
    tests/test_early_interrupt.py failed when it ran after tests/test_hostile.py)."""
    from callstate.cli import main

    before = _handlers()
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and capsys.readouterr().err
    assert _handlers() == before


def test_serve_interrupted_while_it_loads_gives_back_the_signal_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while `serve`'s modules load: 130, and the handlers are those found before."""
    import callstate.cli as cli_module

    real = cli_module.build_parser

    def loading(*args: object, **kwargs: object) -> object:
        signal.raise_signal(signal.SIGINT)   # noted by main()'s handler, not raised
        return real(*args, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(cli_module, "build_parser", loading)
    before = _handlers()
    assert cli_module.main(["serve", "--port", "0"]) == 130
    assert _handlers() == before
