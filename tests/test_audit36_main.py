"""Session 36, mine: an option typed at its default value where it does not apply is refused as
any other value of it is (the parser records what the command line gave: `given_dests`)."""

from __future__ import annotations

import pytest

from callstate.cli import main

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("args, says", [
    (["--messages", "3"], "--messages applies to pipes"),                       # 3 is --messages' default
    (["--at", "end"], "--at applies to pipes"),                                 # ... and end --at's
    (["--pipe", "out", "--messages", "3"], "--messages applies to the caller's pushes"),
    (["--pipe", "in", "--server-messages", "3"], "--server-messages applies to the server's pushes"),
])
def test_an_option_typed_at_its_default_where_it_does_not_apply_is_refused(
        args: list[str], says: str, refused_target: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`call --messages 3` without --pipe went out as a unary call without a word, while `--messages 4`
    was refused: the check compared values with the defaults, and 3 is the default."""
    assert main(["call", "--target", refused_target, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


def test_an_option_typed_where_it_applies_is_taken(refused_target: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The same options where they apply are no usage error: the call is made (and fails to connect)."""
    for args in (["--pipe", "in", "--messages", "3"], ["--pipe", "out", "--server-messages", "3", "--at", "end"]):
        assert main(["call", "--target", refused_target, *args]) == 1, args
        assert "(see callstate call --help)" not in capsys.readouterr().err   # no usage line
