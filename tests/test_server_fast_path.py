"""The server's path for the common call (`EmulatorServicer._call_now`: a script that completes with
no wait, made in one step) records what the general path records for the same request: the same
entries in the same order, the same journal record and counters, the same reply or refusal.

In process, no gRPC: each request goes through a fresh servicer twice, once as it comes and once
with the fast path turned away, and the two runs are compared field by field (times aside)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from callstate.lifecycle import A, CANCEL_SEEN, COMP, D, END, ENTER
from callstate.script import KNOWN_SCRIPT_BYTES, KNOWN_SCRIPTS, Limits, Mix, ValidScripts, remember
from callstate.server.emulator import EmulatorConfig, EmulatorServicer
from callstate.server.journal import Journal
from callstate.v1 import callstate_pb2 as pb

ID = "0123456789abcdef0123456789abcdef"
COMPLETE = pb.Script(outcome=pb.OUTCOME_COMPLETE)


class Aborted(Exception):
    """What the stand-in context's abort raises (grpc.aio's raises too)."""


class Context:
    """What the handler uses of grpc.aio's ServicerContext."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = (), remaining: float | None = 5.0) -> None:
        self.metadata, self.remaining = metadata, remaining
        self.done_callbacks: list[Any] = []
        self.sent_headers: list[Any] = []
        self.trailers: Any = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> float | None:
        return self.remaining

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def add_done_callback(self, callback: Any) -> None:
        self.done_callbacks.append(callback)

    async def send_initial_metadata(self, metadata: Any) -> None:
        self.sent_headers.append(metadata)

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailers = metadata

    async def abort(self, status: Any, message: str, trailers: Any = ()) -> None:
        raise Aborted(status, message, tuple(trailers))


def _step(emulator: EmulatorServicer, fast: bool) -> list[bool]:
    """The servicer's step for the common call left as it is (`fast`) or turned away (the general
    path takes every call); returned: whether each call took it."""
    taken: list[bool] = []
    real = emulator._call_now

    def call_now(*args: Any) -> Any:
        reply = real(*args) if fast else None
        taken.append(reply is not None)
        return reply
    emulator._call_now = call_now  # type: ignore[method-assign]
    return taken


def _run(request: pb.CallRequest, context: Context, fast: bool, warm: bool, **config: Any) -> dict[str, Any]:
    entries: list[Any] = []
    journal = Journal()
    emulator = EmulatorServicer(EmulatorConfig(mix=Mix.parse("complete=100"), **config), journal, entries.append)
    if warm:   # a call before, with the same script: the server knows it valid (the common state of a server)
        earlier = pb.CallRequest(call_id="earlier", script=request.script if request.HasField("script") else None)
        try:
            asyncio.run(emulator.Call(earlier, Context()))
        except Aborted:
            pass
        entries.clear()
    taken = _step(emulator, fast)
    try:
        outcome: Any = asyncio.run(emulator.Call(request, context))
    except Aborted as exc:
        outcome = ("aborted", exc.args)
    record = journal.get(entries[0].call_id) if entries else None
    return {
        "outcome": outcome,
        "entries": [e[1:] for e in entries],   # every field but the time
        "record": None if record is None else (
            record.call_id, [e[1:] for e in record.history()], record.state, record.outcome, record.saw_cancel,
            record.events, record.messages, record.omitted, record.bytes, record.deadline_ms, record.method,
            record.rule),
        "counters": (journal.dispatched, journal.ended, journal.in_flight, journal.cancels_seen, dict(journal.by_state),
                     dict(journal.by_code), journal.bytes, len(journal), len(journal.ended_ids)),
        "live": dict(emulator.dispatcher.live),
        "backlog": emulator.backlog.bytes,
        "reserved": len(context.done_callbacks),
        "headers": context.sent_headers,
        "trailers": context.trailers,
        "fast": any(taken),
    }


def _both(request: pb.CallRequest, metadata: tuple[tuple[str, str], ...] = (), **config: Any) -> dict[str, Any]:
    """Both paths, on a fresh server and on one that took a call with the same script before; the
    fast path's run (its "fast": whether it took the request)."""
    runs = []
    for warm in (False, True):
        fast = _run(request, Context(metadata), True, warm, **config)
        slow = _run(request, Context(metadata), False, warm, **config)
        assert not slow["fast"]
        for key in ("outcome", "entries", "record", "counters", "live", "backlog", "reserved", "headers", "trailers"):
            assert fast[key] == slow[key], (key, warm)
        runs.append(fast)
    assert runs[0]["fast"] == runs[1]["fast"]
    return runs[1]


@pytest.mark.parametrize("request_, metadata", [
    (pb.CallRequest(call_id=ID, script=COMPLETE), ()),
    (pb.CallRequest(call_id=ID, script=COMPLETE, cancel_key="k" * 16), ()),
    (pb.CallRequest(script=COMPLETE), (("callstate-call-id", ID), ("callstate-cancel-key", "key-1"))),
    (pb.CallRequest(call_id=ID, script=pb.Script(outcome=pb.OUTCOME_COMPLETE, reply_bytes=100)), ()),
    (pb.CallRequest(call_id=ID, payload=b"x" * 50, script=pb.Script(outcome=pb.OUTCOME_COMPLETE, echo=True)), ()),
], ids=["id-in-request", "cancel-key", "ids-as-metadata", "reply-bytes", "echo"])
def test_the_common_call_is_recorded_as_the_general_path_records_it(request_: pb.CallRequest, metadata: Any) -> None:
    fast = _both(request_, metadata)
    assert fast["fast"], "the common call took the general path: nothing was compared"
    assert [e[2] for e in fast["entries"]] == [D, COMP, END]   # each entry's state (the time left out)
    assert isinstance(fast["outcome"], pb.CallReply) and fast["outcome"].call_id == ID
    assert fast["record"][9] == 5000   # the caller's deadline, as it arrived


def test_a_call_with_no_id_that_completes_at_once_gets_the_made_id_with_its_reply() -> None:
    """No id in the request or its metadata (k6, grpcurl): the common call still takes its one
    step, and the id the server made comes back in the reply and the trailers, with no headers of
    their own before it (a batch grpc.aio sends apart). The general path, for a call that waits,
    sends the made id in the headers first: so its caller can cancel it by id before the outcome."""
    fast = _run(pb.CallRequest(script=COMPLETE), Context(), True, warm=True)
    assert fast["fast"] and fast["headers"] == []
    made = fast["outcome"].call_id
    assert made and fast["trailers"] == (("callstate-call-id", made),)
    assert [(e[1], e[2]) for e in fast["entries"]] == [(made, D), (made, COMP), (made, END)]
    assert fast["record"][0] == made and fast["counters"][0] == 2 and fast["live"] == {}   # the warm call, then this
    waits = _run(pb.CallRequest(script=pb.Script(outcome=pb.OUTCOME_COMPLETE, outcome_delay_ms=1)), Context(), True,
                 warm=True)
    assert not waits["fast"] and waits["trailers"] is None
    assert waits["headers"] == [(("callstate-call-id", waits["outcome"].call_id),)]


def test_a_call_with_no_id_turned_away_from_the_step_gets_one_id_only() -> None:
    """A made id the one step refuses to take (here: over the in-flight limit) is dropped before
    anything is sent: the general path makes the call's id, sends it in the headers and ends the
    call with it; no trailer names another."""
    slow = _run(pb.CallRequest(script=COMPLETE), Context(), True, warm=False, max_in_flight=0)
    assert not slow["fast"] and slow["trailers"] is None
    assert slow["headers"] == [(("callstate-call-id", slow["entries"][0][1]),)]


@pytest.mark.parametrize("request_, config", [
    (pb.CallRequest(call_id=ID), {}),   # no script: drawn from the mix
    (pb.CallRequest(call_id=ID, script=pb.Script(outcome=pb.OUTCOME_ABORT)), {}),
    (pb.CallRequest(call_id=ID, script=pb.Script(outcome=pb.OUTCOME_COMPLETE, headers_first=True)), {}),
    (pb.CallRequest(call_id=ID, script=pb.Script(outcome=pb.OUTCOME_COMPLETE, cancel_poll_ms=0)), {}),
    (pb.CallRequest(call_id=ID, script=COMPLETE), {"cancel_poll_ms": 5}),
    (pb.CallRequest(call_id=ID, script=pb.Script(outcome=pb.OUTCOME_COMPLETE, reply_bytes=-1)), {}),   # invalid: 87
    (pb.CallRequest(call_id=ID, script=COMPLETE), {"max_in_flight": 0}),   # over the limit once dispatched
    (pb.CallRequest(call_id=ID, script=pb.Script(outcome=pb.OUTCOME_COMPLETE, reply_bytes=100)),
     {"max_reply_backlog_bytes": 10}),   # the reply over the backlog: 1723
    (pb.CallRequest(call_id=ID, payload=b"x" * 11, script=COMPLETE),
     {"limits": Limits(max_payload_bytes=10)}),   # a known script, a payload over its bound: 87
    (pb.CallRequest(call_id="bad id\n", script=COMPLETE), {}),   # refused before dispatch
    (pb.CallRequest(call_id=ID, script=COMPLETE, cancel_key="k" * 1000), {}),
], ids=["mix", "abort", "headers-first", "polls", "server-polls", "invalid", "over-limit", "backlog",
        "big-payload", "bad-id", "long-key"])
def test_calls_that_are_not_common_take_the_general_path(request_: pb.CallRequest, config: dict[str, Any]) -> None:
    fast = _both(request_, **config)
    assert not fast["fast"]


def test_a_notice_kept_for_the_call_turns_it_to_the_general_path() -> None:
    """A notice that overtook its call is seen at the dispatch: the script's on_cancel decides
    (abort by default), which the path for the common call does not make."""
    results = []
    for fast in (True, False):
        entries: list[Any] = []
        emulator = EmulatorServicer(EmulatorConfig(), Journal(), entries.append)
        _step(emulator, fast)

        async def go() -> Any:
            await emulator.Cancel(pb.CancelRequest(call_id=ID), Context())
            try:
                return await emulator.Call(pb.CallRequest(call_id=ID, script=COMPLETE), Context())
            except Aborted as exc:
                return exc.args
        results.append((asyncio.run(go()), [e[1:] for e in entries]))
    assert results[0] == results[1]
    assert [(e[2], e[4]) for e in results[0][1]] == [(D, ENTER), (D, CANCEL_SEEN), (A, ENTER), (END, ENTER)]


def test_an_id_in_flight_or_just_ended_is_refused_on_either_path() -> None:
    entries: list[Any] = []
    emulator = EmulatorServicer(EmulatorConfig(), Journal(), entries.append)
    request = pb.CallRequest(call_id=ID, script=COMPLETE)
    assert asyncio.run(emulator.Call(request, Context())).call_id == ID
    with pytest.raises(Aborted, match="ended"):
        asyncio.run(emulator.Call(request, Context()))   # --id-retention: the id stays reserved
    assert len(entries) == 3
    assert Limits().max_call_id_bytes >= len(ID)


def test_a_server_call_sets_every_field_of_the_journal_record() -> None:
    """ServerCall sets CallRecord's fields itself (its hot path skips the base's __init__): a field
    added to CallRecord and not set there would be missing from every call's record."""
    from callstate.server.calls import ServerCall
    from callstate.server.journal import ENTRY_BYTES, CallRecord

    call = ServerCall(ID, Journal(), lambda e: None, "complete", deadline_ms=7, method="m.S/M", rule="r")
    record = CallRecord(ID, "complete", 7, "m.S/M", "r")
    for name in CallRecord.__slots__:
        value = getattr(call, name)   # AttributeError: never set
        if name == "bytes":   # the call's first entry (D) is counted in already
            value -= ENTRY_BYTES * len(call.history())
        if name not in ("entries", "state"):   # the call has entered D; a bare record has no entries
            assert value == getattr(record, name), name


def test_calls_with_different_scripts_in_turn_are_each_recorded_as_their_own() -> None:
    """What the step knows of a script is known by its bytes, and of the last one by its fields:
    calls whose scripts take turns on one server each get their own script's path and reply."""
    scripts = [COMPLETE, pb.Script(outcome=pb.OUTCOME_ABORT), pb.Script(outcome=pb.OUTCOME_COMPLETE, reply_bytes=3),
               COMPLETE, pb.Script(outcome=pb.OUTCOME_COMPLETE, echo=True), pb.Script(outcome=pb.OUTCOME_ABORT), COMPLETE]
    runs = []
    for fast in (True, False):
        entries: list[Any] = []
        emulator = EmulatorServicer(EmulatorConfig(), Journal(), entries.append)
        _step(emulator, fast)
        outcomes = []
        for i, script in enumerate(scripts):
            request = pb.CallRequest(call_id=f"call-{i}", script=script, payload=b"ab")
            try:
                outcomes.append(asyncio.run(emulator.Call(request, Context())))
            except Aborted as exc:
                outcomes.append(exc.args)
        runs.append((outcomes, [e[1:] for e in entries]))
    assert runs[0] == runs[1]
    assert [o.payload if isinstance(o, pb.CallReply) else None for o in runs[0][0]] == [
        b"", None, bytes(3), b"", b"ab", None, b""]


def test_what_is_known_of_scripts_by_their_bytes_stays_bounded() -> None:
    """The valid scripts (server and client) and the scripts' facts (the emulator) are kept by
    their bytes within one pair of bounds (`callstate.script.remember`): a longer script is not
    kept, and past the count the record starts afresh, so a caller sending ever new scripts
    cannot grow it."""
    known: dict[bytes, int] = {}
    remember(known, b"x" * (KNOWN_SCRIPT_BYTES + 1), 1)
    assert known == {}
    for i in range(KNOWN_SCRIPTS):
        remember(known, i.to_bytes(4, "big"), i)
    assert len(known) == KNOWN_SCRIPTS
    remember(known, b"one more", -1)
    assert known == {b"one more": -1}
    valid = ValidScripts()
    for delay in range(KNOWN_SCRIPTS + 5):   # each its own valid script
        valid.check(pb.CallRequest(call_id="x", script=pb.Script(dispatch_delay_ms=delay)))
    assert len(valid._keys) <= KNOWN_SCRIPTS
