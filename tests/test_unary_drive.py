"""`client/unary_drive.py`: one unary call driven from its plan, the way `callstate load`
(asyncio) and the Locust user (sync) make theirs, against a real server over loopback."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any, Iterator

import pytest

from callstate import codes
from callstate.client import AsyncClient, Client
from callstate.client.unary_drive import PlanScripts, UnaryEnd, drive_call, drive_call_sync
from callstate.lifecycle import ABORTIVE, C, CAN, ENTER, NON_ABORTIVE, WCOMP
from callstate.scenario import AFTER, AFTER_START, BEFORE_START, CancelPoint, Plan, Scenario
from callstate.script import Mix
from callstate.statelog import Entry
from callstate.v1 import callstate_pb2 as pb
from tests.conftest import ServerProcess, start_server

WAIT = 30.0   # bounds every wait below; none is expected to come near it


class Entries:
    """A client state-log sink kept in memory."""

    enabled = True

    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def append(self, e: Entry) -> None:
        self.entries.append(e)

    def states(self, call_id: str) -> list[str]:
        return [e.state for e in self.entries if e.call_id == call_id and e.event == ENTER]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("unary-drive"), "--max-hold", "60")
    yield srv
    srv.stop()


def plan(outcome: str = "complete", cancel: str | None = None, point: CancelPoint | None = None,
         on_cancel: str = "abort") -> Plan:
    return Plan(outcome=outcome, cancel=cancel, point=point, on_cancel=on_cancel)


SCRIPTS = PlanScripts(Scenario(abort_code=4242), delay=0.0, payload=16)


def drive(server: ServerProcess, how: str, the_plan: Plan, client_closed: bool = False) -> tuple[UnaryEnd, list[str]]:
    """Drive one call of `the_plan` with the sync or the asyncio driver; its end and the
    client's states."""
    log = Entries()
    if how == "sync":
        with Client(server.target, log=log, timeout=WAIT) as client:
            call = client.prepare(SCRIPTS(the_plan), payload=b"x")
            if client_closed:   # after prepare(): a closed client refuses to prepare at all
                client.close()
            end = drive_call_sync(call, the_plan, random.Random(1), escalate_after=WAIT)
        return end, log.states(call.call_id)

    async def main() -> tuple[UnaryEnd, str]:
        client = AsyncClient(server.target, log=log, timeout=WAIT)
        try:
            call = client.prepare(SCRIPTS(the_plan), payload=b"x")
            if client_closed:
                await client.close()
            return await drive_call(call, the_plan, random.Random(1), escalate_after=WAIT), call.call_id
        finally:
            await client.close()
    end, call_id = asyncio.run(main())
    return end, log.states(call_id)


HOWS = ["sync", "asyncio"]


@pytest.mark.parametrize("how", HOWS)
def test_a_call_with_no_cancel_completes_with_its_reply(server: ServerProcess, how: str) -> None:
    end, states = drive(server, how, plan())
    assert end.code == codes.RPC_S_OK and end.attempted and not end.start_refused
    assert end.reply is not None and len(end.reply.payload) == 16   # the script's reply_bytes
    assert CAN not in states


@pytest.mark.parametrize("how", HOWS)
def test_an_abort_ends_with_the_scenarios_code(server: ServerProcess, how: str) -> None:
    end, _ = drive(server, how, plan("abort"))
    assert end.code == 4242 and end.reply is None


@pytest.mark.parametrize("how", HOWS)
def test_a_cancel_before_start_never_sends_the_call(server: ServerProcess, how: str) -> None:
    end, states = drive(server, how, plan("complete", ABORTIVE, CancelPoint(BEFORE_START)))
    assert end.code == codes.RPC_S_CALL_CANCELLED and not end.attempted
    assert states[:2] == [C, CAN]   # cancelled in state C: nothing went out


@pytest.mark.parametrize("how", HOWS)
def test_a_cancel_after_start_ends_a_held_call(server: ServerProcess, how: str) -> None:
    end, states = drive(server, how, plan("hold", ABORTIVE, CancelPoint(AFTER_START)))
    assert end.code == codes.RPC_S_CALL_CANCELLED and end.attempted
    assert states[:3] == [C, WCOMP, CAN]   # started, then cancelled


@pytest.mark.parametrize("how", HOWS)
def test_a_delayed_cancel_fires_on_its_timer(server: ServerProcess, how: str) -> None:
    """A held call ends only by its cancel (the server's --max-hold is a minute away): the
    timer the driver set is what ended it."""
    end, states = drive(server, how, plan("hold", ABORTIVE, CancelPoint(AFTER, 0.2)))
    assert end.code == codes.RPC_S_CALL_CANCELLED and states[:3] == [C, WCOMP, CAN]


@pytest.mark.parametrize("how", HOWS)
def test_the_plans_cancel_kind_is_the_one_sent(server: ServerProcess, how: str) -> None:
    """A server that completes on a cancel answers a non-abortive cancel (its notice) with
    RPC_S_OK; an abortive one resets the stream, and the caller ends cancelled."""
    polite, _ = drive(server, how, plan("hold", NON_ABORTIVE, CancelPoint(AFTER_START), on_cancel="complete"))
    rude, _ = drive(server, how, plan("hold", ABORTIVE, CancelPoint(AFTER_START), on_cancel="complete"))
    assert polite.code == codes.RPC_S_OK and rude.code == codes.RPC_S_CALL_CANCELLED


@pytest.mark.parametrize("how", HOWS)
def test_a_call_refused_at_start_is_reported_as_such(server: ServerProcess, how: str) -> None:
    end, states = drive(server, how, plan(), client_closed=True)
    assert end.attempted and end.start_refused and end.code == codes.RPC_S_INVALID_ASYNC_CALL
    assert WCOMP not in states


def test_the_sync_drivers_timer_is_stopped_when_the_call_ends_first(server: ServerProcess) -> None:
    end, _ = drive(server, "sync", plan("complete", ABORTIVE, CancelPoint(AFTER, 3600)))
    assert end.code == codes.RPC_S_OK
    deadline = time.monotonic() + WAIT
    while _timers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _timers()


def _timers() -> list[Any]:
    return [t for t in threading.enumerate() if isinstance(t, threading.Timer)]


def test_plan_scripts_carry_the_outcome_its_code_and_the_delay() -> None:
    scripts = PlanScripts(Scenario(abort_code=4242), delay=0.25, payload=8)
    abort, held = scripts(plan("abort")), scripts(plan("hold", ABORTIVE, CancelPoint(AFTER_START)))
    assert (abort.outcome, abort.abort_code, abort.outcome_delay_ms, abort.reply_bytes) == (
        pb.OUTCOME_ABORT, 4242, 250, 8)
    assert (held.outcome, held.abort_code, held.outcome_delay_ms) == (pb.OUTCOME_HOLD, 0, 0)   # waits for its cancel
    assert scripts(plan("complete")).abort_code == 0
    assert scripts(plan("abort")) is abort   # made once per draw


def test_plan_scripts_follow_the_on_cancel_and_poll_of_the_plan() -> None:
    scripts = PlanScripts(Scenario(on_cancel=Mix.parse("complete=100", ("abort", "complete", "ignore"))))
    a = scripts(Plan("hold", ABORTIVE, CancelPoint(AFTER_START), "complete", cancel_poll_ms=50))
    b = scripts(Plan("hold", ABORTIVE, CancelPoint(AFTER_START), "abort"))
    assert (a.on_cancel, a.cancel_poll_ms) == (pb.ON_CANCEL_COMPLETE, 50)
    assert b.on_cancel == pb.ON_CANCEL_ABORT and not b.HasField("cancel_poll_ms")
