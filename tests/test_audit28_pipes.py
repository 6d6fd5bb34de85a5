"""Asynchronous pipes used from a harness, as a test engineer uses them: bad input to
`callstate call --pipe` is refused with one line and exit 2 before anything is logged."""

from __future__ import annotations

import asyncio
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from callstate import codes
from callstate.client import AsyncClient, CallError, Client, PipeScript
from callstate.cancel_points import BEFORE_START
from callstate.lifecycle import CAN, NULL_PUSH, PIPE_BOTH, PIPE_IN, PIPE_OUT, C
from callstate.scenario import Scenario, parse_cancel_shares
from callstate.script import Mix

from tests.conftest import ServerProcess, cli, read_entries, start_server

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


@pytest.mark.parametrize("args, kind", [
    (("--pipes", "in=50", "--pipe-cancel-at", "after-received:2"), "in"),
    (("--pipes", "in=40,out=40", "--pipe-cancel-at", "after-sent:1,after-half-close"), "out"),
    (("--pipes", "out=50", "--pipe-cancel-at", "after-half-close"), "out"),
])
def test_load_refuses_pipe_cancel_points_that_apply_to_no_pipe_of_a_kind(shared_server: ServerProcess,
                                                                          tmp_path: Path, args: tuple[str, ...],
                                                                          kind: str) -> None:
    """`--pipe-cancel-at` names where cancelled pipes are cancelled: a kind in --pipes that none of
    the named points applies to was cancelled after its headers, a point nobody named, and the
    run's paths counted it so. Refused like a named point past --pipe-messages: exit 2, one line."""
    log = tmp_path / "client.jsonl"
    result = cli("load", "--target", shared_server.target, "--calls", "20", "--seed", "3",
                 "--cancel", "abortive=100", *args, "--log-file", str(log), timeout=90)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert f"none of its points applies to an {kind} pipe" in lines[-1], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not log.exists() or log.read_bytes() == b""


def test_load_takes_pipe_cancel_points_that_each_kind_reaches(shared_server: ServerProcess, tmp_path: Path) -> None:
    """The refusal above is not over-eager: one point per kind is enough, and every cancelled
    pipe is cancelled at a point that was named."""
    log, report = tmp_path / "client.jsonl", tmp_path / "load.json"
    result = cli("load", "--target", shared_server.target, "--calls", "30", "--seed", "3", "--cancel", "abortive=100",
                 "--pipes", "in=50,out=50", "--pipe-cancel-at", "after-sent:1,after-received:1",
                 "--log-file", str(log), "--report", str(report), timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    text = report.read_text()
    assert "pipe-cancel-at-after-headers" not in text
    assert "pipe-cancel-at-after-sent" in text and "pipe-cancel-at-after-received" in text


def locust_user_with(tmp_path: Path, host: str, attributes: str) -> subprocess.CompletedProcess[str]:
    """A headless Locust run of a CallstateUser subclass `Mine` with `attributes` (class body
    lines) against `host`, where nobody listens: a refused setting must stop it before any call."""
    (tmp_path / "badattr.py").write_text("import callstate.locust\n\n\nclass Mine(callstate.locust.CallstateUser):\n"
                                         + attributes)
    return subprocess.run([sys.executable, "-m", "locust", "-f", "badattr.py", "--headless", "-t", "1s",
                           "--host", host], cwd=tmp_path, capture_output=True, text=True, timeout=90)


def test_locust_refuses_pipe_cancel_points_that_apply_to_no_pipe_of_a_kind(tmp_path: Path,
                                                                           refused_target: str) -> None:
    """The Locust user takes the same scenario, and refuses the same way (exit 2, no traceback)."""
    bad = locust_user_with(tmp_path, refused_target, "    pipes = 'in=10'\n    pipe_cancel_at = 'after-received:2'\n")
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "callstate: Mine: pipe_cancel_at: none of after-received:2 applies to an in pipe" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_load_verdict_counts_pipes_among_the_calls_that_tried(tmp_path: Path) -> None:
    """The verdict's "no call could run: all N were turned away" compared the 1723s of every call
    with the unary calls alone (pipes were never counted as attempted): a run whose pipes were
    turned away (their two messages do not fit the server's reply backlog) while its unary calls
    ran was judged FAILED, "all 2 were turned away", with 30 turned away and 40 calls."""
    server = start_server(tmp_path, "--max-reply-backlog", "1000")
    try:
        result = cli("load", "--target", server.target, "--calls", "40", "--seed", "1", "--payload", "600",
                     "--pipes", "out=50,both=40", "--log-file", str(tmp_path / "client.jsonl"), timeout=120)
    finally:
        server.stop()
    busy = re.search(r"^\s*1723 RPC_S_SERVER_TOO_BUSY\s+(\d+)", result.stdout, re.M)
    assert busy and int(busy.group(1)) > 2, result.stdout   # the pipes were turned away, the unary calls not
    assert "no call could run" not in result.stdout, result.stdout
    assert "check: OK" in result.stdout and result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


# -- the null push is a push (of zero elements): refused as push() is --------------------------------
EXPECTED_NULL_PUSH = {"on an out pipe": codes.RPC_X_WRONG_PIPE_ORDER, "twice": codes.RPC_X_PIPE_CLOSED,
                      "after a cancel": codes.RPC_X_PIPE_CLOSED, "once the outcome is in": codes.RPC_X_PIPE_CLOSED}
ABORT_AT_ONCE = PipeScript(outcome="abort", abort_code=5001, at="before-first")


def _wait_outcome(pipe: Any) -> None:
    deadline = time.monotonic() + 30
    while not pipe.outcome_known:
        assert time.monotonic() < deadline, "the server's abort never arrived"
        time.sleep(0.01)


def test_sync_null_push_is_refused_as_a_push(shared_server: ServerProcess, tmp_path: Path) -> None:
    """close_push() on an out pipe, a second time, after a cancel or once the outcome arrived
    was 1915 or, on an ended call, accepted and logged as a null push the wire never carried."""
    log, got, ended_id = tmp_path / "client.jsonl", {}, ""
    with Client(shared_server.target, log=str(log)) as client:
        got["on an out pipe"] = _refused(client.pipe("out", PipeScript()).start().close_push)
        twice = client.pipe("in", PipeScript()).start()
        twice.close_push()
        got["twice"] = _refused(twice.close_push)
        assert twice.result().received == 0
        cancelled = client.pipe("in", PipeScript(outcome="hold")).start()
        cancelled.cancel(abortive=False, timeout=10.0)
        got["after a cancel"] = _refused(cancelled.close_push)
        ended = client.pipe("in", ABORT_AT_ONCE).start()
        ended_id = ended.call_id
        _wait_outcome(ended)
        got["once the outcome is in"] = _refused(ended.close_push)
        with pytest.raises(CallError) as err:
            ended.result()
        assert err.value.code == 5001
        for pipe in (cancelled,):
            with pytest.raises(CallError):
                pipe.result()
    assert got == EXPECTED_NULL_PUSH
    assert NULL_PUSH not in [e.get("move") for e in read_entries(log, ended_id)]
    _checked(shared_server, log)


def test_async_null_push_is_refused_as_a_push(shared_server: ServerProcess, tmp_path: Path) -> None:
    log, got = tmp_path / "client.jsonl", {}

    async def run() -> str:
        async with AsyncClient(shared_server.target, log=str(log)) as client:
            got["on an out pipe"] = await _refused_async(client.pipe("out", PipeScript()).start().close_push)
            twice = client.pipe("in", PipeScript()).start()
            await twice.close_push()
            got["twice"] = await _refused_async(twice.close_push)
            assert (await twice.result()).received == 0
            cancelled = client.pipe("in", PipeScript(outcome="hold")).start()
            await cancelled.headers()
            cancelled.cancel(abortive=False, timeout=10.0)
            got["after a cancel"] = await _refused_async(cancelled.close_push)
            with pytest.raises(CallError):
                await cancelled.result()
            ended = client.pipe("in", ABORT_AT_ONCE).start()
            deadline = time.monotonic() + 30
            while not ended.outcome_known:
                assert time.monotonic() < deadline, "the server's abort never arrived"
                await asyncio.sleep(0.01)
            got["once the outcome is in"] = await _refused_async(ended.close_push)
            with pytest.raises(CallError) as err:
                await ended.result()
            assert err.value.code == 5001
            return ended.call_id

    ended_id = asyncio.run(run())
    assert got == EXPECTED_NULL_PUSH
    assert NULL_PUSH not in [e.get("move") for e in read_entries(log, ended_id)]
    _checked(shared_server, log)


def _refused(op: Any) -> int:
    with pytest.raises(CallError) as err:
        op()
    return err.value.code


async def _refused_async(op: Any) -> int:
    with pytest.raises(CallError) as err:
        await op()
    return err.value.code


def _checked(server: ServerProcess, log: Path) -> None:
    """`callstate check` over the client's log and the server's: every pipe ended once, legally."""
    ids = {e["call_id"] for e in read_entries(log)}
    for call_id in ids:   # the server's End of each is in before the check reads its log
        server.wait_entries(call_id)
    result = cli("check", str(log), str(server.log))
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]


@pytest.mark.parametrize("args, says", [
    (("--pipe", "in", "--payload", "abc"), "--payload applies to unary calls"),
    (("--pipe", "both", "--reply-bytes", "64", "--echo"), "--echo and --reply-bytes apply to unary calls"),
    (("--pipe", "out", "--messages", "5"), "--messages applies to the caller's pushes: on an out pipe"),
    (("--pipe", "out", "--message-bytes", "5", "--interval", "1"), "--message-bytes and --interval apply to the caller's"),
    (("--pipe", "in", "--server-messages", "7"), "--server-messages applies to the server's pushes: on an in pipe"),
    (("--pipe", "in", "--server-message-bytes", "7"), "--server-message-bytes applies to the server's pushes"),
    (("--messages", "5"), "--messages applies to pipes (--pipe in, out or both)"),
    (("--server-messages", "5", "--log-messages"), "--server-messages and --log-messages apply to pipes"),
    (("--at", "after-in"), "--at applies to pipes"),
    (("--pipe", "both", "--at-count", "2"), "--at-count applies to --at after-in or after-out"),
])
def test_call_refuses_options_the_call_would_drop(shared_server: ServerProcess, tmp_path: Path,
                                                  args: tuple[str, ...], says: str) -> None:
    """Options that cannot apply to the call's kind were dropped without a word (exit 0 having
    done less than asked: `--pipe in --payload abc` pushed zero-byte messages)."""
    log = tmp_path / "client.jsonl"
    result = cli("call", "--target", shared_server.target, *args, "--log-file", str(log))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1 and says in result.stderr, result.stderr
    assert not log.exists() or log.read_bytes() == b""


def test_call_takes_the_options_that_apply(shared_server: ServerProcess, tmp_path: Path) -> None:
    """The refusals above are not over-eager: each side's options on a pipe that has that side."""
    for args, line in ((("--pipe", "both", "--messages", "2", "--message-bytes", "3", "--server-messages", "4",
                         "--at", "after-in", "--at-count", "2"), "pushed 2, pulled"),
                       (("--pipe", "out", "--server-messages", "2", "--server-message-bytes", "5"), "pushed 0, pulled 2"),
                       (("--pipe", "in", "--messages", "2", "--interval", "0.01"), "pushed 2, pulled 0")):
        result = cli("call", "--target", shared_server.target, *args)
        assert result.returncode == 0 and line in result.stderr, result.stdout + result.stderr   # the final line


@pytest.mark.parametrize("args, says", [
    (("--pipe-messages", "3"), "--pipe-messages applies to pipes: add --pipes"),
    (("--pipe-cancel-at", "after-sent:1", "--pipe-messages", "2"), "--pipe-cancel-at and --pipe-messages apply to pipes"),
])
def test_load_refuses_pipe_options_without_pipes(shared_server: ServerProcess, tmp_path: Path,
                                                 args: tuple[str, ...], says: str) -> None:
    """Without --pipes no call is a pipe: --pipe-messages and --pipe-cancel-at were dropped without
    a word (the run exited 0 having done none of what they asked)."""
    log = tmp_path / "client.jsonl"
    result = cli("load", "--target", shared_server.target, "--calls", "5", *args, "--log-file", str(log), timeout=90)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert says in result.stderr.strip().splitlines()[-1] and result.stdout == "", result.stderr
    assert not log.exists() or log.read_bytes() == b""


@pytest.mark.parametrize("args, says", [
    (("--pipe", "out", "--outcome", "hold", "--at", "after-out", "--at-count", "1", "--cancel-at", "after-received:2"),
     "the server's outcome comes after its 1 push"),
    (("--pipe", "out", "--outcome", "hold", "--at", "before-first", "--cancel-at", "after-received:1"),
     "the server pushes nothing before its outcome"),
    (("--pipe", "both", "--at", "after-out", "--at-count", "2", "--cancel-at", "after-received:3"),
     "the server's outcome comes after its 2 pushes"),
])
def test_call_refuses_a_pull_count_the_server_stops_short_of(shared_server: ServerProcess, tmp_path: Path,
                                                             args: tuple[str, ...], says: str) -> None:
    """The server pushes nothing after its outcome's point: a held pipe waited for --max-hold and
    ended 1460 (a complete one ended 0), the asked-for cancel never made. Refused like a count
    past --server-messages."""
    log = tmp_path / "client.jsonl"
    result = cli("call", "--target", shared_server.target, *args, "--log-file", str(log), timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr
    assert "can never fire: " + says in result.stderr, result.stderr
    assert not log.exists() or log.read_bytes() == b""
    reached = cli("call", "--target", shared_server.target, "--pipe", "out", "--outcome", "hold", "--at", "after-out",
                  "--at-count", "2", "--cancel-at", "after-received:2", timeout=60)
    assert reached.returncode == 1 and "1818 RPC_S_CALL_CANCELLED" in reached.stderr, reached.stdout + reached.stderr


def test_misused_pushes_and_starts_say_what_is_wrong(shared_server: ServerProcess, tmp_path: Path) -> None:
    """A push of something that is not bytes said "object of type 'NoneType' has no len()" (a unary
    call's payload is refused by name); a second start() said another start was under way."""
    log = tmp_path / "client.jsonl"
    with Client(shared_server.target, log=str(log)) as client:
        pipe = client.pipe("in", PipeScript()).start()
        for bad in (None, "abc", 5):
            with pytest.raises(TypeError, match=f"push: a message must be bytes, not {type(bad).__name__}$"):
                pipe.push(bad)   # type: ignore[arg-type]
        with pytest.raises(CallError) as err:
            pipe.start()
        assert err.value.code == codes.RPC_S_INVALID_ASYNC_CALL
        assert err.value.details == "start() in state Push: the call was started or cancelled already"
        pipe.push(b"x")
        pipe.close_push()
        assert pipe.result().received == 1   # the refused pushes left the pipe as it was
    _checked(shared_server, log)


@pytest.mark.parametrize("args, never", [
    (("--cancel-before-start", "--cancel-after", "1"), "--cancel-after is never reached"),
    (("--pipe", "out", "--cancel-before-start", "--cancel-at", "after-headers"), "--cancel-at is never reached"),
])
def test_call_refuses_a_cancel_after_the_cancel_before_start(shared_server: ServerProcess, tmp_path: Path,
                                                             args: tuple[str, ...], never: str) -> None:
    """--cancel-before-start cancels in C: a later cancel point given with it was dropped without
    a word (the pipe was cancelled before start, not after its headers)."""
    log = tmp_path / "client.jsonl"
    result = cli("call", "--target", shared_server.target, *args, "--log-file", str(log))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1 and never in result.stderr, result.stderr
    assert not log.exists() or log.read_bytes() == b""


def test_a_held_pipe_the_generator_ends_is_held_first() -> None:
    """A held pipe not in the cancelled share drew its point from all the pipe points, before-start
    included: cancelled in C, it never reached the server, yet the paths line counted it as a held
    call the generator ended (hold-for), and the log's before-start pipes outnumbered the paths'."""
    scenario = Scenario(pipes={PIPE_IN: 34.0, PIPE_OUT: 33.0, PIPE_BOTH: 33.0}, mix=Mix.parse("hold=100"),
                        cancel=parse_cancel_shares("none"))
    rng = random.Random(5)
    plans = [scenario.plan(rng) for _ in range(2000)]
    assert all(p.ends_hold and p.pipe is not None for p in plans)
    drawn = {p.pipe_point.kind for p in plans if p.pipe_point is not None}
    assert BEFORE_START not in drawn and len(drawn) > 2, drawn
    cancelled = Scenario(pipes={PIPE_IN: 100.0}, mix=Mix.parse("hold=100"), cancel=parse_cancel_shares("abortive=100"))
    assert any(p.pipe_point is not None and p.pipe_point.kind == BEFORE_START   # a cancel asked for still may be
               for p in (cancelled.plan(rng) for _ in range(500)))


def test_load_paths_count_the_pipes_cancelled_before_start_as_the_log_does(shared_server: ServerProcess,
                                                                           tmp_path: Path) -> None:
    log, report = tmp_path / "client.jsonl", tmp_path / "load.json"
    result = cli("load", "--target", shared_server.target, "--calls", "150", "--seed", "9", "--mix", "hold=60,complete=40",
                 "--pipes", "in=30,out=30,both=40", "--log-file", str(log), "--report", str(report), timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    paths = orjson.loads(report.read_bytes())["paths"]
    in_c = {e["call_id"] for e in read_entries(log) if e["state"] == CAN and e.get("prev") == C}
    assert paths.get("pipe-cancel-at-before-start", 0) == len(in_c), (paths, len(in_c))


def test_locust_refuses_pipe_settings_without_pipes(tmp_path: Path, refused_target: str) -> None:
    """As `callstate load` does: pipe_messages / pipe_cancel_at with no pipes were dropped unsaid."""
    bad = locust_user_with(tmp_path, refused_target, "    pipe_messages = 2\n")
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "callstate: Mine: pipe_messages applies to pipes: set pipes" in bad.stderr, bad.stderr[-2000:]
    assert "Traceback" not in bad.stderr
