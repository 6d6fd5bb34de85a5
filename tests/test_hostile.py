"""The server tried as a hostile or clumsy caller would: each attack is refused or bounded, and
the other callers go on being served (real `callstate serve` processes, real gRPC over loopback).

Memory rows assert at most 100 MiB growth of the server's RSS; every wait is bounded and waits
for evidence (counters, log lines), never a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable

import grpc
import pytest

from callstate import codes
from callstate.client import AsyncClient, CallError, Script
from callstate.script import ABORT_CODE_MAX, Limits
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from callstate.wire import PIPE_SCRIPT_KEY
from tests.conftest import ServerProcess, final, start_server

pytestmark = pytest.mark.timeout(90)
MiB = 1024 * 1024
MAX_GROWTH_MIB = 100
LIMITS = Limits()
# a client that never reads: a tiny HTTP/2 window, no BDP probe to widen it
NEVER_READS = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0), ("grpc.use_local_subchannel_pool", 1)]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def counters(target: str) -> pb.Counters:
    with grpc.insecure_channel(target) as channel:
        return pb_grpc.JournalStub(channel).GetCounters(pb.CountersRequest(), timeout=10)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll `check` until it returns something true; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)
    return value


@pytest.fixture
def hostile_server(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        srv = start_server(tmp_path, *args, name=f"server{len(started)}")
        started.append(srv)
        return srv
    yield start
    for srv in started:
        srv.stop()


# -- 1. pipes are bounded like calls ----------------------------------------------------------
def test_pipes_that_are_never_read_stay_within_the_reply_backlog(hostile_server: Any) -> None:
    """40 PipeOut streams of 4 MB messages, over 8 connections whose window never opens: the
    pipes beyond the backlog (server-wide and per connection) end with 1723 before pushing;
    the server's RSS stays flat (it grew +480 MiB before) and it serves other callers."""
    srv = hostile_server("--no-state-log")
    before = rss_mib(srv.proc.pid)
    channels = [grpc.insecure_channel(srv.target, options=NEVER_READS) for _ in range(8)]
    script = pb.PipeScript(outcome=pb.OUTCOME_COMPLETE, messages=100, message_bytes=4_000_000)
    try:
        streams = [pb_grpc.EmulatorStub(channels[i % 8]).PipeOut(pb.PipeRequest(script=script), timeout=60)
                   for i in range(40)]
        wait_for("40 pipes dispatched, those over the backlog ended", lambda: (c := counters(srv.target)).dispatched
                 == 40 and c.in_flight <= 4)
        c = counters(srv.target)
        assert c.by_code[codes.RPC_S_SERVER_TOO_BUSY] >= 36, c
        grown = max(rss_mib(srv.proc.pid) for _ in range(5)) - before
        assert grown <= MAX_GROWTH_MIB, f"server RSS grew {grown:.0f} MiB"
        status, _ = _unary(srv.target, pb.Script(outcome=pb.OUTCOME_COMPLETE, reply_bytes=1000))
        assert status == grpc.StatusCode.OK   # another caller is served
        for stream in streams:
            stream.cancel()
    finally:
        for channel in channels:
            channel.close()


def _unary(target: str, script: pb.Script, timeout: float = 20) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(target) as channel:
        try:
            pb_grpc.EmulatorStub(channel).Call(pb.CallRequest(script=script), timeout=timeout)
            return grpc.StatusCode.OK, "0"
        except grpc.RpcError as err:
            return err.code(), dict(err.trailing_metadata() or ()).get("callstate-code", "")


MAX_HOLD_CASES = {
    # kind, script, what the caller does
    "silent-in": ("in", pb.PipeScript(outcome=pb.OUTCOME_COMPLETE), "silent"),
    "silent-both": ("both", pb.PipeScript(outcome=pb.OUTCOME_COMPLETE, messages=1), "silent"),
    "interval-600s": ("out", pb.PipeScript(outcome=pb.OUTCOME_COMPLETE, messages=5, interval_ms=600_000), "reads"),
    "dispatch-delay-600s": ("out", pb.PipeScript(outcome=pb.OUTCOME_COMPLETE, dispatch_delay_ms=600_000), "reads"),
    "outcome-delay-600s-ignore": ("in", pb.PipeScript(outcome=pb.OUTCOME_ABORT, abort_code=5, outcome_delay_ms=600_000,
                                                      on_cancel=pb.ON_CANCEL_IGNORE), "half-closes"),
    "window-never-opens": ("out", pb.PipeScript(outcome=pb.OUTCOME_COMPLETE, messages=10, message_bytes=1_000_000),
                           "never-reads"),
}


def test_max_hold_bounds_every_pipe_script_and_flow_control_state(hostile_server: Any) -> None:
    """With --max-hold 2, every one of these pipes ends on the server with 1460 within a few
    seconds (before, each ran until the caller's own 60 s deadline)."""
    srv = hostile_server("--max-hold", "2")

    async def go() -> dict[str, str]:
        ids: dict[str, str] = {}
        channels = []
        calls = []
        for name, (kind, script, caller) in MAX_HOLD_CASES.items():
            channel = grpc.aio.insecure_channel(srv.target, options=NEVER_READS if caller == "never-reads" else None)
            channels.append(channel)
            stub = pb_grpc.EmulatorStub(channel)
            call_id = ids[name] = f"hold-{name}-{time.monotonic_ns()}"
            metadata = (("callstate-call-id", call_id), (PIPE_SCRIPT_KEY, script.SerializeToString()))
            if kind == "out":
                call = stub.PipeOut(pb.PipeRequest(call_id=call_id, script=script), timeout=60)
            else:
                call = (stub.PipeIn if kind == "in" else stub.PipeBoth)(timeout=60, metadata=metadata)
                if caller == "half-closes":
                    await call.done_writing()
            calls.append((caller, call))
        readers = [asyncio.ensure_future(_drain(call)) for caller, call in calls if caller == "reads"]
        try:
            for name, call_id in ids.items():
                await srv.await_entries(call_id, timeout=30)
        finally:
            for _, call in calls:
                call.cancel()
            for reader in readers:
                reader.cancel()
            for channel in channels:
                await channel.close()
        return ids

    t0 = time.monotonic()
    ids = asyncio.run(go())
    for name, call_id in ids.items():
        entries = srv.entries(call_id)
        assert entries and final(entries)["code"] == codes.RPC_S_TIMEOUT, (name, entries[-2:])
        assert "max hold" in final(entries)["detail"], name
    assert time.monotonic() - t0 < 45   # well before the callers' 60 s deadlines
    assert counters(srv.target).in_flight == 0


async def _drain(call: Any) -> None:
    try:
        async for _ in call:
            pass
    except (grpc.RpcError, asyncio.CancelledError):
        pass


@pytest.mark.parametrize("code", [2**32, 2**40, 2**63 - 1, -2**63])
@pytest.mark.parametrize("kind", ["in", "out", "both"])
def test_pipe_abort_codes_are_checked_as_unary_ones(shared_server: ServerProcess, kind: str, code: int) -> None:
    """A pipe script's out-of-range abort code is refused (87, naming the field), as a unary
    script's is; it never reaches the caller or the log as a code."""
    script = pb.PipeScript(outcome=pb.OUTCOME_ABORT, abort_code=code)
    status, details, got = _raw_pipe(shared_server.target, kind, script)
    assert (status, got) == (grpc.StatusCode.INVALID_ARGUMENT, "87") and "abort_code" in details, (status, details)


@pytest.mark.parametrize("size", [LIMITS.max_message_bytes + 1, 17 * 1024])
def test_pipe_abort_messages_are_bounded_as_unary_ones(shared_server: ServerProcess, size: int) -> None:
    script = pb.PipeScript(outcome=pb.OUTCOME_ABORT, abort_code=5001, abort_message="m" * size)
    status, details, got = _raw_pipe(shared_server.target, "out", script)
    assert (status, got) == (grpc.StatusCode.INVALID_ARGUMENT, "87") and "abort_message" in details, details


def _raw_pipe(target: str, kind: str, script: pb.PipeScript) -> tuple[grpc.StatusCode, str, str]:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.EmulatorStub(channel)
        try:
            if kind == "out":
                list(stub.PipeOut(pb.PipeRequest(script=script), timeout=20))
            else:
                metadata = ((PIPE_SCRIPT_KEY, script.SerializeToString()),)
                method = stub.PipeIn if kind == "in" else stub.PipeBoth
                result = method(iter([pb.PipeMessage(null_push=True)]), timeout=20, metadata=metadata)
                if kind == "both":
                    list(result)
            return grpc.StatusCode.OK, "", "0"
        except grpc.RpcError as err:
            return err.code(), err.details() or "", dict(err.trailing_metadata() or ()).get("callstate-code", "")


def test_a_mix_drawn_abort_never_uses_an_unchecked_script_code(hostile_server: Any) -> None:
    """`--mix abort=100` and a script with only an abort code of 2**63-1 (no outcome): refused
    with 87 before the draw can hand the 64-bit code to the caller."""
    srv = hostile_server("--mix", "abort=100", "--no-state-log")
    status, code = _unary(srv.target, pb.Script(abort_code=2**63 - 1))
    assert (status, code) == (grpc.StatusCode.INVALID_ARGUMENT, "87")
    status, code = _unary(srv.target, pb.Script(abort_code=ABORT_CODE_MAX))   # its near miss: the code is used
    assert (status, code) == (grpc.StatusCode.ABORTED, str(ABORT_CODE_MAX))
    assert max(counters(srv.target).by_code) <= ABORT_CODE_MAX
