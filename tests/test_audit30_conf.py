"""`callstate conformance` through a stalled proxy: every call the battery makes ends in the
client's log, whatever became of it, so the check row judges the proxy, not the battery."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import grpc

from callstate import codes
from callstate.lifecycle import END, ENTER
from tests.conftest import EVIDENCE_WAIT, ServerProcess
from tests.middleboxes import RewritingGrpcProxy


def with_battery(target: str, body: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run `body(battery)` on a battery whose calls go to `target` (its journal never started:
    no server saw any of them)."""
    from callstate.cli.conformance.battery import Battery, BatteryConfig
    from callstate.cli.conformance.journal import ServerJournal

    async def run() -> Any:
        channel = grpc.aio.insecure_channel(target)
        battery = Battery("proxy", target, ServerJournal(channel, "test"), BatteryConfig(wait=0.5))
        try:
            return await body(battery)
        finally:
            await battery.close()
            await channel.close()
    return asyncio.run(run())


def client_ended(battery: Any, call_id: str) -> bool:
    return any(e.state == END and e.event == ENTER for e in battery.recorder.by_id.get(call_id, ()))


async def outcome_in(rpc: Any) -> None:
    """Until gRPC has the call's outcome (a refusal takes milliseconds), nobody having read it."""
    deadline = time.monotonic() + EVIDENCE_WAIT
    while not rpc.done():
        assert time.monotonic() < deadline, "the refused call never failed"
        await asyncio.sleep(0.01)


def test_a_call_that_failed_before_the_battery_looked_is_completed_with_its_own_code(refused_target: str) -> None:
    """Through a SIGSTOPped nginx, a cancel row's call that never reached the server had failed
    (UNAVAILABLE) by the time its dispatch wait ran out; `finish(call, 0)` then took the wait's
    own 1460 for its outcome and never completed it: no End in the client's log, and the check row
    said `not_ended x120: cancel-abortive call ...: client stopped in WComp` (both cancel rows at
    the defaults). Now it is completed, with the code it had."""
    from callstate.cli.conformance.properties import CANCEL_ABORTIVE
    from callstate.client import Script
    from callstate.script import HOLD

    async def body(battery: Any) -> Any:
        call = battery.prepare(CANCEL_ABORTIVE, battery.client, Script(HOLD)).start()   # to a socket nobody serves
        await outcome_in(call._rpc)
        r = await battery.finish(call, 0)   # as a cancel row drops a call the server never saw
        return r, client_ended(battery, call.call_id), await battery.check_row()
    r, ended, row = with_battery(refused_target, body)
    assert r.code == codes.RPC_S_SERVER_UNAVAILABLE, r
    assert ended
    assert row.ok, row.note


def test_a_pipe_the_battery_gives_up_on_is_completed(refused_target: str) -> None:
    """A pipe hung past --wait with the caller's pipe open and after its half-close is cancelled;
    its notification (the cancel's, or the failure's) was awaited but never completed: no End
    in the client's log, `not_ended` in the check row for every such pipe."""
    from callstate.cli.conformance.pipes import _abandon
    from callstate.cli.conformance.properties import PIPE_BOTH_FULL_DUPLEX
    from callstate.client import PipeScript
    from callstate.lifecycle import PIPE_BOTH
    from callstate.script import HOLD

    async def body(battery: Any) -> Any:
        pipe = battery.pipe(PIPE_BOTH_FULL_DUPLEX, PIPE_BOTH, PipeScript(outcome=HOLD)).start()   # a socket: refused
        r = await _abandon(battery, pipe, None, time.perf_counter(), battery.cfg.wait)
        return r, client_ended(battery, pipe.call_id), await battery.check_row()
    r, ended, row = with_battery(refused_target, body)
    assert r.hung
    assert ended
    assert row.ok, row.note


def test_a_notice_the_proxy_never_answers_is_named_as_the_callers_escalation_not_a_reset(
        server: ServerProcess) -> None:
    """A proxy stalled for the cancel notice, the call itself forwarded: the caller escalates to
    an abortive cancel once --wait has passed without an answer, and the call ends 1818
    CANCELLED. The row said "answer lost: reset: 1818 ... (CANCELLED)", a reset on the way though
    the caller did not cancel; it was the caller's own escalation."""
    from callstate.cli.conformance.battery import Battery, BatteryConfig
    from callstate.cli.conformance.calls import open_channel
    from callstate.cli.conformance.cancels import cancel_non_abortive
    from callstate.cli.conformance.journal import ServerJournal

    proxy = RewritingGrpcProxy(server.port, hold_notices=True)

    async def run() -> Any:
        channel = open_channel(server.target)
        journal = ServerJournal(channel, server.target)
        await journal.start(EVIDENCE_WAIT)
        battery = Battery("proxy", proxy.target, journal, BatteryConfig(calls=1, concurrency=1, wait=2.0))
        try:
            return await cancel_non_abortive(battery)
        finally:
            await battery.close()
            await journal.close()
            await channel.close()
    try:
        row = asyncio.run(run())
    finally:
        proxy.stop()
    assert proxy.held_notices > 0
    assert row.ok is False and "reset" not in row.note, row.note
    assert row.note == "no answer within 2 s of the cancel notice: the caller escalated to an abortive cancel x2", row.note
