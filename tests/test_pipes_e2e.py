"""Asynchronous pipes end to end: a real `callstate serve` process, real gRPC streams over a real
socket, every cancel point on each pipe kind (abortive and non-abortive), every outcome point,
both sides' logs checked by `callstate.check`."""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from callstate import codes
from callstate.grpc_status import grpc_status_for
from callstate.logfile import check_files
from callstate.client import AsyncClient, CallError, Client, PipeScript
from callstate.client.pipe_drive import drive_pipe, drive_pipe_sync
from callstate.pipe_script import PipeCancelPoint
from callstate.lifecycle import END
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess, check_own, cli, final, read_entries, start_server, states
from tests.documentation import section

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pipe_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("pipes"), "--max-hold", "20")
    yield srv
    srv.stop()


async def run_pipe(srv: ServerProcess, log: Path, kind: str, script: PipeScript, *, messages: int = 4,
                   cancel_at: str | None = None, abortive: bool = True, timeout: float | None = None,
                   ) -> tuple[int, Any, Any, list[dict[str, Any]]]:
    """One pipe call driven to its end: (final code, reply or error, the pipe, server entries)."""
    async with AsyncClient(srv.target, log=log, timeout=timeout) as client:
        pipe = client.pipe(kind, script)
        try:
            reply = await drive_pipe(pipe, messages=messages, abortive=abortive,
                                     cancel_at=PipeCancelPoint.parse(cancel_at) if cancel_at else None)
            code = codes.RPC_S_OK
        except CallError as err:
            code, reply = err.code, err
    entries = await srv.await_entries(pipe.call_id) if cancel_at != "before-start" else []
    return code, reply, pipe, entries


def check_both(log: Path, srv: ServerProcess) -> None:
    report = check_own(log, srv)   # the module's server: only this test's calls
    assert report.ok, report.summary()


# -- cancel at every point ------------------------------------------------------------------------
CANCEL_POINTS = {
    "in": ["before-start", "after-headers", "after-sent:2", "after-half-close"],
    "out": ["before-start", "after-headers", "after-received:2"],
    "both": ["before-start", "after-headers", "after-sent:2", "after-received:2", "after-half-close"],
}
CASES = [(kind, point, abortive) for kind, points in CANCEL_POINTS.items() for point in points
         for abortive in (True, False)]


@pytest.mark.parametrize("kind,point,abortive", CASES,
                         ids=[f"{k}-{p}-{'abortive' if a else 'non-abortive'}" for k, p, a in CASES])
def test_cancel_at_every_point(pipe_server: ServerProcess, tmp_path: Path, kind: str, point: str,
                               abortive: bool) -> None:
    log = tmp_path / "client.jsonl"
    script = PipeScript(outcome="hold", interval=0.005)   # the server keeps its pipes open until the cancel
    code, err, pipe, server = asyncio.run(run_pipe(pipe_server, log, kind, script, cancel_at=point, abortive=abortive))
    assert_cancelled_at(pipe_server, log, kind, point, abortive, code, err, pipe, server)


def assert_cancelled_at(srv: ServerProcess, log: Path, kind: str, point: str, abortive: bool, code: int, err: Any,
                        pipe: Any, server: list[dict[str, Any]]) -> None:
    """A held pipe cancelled at `point`: the cancel's path on both sides, both logs checked."""
    assert code == codes.RPC_S_CALL_CANCELLED, err
    history = pipe.history
    assert history[-4:] == ["Can", "WComp", "Comp", "End"], history
    if point == "before-start":
        assert history == ["C", "Can", "WComp", "Comp", "End"]
        assert server == []                     # the call never went out
    else:
        count = int(point.split(":")[1]) if ":" in point else 0
        if point.startswith("after-sent"):
            assert pipe.sent == count
        if point.startswith("after-received"):
            assert pipe.received >= count
        if point == "after-half-close":
            assert "WComp" in history[:-3] or "Pull" in history   # the null push came before the cancel
        seen = [e["cancel"] for e in server if e["event"] == "cancel_seen"]
        assert seen[:1] == ["abortive" if abortive else "non-abortive"], server
        assert states(server)[-2:] == ["A", "End"] and final(server)["code"] == codes.RPC_S_CALL_CANCELLED
        # the server takes the caller's stream end for a null push only when there was one (after the
        # half-close it may or may not have seen the null push before the cancel overtook it)
        client_null_push = any(e.get("move") == "null_push" for e in read_entries(log, pipe.call_id))
        assert client_null_push == (point == "after-half-close" or (kind == "both" and "Pull" in history))
        if not client_null_push:
            assert "NP" not in states(server), states(server)
    check_both(log, srv)


def run_pipe_sync(srv: ServerProcess, log: Path, kind: str, script: PipeScript, *, messages: int = 4,
                  cancel_at: str | None = None, abortive: bool = True) -> tuple[int, Any, Any, list[dict[str, Any]]]:
    """`run_pipe` with the sync client and `drive_pipe_sync` (the Locust user's driver)."""
    with Client(srv.target, log=log) as client:
        pipe = client.pipe(kind, script)
        try:
            reply = drive_pipe_sync(pipe, messages=messages, abortive=abortive, escalate_after=5.0,
                                    cancel_at=PipeCancelPoint.parse(cancel_at) if cancel_at else None)
            code = codes.RPC_S_OK
        except CallError as err:
            code, reply = err.code, err
    entries = srv.wait_entries(pipe.call_id) if cancel_at != "before-start" else []
    return code, reply, pipe, entries


@pytest.mark.parametrize("kind,point,abortive", CASES,
                         ids=[f"{k}-{p}-{'abortive' if a else 'non-abortive'}" for k, p, a in CASES])
def test_the_sync_driver_cancels_at_every_point(pipe_server: ServerProcess, tmp_path: Path, kind: str, point: str,
                                                abortive: bool) -> None:
    log = tmp_path / "client.jsonl"
    script = PipeScript(outcome="hold", interval=0.005)
    code, err, pipe, server = run_pipe_sync(pipe_server, log, kind, script, cancel_at=point, abortive=abortive)
    assert_cancelled_at(pipe_server, log, kind, point, abortive, code, err, pipe, server)


SYNC_OUTCOMES = [("in", PipeScript(), 0), ("out", PipeScript(messages=7), 0), ("both", PipeScript(messages=2), 0),
                 ("both", PipeScript(outcome="abort", abort_code=5004, at="after-in", at_count=2), 5004),
                 ("out", PipeScript(outcome="fatal", at="before-first"), 1726)]


@pytest.mark.parametrize("kind,script,expected", SYNC_OUTCOMES,
                         ids=[f"{k}-{s.outcome}-{s.at}" for k, s, _ in SYNC_OUTCOMES])
def test_the_sync_driver_runs_pipes_to_the_servers_outcome(pipe_server: ServerProcess, tmp_path: Path, kind: str,
                                                           script: PipeScript, expected: int) -> None:
    log = tmp_path / "client.jsonl"
    code, reply, pipe, server = run_pipe_sync(pipe_server, log, kind, script)
    assert code == expected == final(server)["code"], reply
    if expected == 0:   # every message each way, and the half-close, made it
        assert (pipe.sent, final(server)["received"]) == ((4, 4) if kind != "out" else (0, 0))
        assert pipe.received == final(server)["sent"] == (script.messages if kind != "in" else 0)
    check_both(log, pipe_server)


def test_the_sync_driver_pulls_a_both_pipe_while_it_pushes(pipe_server: ServerProcess, tmp_path: Path) -> None:
    """A `both` pipe cancelled after its first pulled message: had the driver pushed all of its
    2,000 messages before pulling, every push would have gone out before the cancel."""
    log = tmp_path / "client.jsonl"
    code, err, pipe, server = run_pipe_sync(pipe_server, log, "both", PipeScript(outcome="hold", interval=0.005),
                                            messages=2000, cancel_at="after-received:1")
    assert code == codes.RPC_S_CALL_CANCELLED, err
    assert pipe.received >= 1 and pipe.sent < 2000
    assert "Pull" not in pipe.history   # cancelled while still pushing
    check_both(log, pipe_server)


# -- the server's outcome at every point -------------------------------------------------------------
OUTCOMES = [
    ("in", PipeScript(outcome="abort", abort_code=5001, at="before-first"), 5001, ["D", "A", "End"]),
    ("in", PipeScript(outcome="abort", abort_code=5002, at="after-in", at_count=2), 5002, ["D", "Pull", "A", "End"]),
    ("in", PipeScript(outcome="fatal", at="after-half-close"), 1726, ["D", "Pull", "NP", "End"]),
    ("in", PipeScript(), 0, ["D", "Pull", "NP", "Comp", "End"]),
    ("out", PipeScript(outcome="fatal", at="before-first"), 1726, ["D", "End"]),
    ("out", PipeScript(outcome="abort", abort_code=5003, at="after-out", at_count=2, messages=10), 5003,
     ["D", "Push", "A", "End"]),
    ("out", PipeScript(messages=7), 0, ["D", "Push", "Comp", "End"]),
    ("both", PipeScript(outcome="abort", abort_code=5004, at="after-in", at_count=2), 5004, ["D", "Push", "A", "End"]),
    ("both", PipeScript(outcome="complete", at="after-out", at_count=1, messages=5), 0, ["D", "Push", "Comp", "End"]),
    ("both", PipeScript(outcome="abort", abort_code=5005, at="after-half-close"), 5005,
     ["D", "Push", "NP", "A", "End"]),
    ("both", PipeScript(messages=2), 0, ["D", "Push", "NP", "Comp", "End"]),
]


@pytest.mark.parametrize("kind,script,expected,server_path", OUTCOMES,
                         ids=[f"{k}-{s.outcome}-{s.at}" for k, s, _, _ in OUTCOMES])
def test_outcome_at_every_point(pipe_server: ServerProcess, tmp_path: Path, kind: str, script: PipeScript,
                                expected: int, server_path: list[str]) -> None:
    log = tmp_path / "client.jsonl"
    code, reply, pipe, server = asyncio.run(run_pipe(pipe_server, log, kind, script))
    assert code == expected, reply
    assert states(server) == server_path
    if script.at == "after-in":
        assert final(server)["received"] == script.at_count
    if script.at == "after-out":
        assert final(server)["sent"] == script.at_count
        assert pipe.received == script.at_count
    if expected == 0 and kind == "in":
        assert reply.received == pipe.sent == 4   # the server pulled every message the caller pushed
    if expected == 0 and kind == "out":
        assert pipe.received == script.messages
    check_both(log, pipe_server)


@pytest.mark.parametrize("kind", ["in", "both"])
def test_cancel_once_the_server_has_the_half_close(pipe_server: ServerProcess, tmp_path: Path, kind: str) -> None:
    log = tmp_path / "client.jsonl"

    async def go() -> tuple[Any, list[dict[str, Any]]]:
        async with AsyncClient(pipe_server.target, log=log) as client:
            pipe = client.pipe(kind, PipeScript(outcome="hold", messages=0)).start()
            called = asyncio.Event()
            pipe.add_done_callback(lambda p: called.set())
            await pipe.push(b"x")
            await pipe.close_push()
            entries = await pipe_server.await_entries(pipe.call_id, until=lambda es: "NP" in states(es))
            assert states(entries)[-1] == "NP"      # evidence: the server pulled the null push
            pipe.cancel()
            await asyncio.wait_for(called.wait(), 10)   # the callback style: then complete
            assert pipe.status() == codes.RPC_S_CALL_CANCELLED
            with pytest.raises(CallError) as info:
                await pipe.result(timeout=10)
            assert info.value.code == codes.RPC_S_CALL_CANCELLED
            return pipe, await pipe_server.await_entries(pipe.call_id)
    pipe, server = asyncio.run(go())
    assert pipe.history[-4:] == ["Can", "WComp", "Comp", "End"]
    assert states(server)[-3:] == ["NP", "A", "End"]
    assert [e["cancel"] for e in server if e["event"] == "cancel_seen"] == ["abortive"]
    check_both(log, pipe_server)


def test_deadline_expiring_and_deadline_met(pipe_server: ServerProcess, tmp_path: Path) -> None:
    log = tmp_path / "client.jsonl"
    code, err, pipe, server = asyncio.run(run_pipe(pipe_server, log, "both", PipeScript(outcome="hold"), timeout=0.3))
    assert code == codes.RPC_S_CALL_CANCELLED and err.grpc_status == "DEADLINE_EXCEEDED"
    assert [e["cancel"] for e in server if e["event"] == "cancel_seen"] == ["abortive"]
    # "timeout but completed before expire": the deadline does not touch a call that finished in time
    code, _, pipe, server = asyncio.run(run_pipe(pipe_server, log, "out", PipeScript(messages=3), timeout=10))
    assert code == 0 and pipe.received == 3 and final(server)["code"] == 0
    check_both(log, pipe_server)


def test_sync_pipes_follow_the_same_lifecycle(pipe_server: ServerProcess, tmp_path: Path) -> None:
    log = tmp_path / "client.jsonl"
    with Client(pipe_server.target, log=log) as client:
        pipe = client.pipe("in", PipeScript()).start()
        for _ in range(3):
            pipe.push(b"abc")
        pipe.close_push()
        reply = pipe.result(timeout=10)
        assert (reply.received, reply.received_bytes) == (3, 9)
        assert pipe.history == ["C", "Push", "WComp", "Comp", "End"]
        held = client.pipe("out", PipeScript(outcome="hold", interval=0.005)).start()
        held.headers()
        assert held.pull() is not None and held.pull() is not None
        held.cancel()
        with pytest.raises(CallError) as info:
            held.result(timeout=10)
        assert info.value.code == codes.RPC_S_CALL_CANCELLED and held.received >= 2
        assert held.history == ["C", "Pull", "Can", "WComp", "Comp", "End"]
        both = client.pipe("both", PipeScript(outcome="abort", abort_code=5006, at="after-in", at_count=1)).start()
        notified = threading.Event()
        both.add_done_callback(lambda p: notified.set())   # the callback style of notification
        both.push(b"x")
        assert notified.wait(10) and both.status() == 5006
        with pytest.raises(CallError) as info:
            both.result(timeout=10)
        assert info.value.code == 5006
    pipe_server.wait_entries(both.call_id)
    check_both(log, pipe_server)


def test_cancels_are_never_taken_for_a_half_close(pipe_server: ServerProcess, tmp_path: Path) -> None:
    """Many abortive cancels of busy streams (the server writing flat out, or pulling): every one
    is a cancel_seen on the server, none a null_pull, every stream ends once on each side."""
    log = tmp_path / "client.jsonl"

    async def go() -> list[str]:
        ids = []
        async with AsyncClient(pipe_server.target, log=log) as client:
            for kind, point in itertools.islice(itertools.cycle(
                    [("both", "after-received:3"), ("in", "after-sent:3"), ("both", "after-sent:3")]), 90):
                # the caller never half-closes: any NP would be a cancel taken for a half-close
                pipe = client.pipe(kind, PipeScript(outcome="hold", interval=0 if kind == "both" else 0.001))
                try:
                    await drive_pipe(pipe, messages=50, half_close=False, cancel_at=PipeCancelPoint.parse(point))
                except CallError:
                    pass
                ids.append(pipe.call_id)
        return ids

    ids = asyncio.run(go())
    last = pipe_server.wait_entries(ids[-1])
    assert final(last)
    by_call: dict[str, list[dict[str, Any]]] = {}
    for e in read_entries(pipe_server.log):
        by_call.setdefault(e["call_id"], []).append(e)
    for call_id in ids:
        entries = by_call[call_id]
        assert "NP" not in states(entries), entries
        assert any(e["event"] == "cancel_seen" for e in entries)
        assert sum(1 for e in entries if e["state"] == "End" and e["event"] == "enter") == 1
    check_both(log, pipe_server)


def test_message_lines_only_when_asked(tmp_path: Path) -> None:
    """1,000 messages write a handful of lines by default; one per message with --log-messages."""
    for flag, at_least, at_most in (((), 4, 6), (("--log-messages",), 1004, 1006)):
        srv = start_server(tmp_path, *flag, name=f"srv{len(flag)}")
        try:
            async def go() -> str:
                async with AsyncClient(srv.target) as client:
                    pipe = client.pipe("out", PipeScript(messages=1000))
                    await drive_pipe(pipe, messages=0)
                    assert pipe.received == 1000
                    return pipe.call_id
            call_id = asyncio.run(go())
            entries = srv.wait_entries(call_id)
            assert at_least <= len(entries) <= at_most, len(entries)
            assert (final(entries)["sent"], final(entries)["received"]) == (1000, 0)
        finally:
            srv.stop()


def test_an_empty_request_is_a_valid_pipe_call_and_a_held_out_pipe_streams_until_max_hold(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--mix", "hold=1", "--max-hold", "1")
    try:
        async def go() -> tuple[int, grpc.StatusCode, Any]:
            async with grpc.aio.insecure_channel(srv.target) as channel:
                call = pb_grpc.EmulatorStub(channel).PipeOut(pb.PipeRequest())
                n = 0
                try:
                    async for _ in call:
                        n += 1
                except grpc.aio.AioRpcError:
                    pass   # the stream ends with the max-hold status
                return n, await call.code(), await call.trailing_metadata()
        n, status, trailers = asyncio.run(go())
        assert status == grpc.StatusCode.DEADLINE_EXCEEDED and ("callstate-code", "1460") in tuple(trailers)
        assert 5 <= n <= 11, n   # one every 0.1 s until the 1 s max hold (not a fixed count)
    finally:
        srv.stop()
    assert check_files([srv.log]).ok


def test_a_script_without_an_outcome_draws_one_from_the_mix(tmp_path: Path) -> None:
    """The caller scripts the messages, the server's mix the outcome: a drawn abort ends with
    the server's --abort-code, not as an invalid script (the script was checked as sent)."""
    srv = start_server(tmp_path, "--mix", "abort=1", "--abort-code", "5003")
    try:
        async def go() -> tuple[int, grpc.StatusCode, Any]:
            async with grpc.aio.insecure_channel(srv.target) as channel:
                call = pb_grpc.EmulatorStub(channel).PipeOut(pb.PipeRequest(script=pb.PipeScript(messages=2)))
                n = 0
                try:
                    async for _ in call:
                        n += 1
                except grpc.aio.AioRpcError:
                    pass   # the stream ends with the abort's status
                return n, await call.code(), await call.trailing_metadata()
        n, status, trailers = asyncio.run(go())
        assert ("callstate-code", "5003") in tuple(trailers), (status, trailers)
        assert status == grpc_status_for(5003) and n == 2
    finally:
        srv.stop()
    assert check_files([srv.log]).ok


def test_call_cli_drives_pipes_as_the_readme_shows(pipe_server: ServerProcess) -> None:
    commands = re.findall(r"^callstate call (--pipe .*?)\s+# .*?(\d+)$", section("Asynchronous pipes"), re.M)
    assert len(commands) == 7   # five pipe calls, two breaches (1917)
    for args, code in commands:
        out = cli("call", "--target", pipe_server.target, *args.split())
        assert out.returncode == (0 if code == "0" else 1), (args, out.stderr)
        assert f"final: {code} " in out.stderr, (args, out.stderr)
    bad = cli("call", "--target", pipe_server.target, "--pipe", "out", "--cancel-at", "after-sent:1")
    assert bad.returncode == 2 and "does not apply to an out pipe" in bad.stderr and "Traceback" not in bad.stderr


def test_load_with_a_pipe_share_checks_both_sides_of_every_pipe(pipe_server: ServerProcess, tmp_path: Path) -> None:
    import json
    import time

    report_path, log = tmp_path / "report.json", tmp_path / "client.jsonl"
    result = cli("load", "--target", pipe_server.target, "--calls", "600", "--concurrency", "16", "--seed", "11",
                 "--pipes", "in=25,out=25,both=30", "--cancel", "abortive=40,non-abortive=30",
                 "--report", str(report_path), "--log-file", str(log), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert report["check"]["ok"] and report["calls"] == 600
    paths = report["paths"]
    assert {"pipe-in", "pipe-out", "pipe-both"} <= set(paths)
    assert {f"pipe-cancel-at-{p}" for p in ("before-start", "after-headers", "after-sent", "after-received",
                                            "after-half-close")} <= set(paths), paths
    pipe_calls = {e["call_id"] for e in read_entries(log) if e.get("move", "").startswith("call_")}
    assert len(pipe_calls) == paths["pipe-in"] + paths["pipe-out"] + paths["pipe-both"]
    deadline = time.monotonic() + 20
    while not (offline := check_files([log, pipe_server.log])).ok and time.monotonic() < deadline:
        time.sleep(0.1)
    assert offline.ok, offline.summary()
    bad = cli("load", "--target", pipe_server.target, "--pipes", "in=90,out=20")
    assert bad.returncode == 2 and "more than 100%" in bad.stderr and "Traceback" not in bad.stderr


def test_the_null_push_message_is_the_half_close(pipe_server: ServerProcess) -> None:
    """The caller's null push travels as a message of its own: the server takes it for the
    half-close even while the stream stays open (no end of stream to interpret), after waiting
    a moment for the stream's end."""
    async def go() -> tuple[grpc.StatusCode, Any]:
        from callstate.wire import PIPE_SCRIPT_KEY
        script = PipeScript(outcome="abort", abort_code=5007, at="after-half-close").to_proto()
        async with grpc.aio.insecure_channel(pipe_server.target) as channel:
            call = pb_grpc.EmulatorStub(channel).PipeIn(metadata=((PIPE_SCRIPT_KEY, script.SerializeToString()),),
                                                       timeout=10)
            await call.write(pb.PipeMessage(seq=1, payload=b"x"))
            await call.write(pb.PipeMessage(null_push=True))   # and no done_writing(): the stream stays open
            try:
                await call
            except grpc.aio.AioRpcError:
                pass
            return await call.code(), await call.trailing_metadata()
    status, trailers = asyncio.run(go())
    assert status == grpc.StatusCode.ABORTED and ("callstate-code", "5007") in tuple(trailers)


def test_after_the_null_push_message_the_server_answers_once_the_request_stream_ends(
        pipe_server: ServerProcess) -> None:
    """A server that answers before the request stream ends is reset by some proxies (HAProxy
    2.6 sends the caller RST_STREAM CANCEL): after the null-push message the in pipe's answer
    waits for END_STREAM, which callstate's clients send right after it."""
    async def go() -> tuple[bool, pb.PipeReply]:
        async with grpc.aio.insecure_channel(pipe_server.target) as channel:
            from callstate.wire import PIPE_SCRIPT_KEY
            script = PipeScript(outcome="complete").to_proto().SerializeToString()
            call = pb_grpc.EmulatorStub(channel).PipeIn(metadata=((PIPE_SCRIPT_KEY, script),), timeout=10)
            await call.write(pb.PipeMessage(seq=1, payload=b"x"))
            await call.write(pb.PipeMessage(null_push=True))
            answer = asyncio.ensure_future(asyncio.shield(call))
            await asyncio.wait((answer,), timeout=0.3)   # the window: no answer while the stream is open
            early = answer.done()
            await call.done_writing()
            return early, await asyncio.wait_for(answer, 5)
    early, reply = asyncio.run(go())
    assert not early, "the server answered before the request stream ended"
    assert reply.received == 1


def test_a_push_racing_the_servers_early_end_keeps_the_servers_code(pipe_server: ServerProcess, tmp_path: Path) -> None:
    """The caller keeps pushing while the server aborts after the 2nd message: grpc.aio would
    report its own INTERNAL for the failed write; the client must report the server's code."""
    log = tmp_path / "client.jsonl"

    async def go() -> list[int]:
        got = []
        async with AsyncClient(pipe_server.target, log=log) as client:
            for _ in range(25):
                pipe = client.pipe("in", PipeScript(outcome="abort", abort_code=5008, at="after-in", at_count=2))
                try:
                    await drive_pipe(pipe, messages=200)
                    got.append(0)
                except CallError as err:
                    got.append(err.code)
        return got
    assert set(asyncio.run(go())) == {5008}


def test_both_clients_send_their_null_push_as_a_message_before_the_half_close() -> None:
    """Against a recording grpc.aio server: the sync and asyncio pipes end their pipe with a
    null-push message, then half-close."""
    from callstate.v1.callstate_pb2_grpc import EmulatorServicer, add_EmulatorServicer_to_server

    seen: list[list[pb.PipeMessage]] = []

    class Recorder(EmulatorServicer):
        async def PipeIn(self, requests, context):  # type: ignore[no-untyped-def]
            got = [m async for m in requests]
            seen.append(got)
            return pb.PipeReply(received=len(got))

    async def go() -> None:
        server = grpc.aio.server()
        add_EmulatorServicer_to_server(Recorder(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with AsyncClient(f"127.0.0.1:{port}") as client:
                pipe = client.pipe("in").start()
                await pipe.push(b"a")
                await pipe.close_push()
                await pipe.result(timeout=10)

            def sync() -> None:
                with Client(f"127.0.0.1:{port}") as client:
                    pipe = client.pipe("in").start()
                    pipe.push(b"b")
                    pipe.close_push()
                    pipe.result(timeout=10)
            await asyncio.to_thread(sync)
        finally:
            await server.stop(1)
    asyncio.run(go())
    assert [[(m.payload, m.null_push) for m in got] for got in seen] == [[(b"a", False), (b"", True)],
                                                                         [(b"b", False), (b"", True)]]


def test_a_cancel_surfacing_as_grpcs_batch_error_on_a_blocked_write_is_a_cancel_seen(tmp_path: Path) -> None:
    """An out pipe whose server is stuck in `context.write` (its caller stopped pulling 1 MiB
    messages) sees the caller's cancel mostly as grpc's internal ExecuteBatchError, not as
    CancelledError: it must still be a cancel_seen (abortive) and A 1818, never a handler failure."""
    srv = start_server(tmp_path, "--log-messages")
    log = tmp_path / "client.jsonl"
    try:
        async def go() -> list[str]:
            ids = []
            async with grpc.aio.insecure_channel(srv.target) as channel, AsyncClient(srv.target, log=log) as client:
                journal = pb_grpc.JournalStub(channel)
                for _ in range(20):
                    pipe = client.pipe("out", PipeScript(messages=1000, message_bytes=1 << 20)).start()
                    await pipe.pull()
                    last, stable = -1, 0
                    deadline = asyncio.get_running_loop().time() + 10
                    while stable < 5 and asyncio.get_running_loop().time() < deadline:
                        # evidence that the server is blocked in its write: its send count stopped moving
                        history = await journal.GetCall(pb.GetCallRequest(call_id=pipe.call_id))
                        n = sum(1 for e in history.entries if e.move == "send_complete")
                        stable, last = (stable + 1 if n == last and n >= 2 else 0), n
                        await asyncio.sleep(0.002)
                    pipe.cancel()
                    with pytest.raises(CallError):
                        await pipe.result(timeout=10)
                    ids.append(pipe.call_id)
            return ids
        ids = asyncio.run(go())
        for call_id in ids:
            entries = srv.wait_entries(call_id)
            assert [e["cancel"] for e in entries if e["event"] == "cancel_seen"] == ["abortive"], entries[-3:]
            assert final(entries)["code"] == codes.RPC_S_CALL_CANCELLED and final(entries)["move"] == "aborted"
    finally:
        srv.stop()
    assert check_files([log, srv.log]).ok


def test_server_shutdown_ends_pipes_in_flight_on_both_sides(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    log = tmp_path / "client.jsonl"

    ids = []

    async def go() -> list[int]:
        async with AsyncClient(srv.target, log=log) as client:
            pipes = [client.pipe(kind, PipeScript(outcome="hold")).start() for kind in ("in", "out", "both")]
            ids.extend(p.call_id for p in pipes)
            for pipe in pipes:
                await pipe.headers()
            await srv.await_entries(pipes[-1].call_id, until=lambda es: "Push" in states(es))
            srv.proc.send_signal(2)   # SIGINT: graceful stop
            got = []
            for pipe in pipes:
                try:
                    await pipe.result(timeout=10)
                    got.append(0)
                except CallError as err:
                    got.append(err.code)
            return got
    try:
        assert asyncio.run(go()) == [codes.RPC_S_SERVER_UNAVAILABLE] * 3
        assert srv.proc.wait(15) == 0
    finally:
        srv.stop()
    report = check_files([log, srv.log], server_in_flight=0)
    assert report.ok, report.summary()
    for call_id in ids:   # the server ended them itself (RpcAsyncAbortCall 1722), not by a cancel at the grace deadline
        entries = read_entries(srv.log, call_id)
        assert final(entries)["code"] == codes.RPC_S_SERVER_UNAVAILABLE and final(entries)["move"] == "aborted"
        assert not [e for e in entries if e["event"] == "cancel_seen"]


def test_a_callback_subscribed_before_the_start_fires_once_the_out_pipe_is_drained(pipe_server: ServerProcess) -> None:
    """Subscribing is a way of waiting: the server's messages are pulled (and counted) for the
    caller, since the status follows them, whether it subscribed before or after the start."""
    async def aio() -> None:
        async with AsyncClient(pipe_server.target) as client:
            pipe = client.pipe("out", PipeScript(messages=3))
            fired = asyncio.Event()
            pipe.add_done_callback(lambda p: fired.set())
            assert not fired.is_set()   # not before the notification
            pipe.start()
            await asyncio.wait_for(fired.wait(), 10)
            assert pipe.received == 3 and await pipe.result() is None
            # `await pipe` is `await pipe.result()`, as `await call` is for a unary call
            bare = client.pipe("out", PipeScript(messages=2)).start()
            assert await bare is None and bare.received == 2 and bare.history[-1] == END
    asyncio.run(aio())
    with Client(pipe_server.target) as client:
        pipe = client.pipe("out", PipeScript(messages=3))
        fired = threading.Event()
        pipe.add_done_callback(lambda p: fired.set())
        pipe.start()
        assert fired.wait(10) and pipe.received == 3 and pipe.result() is None


def test_the_sync_notification_waits_for_the_last_message_in_the_response_iterator(
        pipe_server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """gRPC's done-callback can run between the iterator handing over the last message and the
    pull counting it; the caller is notified only once it has pulled and counted them all. The
    count is slowed here to hold that window open on every run."""
    from callstate.client.pipe_core import PipeCore
    counted = PipeCore.pulled

    def slow_count(core: PipeCore) -> None:
        time.sleep(0.05)   # widens the race window; synchronisation is the Event below
        counted(core)

    monkeypatch.setattr(PipeCore, "pulled", slow_count)
    with Client(pipe_server.target) as client:
        pipe = client.pipe("out", PipeScript(messages=3))
        seen: list[int] = []
        fired = threading.Event()
        pipe.add_done_callback(lambda p: (seen.append(p.received), fired.set()))
        pipe.start()
        assert fired.wait(20)
        assert seen == [3] and pipe.result() is None


@pytest.mark.parametrize("kind", ["in", "both"])
def test_a_push_waiting_for_the_headers_ends_when_the_pipe_is_cancelled(pipe_server: ServerProcess, kind: str) -> None:
    """A push made at once after the start waits for the call's headers to go out; an abortive
    cancel before they do (Ctrl-C right after the start) ends that push (grpc.aio then never
    says the headers went out: the push used to wait forever) and the pipe completes, 1818."""
    async def go() -> None:
        async with AsyncClient(pipe_server.target) as client:
            pipe = client.pipe(kind, PipeScript(outcome="hold")).start()
            push = asyncio.ensure_future(pipe.push(b"x"))
            await asyncio.sleep(0)   # one turn of the loop: the push is now waiting for the headers
            pipe.cancel()
            with pytest.raises(CallError) as ended:
                await asyncio.wait_for(push, 20)   # not forever
            assert ended.value.code == codes.RPC_X_PIPE_CLOSED
            with pytest.raises(CallError) as final_code:
                await asyncio.wait_for(pipe.result(), 20)
            assert final_code.value.code == codes.RPC_S_CALL_CANCELLED
    asyncio.run(go())


@pytest.mark.parametrize("kind", ["in", "both"])
def test_a_paced_sync_pipe_stops_pacing_when_it_is_cancelled(pipe_server: ServerProcess, kind: str) -> None:
    """drive_pipe_sync's wait between paced pushes ends with the call: a cancel from another
    thread (or the server's end) no longer leaves it waiting out the whole interval."""
    with Client(pipe_server.target) as client:
        pipe = client.pipe(kind, PipeScript(outcome="hold"))
        outcome: list[Any] = []

        def drive() -> None:
            try:
                outcome.append(drive_pipe_sync(pipe, messages=3, interval=1e9))
            except CallError as err:
                outcome.append(err.code)
        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        deadline = time.monotonic() + 20
        while pipe.sent < 1 and time.monotonic() < deadline:   # the first push is out: pacing
            time.sleep(0.01)
        assert pipe.sent == 1
        pipe.cancel()
        driver.join(20)
        assert not driver.is_alive() and outcome == [codes.RPC_S_CALL_CANCELLED]


def test_a_paced_both_pipe_cancels_at_its_received_count(pipe_server: ServerProcess) -> None:
    """Pacing the pushes (interval) leaves the pulls to the driver: a cancel at after-received:3
    fires with exactly 3 messages pulled (nothing else pulls the server's messages meanwhile)."""
    async def go() -> None:
        async with AsyncClient(pipe_server.target) as client:
            for _ in range(3):
                pipe = client.pipe("both", PipeScript(outcome="hold", interval=0.001))
                with pytest.raises(CallError) as ended:
                    await asyncio.wait_for(drive_pipe(pipe, messages=1000, interval=0.05,
                                                      cancel_at=PipeCancelPoint.parse("after-received:3")), 30)
                assert ended.value.code == codes.RPC_S_CALL_CANCELLED
                assert pipe.received == 3
    asyncio.run(go())
