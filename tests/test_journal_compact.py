"""An ended call the journal keeps in a smaller form (server/calls.py: a call `complete_now`
completed, D -> Comp -> End with nothing between, kept as its three times and End's gRPC status)
reads back as the entries it logged, field for field and time for time: its history (GetCall),
its first time and its final entry (ListCalls' summaries and its code filter). Every other history
shape is kept as its entries, and reads back the same way."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest

from callstate.lifecycle import (COMPLETE, COMPLETED, ENTER, INITIAL, NON_ABORTIVE, PIPE_OUT, SERVER, UNARY, initial_move,
                                 server_end_code)
from callstate.server.calls import ServerCall
from callstate.server.journal import CallRecord, Journal
from callstate.server.journal_service import JournalServicer, bounded_history, summary
from callstate.statelog import Entry
from callstate.v1 import callstate_pb2 as pb

ID = "0123456789abcdef0123456789abcdef"


def _common(call: ServerCall) -> None:
    call.complete_now("OK")


def _other_status(call: ServerCall) -> None:
    call.complete_now("CANCELLED")


def _cancel_seen_first(call: ServerCall) -> None:
    call.cancel_seen(NON_ABORTIVE)   # an entry between D and Comp: kept as entries
    call.complete_now("OK")


def _by_moves(call: ServerCall) -> None:
    call.move(COMPLETE)
    call.move(COMPLETED, server_end_code(COMPLETED), "OK")


def _on_error(call: ServerCall) -> None:
    call.end_on_error(RuntimeError("boom"))


# (how the call ends, the fields it is made with, whether the journal keeps it in the smaller form)
SHAPES: list[tuple[Callable[[ServerCall], None], dict[str, Any], bool]] = [
    (_common, {}, True),
    (_common, {"deadline_ms": 250, "method": "pkg.Svc/Do", "rule": 'rules[0] "x"'}, True),
    (_other_status, {}, True),
    (_cancel_seen_first, {}, False),
    (_by_moves, {"method": "pkg.Svc/Do", "rule": "r"}, False),
    (_on_error, {}, False),
]


def _ended(end: Callable[[ServerCall], None], fields: dict[str, Any], journal: Journal,
           call_id: str = ID) -> tuple[ServerCall, list[Entry]]:
    logged: list[Entry] = []
    call = ServerCall(call_id, journal, logged.append, "complete", **fields)
    end(call)
    assert call.ended
    return call, logged


def _as_logged(call: ServerCall, logged: list[Entry]) -> CallRecord:
    """A plain record of the same call holding the entries it logged: what the journal kept before."""
    rec = CallRecord(call.call_id, call.outcome, call.deadline_ms, call.method, call.rule)
    rec.entries, rec.state, rec.saw_cancel, rec.omitted = list(logged), call.state, call.saw_cancel, call.omitted
    return rec


@pytest.mark.parametrize("end, fields, compact", SHAPES, ids=[f"{s[0].__name__}-{i}" for i, s in enumerate(SHAPES)])
def test_an_ended_call_reads_back_as_it_logged(end: Callable[[ServerCall], None], fields: dict[str, Any],
                                               compact: bool) -> None:
    for journal in (Journal(), Journal(0)):   # kept, and forgotten at once (its handler still holds it)
        call, logged = _ended(end, fields, journal)
        assert (call._completed is not None) == compact   # the smaller form where it applies, and only there
        assert call.history() == logged   # every field, the times too
        assert call.started == logged[0].t and call.final == logged[-1]
        full = _as_logged(call, logged)
        assert summary(call) == summary(full)
        assert bounded_history(call.history()) == bounded_history(full.history())
        assert bounded_history(call.history(), budget=400) == bounded_history(logged, budget=400)


class _Context:
    async def abort(self, status: Any, message: str) -> None:
        raise AssertionError(message)


def test_the_journal_service_shows_a_kept_call_as_it_logged() -> None:
    journal = Journal()
    ended = [_ended(end, fields, journal, f"{ID}-{i}") for i, (end, fields, _) in enumerate(SHAPES)]
    service = JournalServicer(journal)
    for call, logged in ended:
        history = asyncio.run(service.GetCall(pb.GetCallRequest(call_id=call.call_id), _Context()))
        assert list(history.entries) == bounded_history(logged)[0] and history.ended
    listed = asyncio.run(service.ListCalls(pb.ListCallsRequest(code=server_end_code(COMPLETED)), _Context()))
    completed = [(c, logged) for c, logged in reversed(ended) if logged[-1].code == server_end_code(COMPLETED)]
    assert len(completed) == 5   # all but the one ended on error
    assert list(listed.calls) == [summary(_as_logged(call, logged)) for call, logged in completed]


@pytest.mark.parametrize("fields", [{}, {"deadline_ms": 250, "method": "pkg.Svc/Do", "rule": 'rules[0] "x"'}])
def test_the_step_logs_what_the_moves_one_by_one_log(fields: dict[str, Any]) -> None:
    """`complete_now`'s two entries (and so the kept form's rebuild, made by the same builders) are
    the table's moves' entries, field for field but the times: a field lost in both (a stand-in's
    rule) would read back as logged and still be wrong."""
    _, stepped = _ended(_common, fields, Journal())
    _, moved = _ended(_by_moves, fields, Journal())
    assert [e[1:] for e in stepped] == [e[1:] for e in moved]


@pytest.mark.parametrize("kind", [UNARY, PIPE_OUT])
def test_a_calls_first_entry_is_its_tables_first_state(kind: str) -> None:
    """The entry of D, made by one builder for the call's dispatch and for the kept form's rebuild
    (so their equality above cannot see it wrong): the table's initial state by the kind's initial
    move, from nothing, with the call's method and rule."""
    logged: list[Entry] = []
    ServerCall(ID, Journal(), logged.append, "complete", kind, method="pkg.Svc/Do", rule="r")
    (first,) = logged
    assert (first.side, first.call_id, first.state, first.prev, first.event, first.move) == (
        SERVER, ID, INITIAL[SERVER], None, ENTER, initial_move(SERVER, kind))
    assert (first.code, first.method, first.rule) == (None, "pkg.Svc/Do", "r")


@pytest.mark.parametrize("kind", [UNARY, PIPE_OUT])
def test_a_call_in_flight_keeps_its_dispatch_as_a_time_and_reads_back_as_it_logged(kind: str) -> None:
    """A held call keeps D's entry as its time (10,000 held calls: about 200 bytes each of the 20 KiB
    measured against bare's), and its history, first time and summary read as it logged, before and
    after more entries come (GetCall and ListCalls of a call still held)."""
    logged: list[Entry] = []
    journal = Journal()
    call = ServerCall(ID, journal, logged.append, "hold", kind, deadline_ms=250, method="pkg.Svc/Do", rule="r")
    assert call.entries == []   # no tuple kept for D
    assert call.history() == logged and call.started == logged[0].t and call.final is None
    call.cancel_seen(NON_ABORTIVE)
    assert call.history() == logged and len(logged) == 2
    assert summary(call) == summary(_as_logged(call, logged))
    assert bounded_history(call.history()) == bounded_history(logged)
