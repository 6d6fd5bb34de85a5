"""Review 32's findings on the day's change: each test names the defect it guards."""

from __future__ import annotations

import pytest

import callstate.cli as cli_module


def test_an_outcome_point_of_the_other_side_is_refused_for_the_kind_not_the_count(
        refused_target: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`call --pipe in --at after-out --at-count 5` said 'is never reached: the server pushes only 3
    messages (--server-messages)', as if more --server-messages would do: an in pipe's server pushes
    none. The point's kind is judged first; refused before any connection (exit 2, one line)."""
    status = cli_module.main(["call", "--target", refused_target, "--pipe", "in", "--at", "after-out", "--at-count", "5"])
    assert (status, capsys.readouterr().err.strip()) == (
        2, "callstate call: --pipe in: script.at: after-out does not apply to an in pipe")
