"""Asynchronous pipes used from a harness, as a test engineer uses them: bad input to
`callstate call --pipe` is refused with one line and exit 2 before anything is logged."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ServerProcess, cli

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("args, says", [
    (("--pipe", "in", "--breach", "push-after-end"), "push-after-end does not apply to an in pipe"),
    (("--pipe", "out", "--breach", "complete-undrained"), "complete-undrained does not apply to an out pipe"),
    (("--pipe", "out", "--at", "after-in"), "after-in does not apply to an out pipe"),
    (("--pipe", "out", "--at", "after-half-close"), "after-half-close does not apply to an out pipe"),
    (("--pipe", "in", "--at", "after-out", "--at-count", "2"), "after-out does not apply to an in pipe"),
    (("--pipe", "both", "--breach", "complete-undrained"), "complete-undrained needs a point before the end"),
])
def test_a_script_the_pipe_kind_cannot_run_is_usage(shared_server: ServerProcess, tmp_path: Path,
                                                    args: tuple[str, ...], says: str) -> None:
    """A server script that cannot apply to the pipe's kind is the command line's mistake: one
    line, exit 2, and no call in either log (it was a logged start_failed 87 and exit 1)."""
    log = tmp_path / "client.jsonl"
    before = shared_server.log.read_bytes() if shared_server.log.exists() else b""
    result = cli("call", "--target", shared_server.target, *args, "--log-file", str(log))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert not log.exists() or log.read_bytes() == b""
    after = shared_server.log.read_bytes() if shared_server.log.exists() else b""
    assert after == before
