"""Review of session 36's performance change (perf36): the server's step for the common call
(`EmulatorServicer._call_now`) and the asyncio client's inline `await call`.

The review found no behaviour that changed: a differential fuzz (40,000 random sequences of
calls, notices, cancels, held calls and server stops, each run through one servicer with the
fast path and one without it, on random limits, backlogs, --max-in-flight and --id-retention)
and the client's awaits on real gRPC (old tree and new against one server) gave the same
entries, replies, refusals and counters. These tests pin what the existing fast-path tests
left to single calls on an idle server: the fast path beside calls that are live (held), at
--max-in-flight exactly, with a notice kept, a cancel with the wrong key and the server stopping;
and on real gRPC, the inline await cut short by asyncio.wait_for is still an abortive cancel
completed on the caller's behalf.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from callstate import codes
from callstate.client import AsyncClient, Script
from callstate.lifecycle import CANCEL, CANCEL_ISSUED, COMPLETE, COMPLETED, D, END, STARTED
from callstate.server.emulator import EmulatorConfig, EmulatorServicer
from callstate.server.journal import Journal
from callstate.v1 import callstate_pb2 as pb
from tests.conftest import ServerProcess, read_entries
from tests.test_server_fast_path import Aborted, Context, _step

pytestmark = pytest.mark.timeout(60)

COMMON = pb.Script(outcome=pb.OUTCOME_COMPLETE)
HOLD = pb.Script(outcome=pb.OUTCOME_HOLD)


async def _steps(emulator: EmulatorServicer) -> list[Any]:
    """Common calls among held ones on a server with --max-in-flight 2: what each step answers."""
    out: list[Any] = []
    held: list[asyncio.Future[Any]] = []

    async def call(call_id: str, script: pb.Script = COMMON, key: str = "") -> Any:
        try:
            return await emulator.Call(pb.CallRequest(call_id=call_id, script=script, cancel_key=key), Context())
        except Aborted as exc:
            return exc.args[:2]

    async def cancel(call_id: str, key: str) -> Any:
        try:
            return await emulator.Cancel(pb.CancelRequest(call_id=call_id, cancel_key=key), Context())
        except Aborted as exc:
            return exc.args[:2]

    out.append(await call("c1"))                      # idle server
    held.append(asyncio.ensure_future(call("h1", HOLD, "key-1")))
    await asyncio.sleep(0)                             # h1 is live: 1 of 2
    out.append(await call("c2"))                      # live 1 < 2: runs (the fast path)
    out.append(await call("c1"))                      # its id ended a moment ago: refused
    out.append(await cancel("h1", "not-its-key"))      # a notice with another key: PERMISSION_DENIED
    out.append(await cancel("later", "k"))            # a notice kept for a call not made yet
    out.append(await call("c4"))                      # a notice is kept: the general path
    out.append(await call("later", COMMON, "k"))      # ... the call it was for sees it at dispatch
    held.append(asyncio.ensure_future(call("h2", HOLD)))
    await asyncio.sleep(0)                             # 2 of 2 live
    out.append(await call("c3"))                      # exactly at the limit: 1723 once dispatched
    emulator.stop_all()
    out.extend(await asyncio.gather(*held))           # the held calls end (1722) ...
    out.append(await call("c5"))                      # ... and a common call after them: 1722 too
    return out


def _run(fast: bool) -> tuple[list[Any], list[Any], tuple[Any, ...], int]:
    entries: list[Any] = []
    journal = Journal()
    emulator = EmulatorServicer(EmulatorConfig(max_in_flight=2, max_hold=30.0), journal, entries.append)
    taken = _step(emulator, fast)
    out = asyncio.run(_steps(emulator))
    return (out, [tuple(None if isinstance(v, float) else v for v in e[1:]) for e in entries],
            (journal.dispatched, journal.ended, journal.in_flight, dict(journal.by_state), dict(journal.by_code),
             journal.bytes, len(emulator.dispatcher.live)), sum(taken))


def test_the_common_call_beside_live_calls_limits_notices_and_a_stop_is_recorded_as_the_general_path_records_it(
) -> None:
    fast, general = _run(True), _run(False)
    assert fast[:3] == general[:3]
    assert fast[3] == 2, "the common call took the general path: the steps compared nothing"   # c1, c2
    out = fast[0]
    assert out[1].call_id == "c2"
    assert out[3][0].name == "PERMISSION_DENIED" and out[7][0].name == "RESOURCE_EXHAUSTED"   # c3: over the limit
    ends = {e[1]: e[6] for e in fast[1] if e[2] == END}
    assert ends["c3"] == codes.RPC_S_SERVER_TOO_BUSY
    assert ends["c5"] == ends["h1"] == ends["h2"] == codes.RPC_S_SERVER_UNAVAILABLE
    assert ends["c2"] == ends["c4"] == codes.RPC_S_OK and ends["later"] == codes.RPC_S_CALL_CANCELLED
    assert fast[2][2] == 0                              # nothing left in flight


@pytest.mark.e2e
def test_awaiting_a_sent_call_cut_short_by_wait_for_cancels_it_and_completes_it_on_real_grpc(
        server: ServerProcess, tmp_path: Any) -> None:
    """`await call` waits inline (no result() coroutine): asyncio.wait_for cancelling it is still
    the caller's abortive cancel (the server sees it) and the call is completed on its behalf."""
    log = tmp_path / "client.jsonl"

    async def go() -> tuple[str, int | None, bool]:
        async with AsyncClient(server.target, log=str(log)) as client:
            call = client.start(Script("hold"), call_id="rev36-waitfor")
            # the server holds it first: an abortive cancel that beats the dispatch is never seen
            # there (no cancel_seen), and a loaded machine can take longer than 0.2 s to dispatch
            await server.await_entries("rev36-waitfor", until=lambda es: [e["state"] for e in es] == [D])
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(call, 0.2)
            return call.state, call.code, call.completed_for_caller
    assert asyncio.run(go()) == (END, codes.RPC_S_CALL_CANCELLED, True)
    moves = [e["move"] for e in read_entries(log, "rev36-waitfor")][1:]
    assert moves == [STARTED, CANCEL, CANCEL_ISSUED, COMPLETE, COMPLETED]
    assert [e["cancel"] for e in read_entries(log, "rev36-waitfor") if e.get("move") == CANCEL] == ["abortive"]
    seen = server.wait_entries("rev36-waitfor")
    assert any(e["event"] == "cancel_seen" and e.get("cancel") == "abortive" for e in seen)
