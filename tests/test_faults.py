"""Faults and memory attacks against a real server process.

Each attack measures the server's resident memory (VmRSS) before and after and allows it
at most 100 MiB of growth; each stays within seconds. (Server SIGTERM with calls in flight
is tests/test_journal_and_shutdown.py::test_graceful_stop_ends_every_call_and_flushes_the_log;
client SIGKILL with a few calls is tests/test_third_party_and_crash.py.)
`CALLSTATE_ATTACK_SCALE=5` multiplies every attack's size for a dedicated run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest

from callstate import codes
from callstate.logfile import check_files
from callstate.client import AsyncClient, CallError, Script
from callstate.lifecycle import END
from callstate.script import Limits
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess, final_codes, read_entries, start_server
from tests.rawh2 import NeverReader

SCALE = float(os.environ.get("CALLSTATE_ATTACK_SCALE", "1"))
pytestmark = pytest.mark.timeout(int(120 * SCALE))
MiB = 1024 * 1024
GROWTH_LIMIT = 100 * MiB


def report_growth(what: str, base: int, srv: ServerProcess) -> int:
    """The server's RSS growth since `base`, printed (README's Reliability figures come from `pytest -s`)."""
    growth = rss(srv) - base
    print(f"\n{what}: server RSS +{growth / MiB:.1f} MiB")
    return growth


def rss(srv: ServerProcess) -> int:
    with open(f"/proc/{srv.proc.pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def counters(target: str) -> pb.Counters:
    with grpc.insecure_channel(target) as channel:
        return pb_grpc.JournalStub(channel).GetCounters(pb.CountersRequest(), timeout=10)


def wait_counters(target: str, until, timeout: float = 30) -> pb.Counters:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not until(c := counters(target)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return c


def warm(srv: ServerProcess) -> int:
    """Baseline RSS after a few ordinary calls (so first-use allocations are not counted)."""
    with grpc.insecure_channel(srv.target) as channel:
        stub = pb_grpc.EmulatorStub(channel)
        for _ in range(50):
            stub.Call(pb.CallRequest(script=pb.Script(outcome=pb.OUTCOME_COMPLETE, reply_bytes=100)), timeout=10)
    return rss(srv)


@pytest.fixture
def attacked(tmp_path: Path):  # type: ignore[no-untyped-def]
    srv = start_server(tmp_path, "--max-hold", str(60 * SCALE))
    yield srv
    assert srv.stop() == 0   # it survived: a clean graceful stop


async def _spray(target: str, n: int, make, concurrency: int = 64) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """n RPCs from `make(stub, i)` at most `concurrency` at once; counts of their status names."""
    seen: dict[str, int] = {}
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", -1)]) as channel:
        stub = pb_grpc.EmulatorStub(channel)
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                try:
                    await make(stub, i)
                    name = "OK"
                except grpc.aio.AioRpcError as err:
                    name = err.code().name
                seen[name] = seen.get(name, 0) + 1
        await asyncio.gather(*(one(i) for i in range(n)))
    return seen


def test_huge_call_ids_in_calls_and_notices_pin_nothing(attacked: ServerProcess) -> None:
    base = warm(attacked)
    n = int(100 * SCALE)
    big = "x" * (2 * MiB)

    async def attack() -> tuple[dict[str, int], dict[str, int]]:
        calls = await _spray(attacked.target, n, lambda stub, i: stub.Call(
            pb.CallRequest(call_id=f"{i}{big}", script=pb.Script(outcome=pb.OUTCOME_HOLD)), timeout=30), 16)
        notices = await _spray(attacked.target, n, lambda stub, i: stub.Cancel(
            pb.CancelRequest(call_id=f"{i}{big}"), timeout=30), 16)
        return calls, notices
    calls, notices = asyncio.run(attack())
    # larger than any valid request: gRPC refuses it before Python ever parses it
    assert calls == {"RESOURCE_EXHAUSTED": n} and notices == {"RESOURCE_EXHAUSTED": n}
    assert report_growth(f"{n} calls and {n} notices with 2 MiB call ids", base, attacked) < GROWTH_LIMIT
    assert counters(attacked.target).in_flight == 0


def test_a_flood_of_early_notices_is_bounded_and_expires(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--max-early-notices", "1000", "--early-notice-ttl", "0.5", "--no-state-log")
    try:
        base = warm(srv)
        n = int(5000 * SCALE)
        long_id = "n" * (Limits().max_call_id_bytes - 8)
        seen = asyncio.run(_spray(srv.target, n, lambda stub, i: stub.Cancel(
            pb.CancelRequest(call_id=f"{i:08d}{long_id}"), timeout=30)))
        assert seen == {"OK": n}
        assert report_growth(f"{n} early notices with {Limits().max_call_id_bytes}-byte ids", base, srv) < GROWTH_LIMIT

        async def late_call() -> int:   # the oldest notices expired: a call made now is not pre-cancelled
            async with AsyncClient(srv.target) as client:
                try:
                    await client.start(Script("complete"), call_id=f"{0:08d}{long_id}")
                    return codes.RPC_S_OK
                except CallError as err:
                    return err.code
        deadline = time.monotonic() + 20
        while (code := asyncio.run(late_call())) != codes.RPC_S_OK and time.monotonic() < deadline:
            time.sleep(0.1)
        assert code == codes.RPC_S_OK
    finally:
        srv.stop()


def test_a_hundred_thousand_notices_to_one_call(attacked: ServerProcess) -> None:
    """5,000 by default (CI); CALLSTATE_ATTACK_SCALE=20 for the hundred thousand."""
    base = warm(attacked)
    n = int(5000 * SCALE)

    async def attack() -> tuple[pb.CallHistory, int]:
        async with AsyncClient(attacked.target) as client:
            call = client.start(Script("hold", on_cancel="ignore"))
            await attacked.await_entries(call.call_id, until=lambda es: bool(es))
            seen = await _spray(attacked.target, n, lambda stub, i: stub.Cancel(pb.CancelRequest(call_id=call.call_id, cancel_key=call._cancel_key)))   # the owner's
            assert seen == {"OK": n}
            async with grpc.aio.insecure_channel(attacked.target) as channel:   # default receive limit: 4 MiB
                history = await pb_grpc.JournalStub(channel).GetCall(pb.GetCallRequest(call_id=call.call_id), timeout=10)
            call.cancel()
            try:
                await call
            except CallError as err:
                return history, err.code
            return history, 0
    history, code = asyncio.run(attack())
    assert code == codes.RPC_S_CALL_CANCELLED
    assert len(history.entries) <= 64 + 4 and history.ByteSize() < 64 * 1024
    print(f"\nGetCall after {n} notices to one call: {len(history.entries)} entries, {history.ByteSize()} bytes")
    assert report_growth(f"{n} notices to one call", base, attacked) < GROWTH_LIMIT


def test_a_connection_that_never_reads_its_big_replies(attacked: ServerProcess) -> None:
    base = warm(attacked)
    n = int(200 * SCALE)
    reader = NeverReader("127.0.0.1", attacked.port)
    body = pb.CallRequest(script=pb.Script(outcome=pb.OUTCOME_COMPLETE,
                                           reply_bytes=Limits().max_reply_bytes)).SerializeToString()
    try:
        for _ in range(n):
            reader.call("/callstate.v1.Emulator/Call", body)
        c = wait_counters(attacked.target, lambda c: c.ended >= 50 + n)
        assert c.ended == 50 + n and c.in_flight == 0          # every call ended...
        assert c.by_code[codes.RPC_S_SERVER_TOO_BUSY] >= n - 8  # ...most with 1723: the reply backlog is full
        assert report_growth(f"{n} unread streams asking for 4 MiB replies on one connection", base,
                             attacked) < GROWTH_LIMIT
        # an ordinary caller on another connection is still served meanwhile
        with grpc.insecure_channel(attacked.target) as channel:
            reply = pb_grpc.EmulatorStub(channel).Call(pb.CallRequest(script=pb.Script(
                outcome=pb.OUTCOME_COMPLETE, reply_bytes=10)), timeout=10)
            assert len(reply.payload) == 10
    finally:
        reader.close()


CLIENT = textwrap.dedent("""
    import sys
    from callstate.client import Client, Script
    client = Client(sys.argv[1], log=sys.argv[2])
    calls = [client.start(Script("hold")) for _ in range(int(sys.argv[3]))]
    print("started", flush=True)
    sys.stdin.read()
""")


def test_client_killed_with_a_thousand_held_calls(attacked: ServerProcess, tmp_path: Path) -> None:
    n = 1000
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, attacked.target, str(tmp_path / "client.jsonl"), str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"  # type: ignore[union-attr]
        wait_counters(attacked.target, lambda c: c.in_flight == n)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    c = wait_counters(attacked.target, lambda c: c.in_flight == 0 and c.ended == n)
    assert (c.in_flight, c.ended, c.by_code[codes.RPC_S_CALL_CANCELLED]) == (0, n, n)
    deadline = time.monotonic() + 20
    while len([e for e in read_entries(attacked.log) if e["state"] == END]) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    report = check_files([attacked.log])
    assert report.ok and report.calls == n and report.by_code == {codes.RPC_S_CALL_CANCELLED: n}, report.summary()


def test_server_killed_with_calls_in_flight(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--max-hold", "60")
    n = 100
    log = tmp_path / "client.jsonl"

    async def go() -> list[int]:
        async with AsyncClient(srv.target, log=log) as client:
            calls = [client.start(Script("hold")) for _ in range(n)]
            deadline = time.monotonic() + 20
            while counters(srv.target).in_flight < n and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            srv.proc.send_signal(signal.SIGKILL)
            return await final_codes(calls)
    try:
        results = asyncio.run(go())
    finally:
        srv.proc.kill()
        srv.proc.wait(10)
    assert results == [codes.RPC_S_SERVER_UNAVAILABLE] * n   # every caller told, none left waiting
    report = check_files([log])   # the client's side: every call ended exactly once, legally
    assert report.ok and report.calls == n and report.by_code == {codes.RPC_S_SERVER_UNAVAILABLE: n}, report.summary()
