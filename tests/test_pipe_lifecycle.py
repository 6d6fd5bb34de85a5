"""The pipe tables as data: every edge written out, every illegal move refused, and the
checker's pipe invariants on synthetic logs (no I/O)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from callstate.check import check_entries
from callstate.client.pipe_core import PipeCore
from callstate.errors import CallPending, InvalidAsyncHandle
from callstate.lifecycle import (END, INITIAL, PIPE_KINDS, PIPE_TABLES, SIDES, Lifecycle, LifecycleError, is_legal,
                                 mermaid, move_to_end)
from callstate.pipe_script import PipeCancelPoint, PipeScript, validate_pipe
from callstate.script import ScriptError
from callstate.statelog import Entry, to_dict

_CLIENT_TAIL = {("Can", "cancel_issued", "WComp"), ("WComp", "complete", "Comp"), ("WComp", "cancel", "Can"),
                ("Comp", "completed", "End")}
_SERVER_TAIL = {("A", "aborted", "End"), ("Comp", "completed", "End")}


def _ends(state: str) -> set[tuple[str, str, str]]:
    return {(state, "complete", "Comp"), (state, "abort", "A"), (state, "fatal", "End")}


EXPECTED = {
    "in": {
        "client": {("C", "started", "Push"), ("C", "start_failed", "End"), ("C", "cancel", "Can"),
                   ("Push", "send_complete", "Push"), ("Push", "null_push", "WComp"), ("Push", "complete", "Comp"),
                   ("Push", "cancel", "Can")} | _CLIENT_TAIL,
        "server": {("D", "start_pull", "Pull"), ("Pull", "receive_complete", "Pull"), ("Pull", "null_pull", "NP")}
                  | _ends("D") | _ends("Pull") | _ends("NP") | _SERVER_TAIL,
    },
    "out": {
        "client": {("C", "started", "Pull"), ("C", "start_failed", "End"), ("C", "cancel", "Can"),
                   ("Pull", "receive_complete", "Pull"), ("Pull", "null_pull", "WComp"), ("Pull", "cancel", "Can")}
                  | _CLIENT_TAIL,
        "server": {("D", "start_push", "Push"), ("Push", "send_complete", "Push")} | _ends("D") | _ends("Push")
                  | _SERVER_TAIL,
    },
    "both": {
        "client": {("C", "started", "Push"), ("C", "start_failed", "End"), ("C", "cancel", "Can"),
                   ("Push", "send_complete", "Push"), ("Push", "receive_complete", "Push"), ("Push", "null_push", "Pull"),
                   ("Push", "complete", "Comp"), ("Push", "cancel", "Can"), ("Pull", "receive_complete", "Pull"),
                   ("Pull", "null_pull", "WComp"), ("Pull", "cancel", "Can")} | _CLIENT_TAIL,
        "server": {("D", "start_push", "Push"), ("Push", "send_complete", "Push"), ("Push", "receive_complete", "Push"),
                   ("Push", "null_pull", "NP"), ("NP", "send_complete", "NP")}
                  | _ends("D") | _ends("Push") | _ends("NP") | _SERVER_TAIL,
    },
}
ALL_MOVES = sorted({m for kind in PIPE_KINDS for side in SIDES for moves in PIPE_TABLES[kind][side].values()
                    for m in moves})


@pytest.mark.parametrize("kind,side", list(itertools.product(PIPE_KINDS, SIDES)))
def test_pipe_tables_are_the_model(kind: str, side: str) -> None:
    table = PIPE_TABLES[kind][side]
    assert {(s, m, t) for s, moves in table.items() for m, t in moves.items()} == EXPECTED[kind][side]
    assert table[END] == {}
    for state in table:   # every state reaches End
        seen, frontier = {state}, [state]
        while frontier:
            for target in table[frontier.pop()].values():
                if target not in seen:
                    seen.add(target)
                    frontier.append(target)
        assert END in seen, (kind, side, state)


@pytest.mark.parametrize("kind,side,state,move", [
    (kind, side, state, move) for kind in PIPE_KINDS for side in SIDES for state in PIPE_TABLES[kind][side]
    for move in ALL_MOVES if move not in PIPE_TABLES[kind][side][state]])
def test_every_illegal_pipe_move_is_refused(kind: str, side: str, state: str, move: str) -> None:
    lc = Lifecycle(side, kind=kind)  # type: ignore[arg-type]
    lc.state = state
    with pytest.raises(LifecycleError):
        lc.move(move)
    assert not any(is_legal(side, state, move, t, kind) for t in PIPE_TABLES[kind][side])


def test_initial_moves_name_the_kind_and_every_server_state_has_a_way_to_end() -> None:
    for kind in PIPE_KINDS:
        assert is_legal("client", None, f"call_{kind}", INITIAL["client"], kind)
        assert is_legal("server", None, f"dispatch_{kind}", INITIAL["server"], kind)
        assert not is_legal("client", None, "call", "C", kind)
        for state in PIPE_TABLES[kind]["server"]:
            if state != END:
                assert move_to_end("server", state, kind) is not None or state in ("A", "Comp")


def test_counts_are_fields_of_the_entry_in_all_its_forms() -> None:
    from callstate.statelog import format_line, from_dict, proto_to_dict, to_dict, to_proto
    e = Entry(1.5, "client", "p", "Push", "C", "enter", "started", sent=3, received=7)
    d = to_dict(e)
    assert (d["sent"], d["received"]) == (3, 7) and "detail" not in d
    assert from_dict(d) == e and proto_to_dict(to_proto(e)) == d
    import orjson
    assert orjson.loads(format_line(e)) == d


def test_the_checker_reads_counts_from_the_fields_not_the_detail() -> None:
    entries = _in_pipe(4, 2)
    for d in entries:
        d["detail"] = "sent=2 received=2"   # free text: never parsed
    report = check_entries(entries)
    assert "pipe_count_mismatch" in report.by_kind(), report.summary()


@pytest.mark.parametrize("kind", PIPE_KINDS)
def test_readme_pipe_diagrams_are_drawn_from_the_tables(kind: str) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for side in SIDES:
        assert f"```mermaid\n{mermaid(side, kind)}\n```" in readme, f"README's {kind} {side} diagram drifted"


# -- the sans-IO client core ----------------------------------------------------------------------

class _Sink:
    enabled = True

    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def append(self, e: Entry) -> None:
        self.entries.append(e)


def test_core_counts_messages_without_a_line_per_message_unless_asked() -> None:
    for log_messages, expected_lines in ((False, 6), (True, 6 + 1000)):
        sink = _Sink()
        core = PipeCore("c1", "in", sink, log_messages)  # type: ignore[arg-type]
        core.started()
        for _ in range(1000):
            core.pushed()
        core.null_push()
        core.notify(0)
        core.complete()
        assert core.history[-1] == END and core.sent == 1000
        assert len(sink.entries) == expected_lines - 1   # C, Push, WComp, Comp, End (+ one per message)
        assert (sink.entries[-1].sent, sink.entries[-1].received) == (1000, 0)


def test_core_holds_the_notification_until_the_caller_may_complete() -> None:
    core = PipeCore("c2", "out", None)
    core.started()
    with pytest.raises(CallPending):
        core.complete()
    core.pulled()
    core.notify(0)          # the status is the server's null push: Pull -> WComp
    assert core.state == "WComp" and core.notified
    core.complete()
    with pytest.raises(InvalidAsyncHandle):
        core.complete()
    both = PipeCore("c3", "both", None)
    both.started()
    both.notify(5001)       # the server ended while the caller still pushed: complete from Push
    assert both.notified and both.state == "Push"


# -- the checker's pipe invariants -------------------------------------------------------------------

def _log(side: str, kind: str, steps: list[tuple[str, str | None, str, str | None]], call_id: str = "p1",
         end_code: int | None = 0) -> list[dict[str, Any]]:
    """Entries for one side: (state, prev, move, (sent, received) or None) per step; the first is the initial one."""
    out = []
    for i, (state, prev, move, pair) in enumerate(steps):
        code = end_code if state == END else None
        status = ("OK" if code == 0 else "CANCELLED") if state == END else None
        counts = pair if pair is not None else (None, None)
        out.append(to_dict(Entry(1000.0 + i / 1000, side, call_id, state, prev, "enter", move, code, status, None,
                                 None, *counts)))
    return out


def _in_pipe(client_sent: int, server_received: int, client_half_closed: bool = True) -> list[dict[str, Any]]:
    c = (client_sent, 0)
    s = (0, server_received)
    client = [("C", None, "call_in", None), ("Push", "C", "started", c)]
    client += [("WComp", "Push", "null_push", c)] if client_half_closed else [("Can", "Push", "cancel", c),
                                                                               ("WComp", "Can", "cancel_issued", c)]
    client += [("Comp", "WComp", "complete", c), ("End", "Comp", "completed", c)]
    server = [("D", None, "dispatch_in", None), ("Pull", "D", "start_pull", s), ("NP", "Pull", "null_pull", s),
              ("Comp", "NP", "complete", s), ("End", "Comp", "completed", s)]
    return _log("client", "in", client) + _log("server", "in", server)


def test_checker_accepts_a_normal_in_pipe() -> None:
    report = check_entries(_in_pipe(4, 4))
    assert report.ok, report.summary()


def test_checker_flags_a_cancel_taken_for_a_half_close() -> None:
    report = check_entries(_in_pipe(2, 2, client_half_closed=False))
    assert "phantom_half_close" in report.by_kind(), report.summary()


def test_checker_flags_counts_that_do_not_add_up() -> None:
    assert "pipe_count_mismatch" in check_entries(_in_pipe(3, 5)).by_kind()   # pulled more than pushed
    # a cancelled pipe: one push may reach the server uncounted by the caller, not three
    assert "pipe_count_mismatch" not in check_entries(_in_pipe(2, 3, client_half_closed=False)).by_kind()
    assert "pipe_count_mismatch" in check_entries(_in_pipe(2, 5, client_half_closed=False)).by_kind()
    assert "pipe_count_mismatch" in check_entries(_in_pipe(5, 3)).by_kind()   # completed normally, 2 lost


def test_checker_flags_sides_on_different_tables_and_illegal_pipe_moves() -> None:
    entries = _in_pipe(1, 1)
    entries[0]["move"] = "call_out"   # the client claims an out pipe
    kinds = check_entries(entries).by_kind()
    assert "illegal_transition" in kinds or "pipe_kind_mismatch" in kinds
    assert "pipe_kind_mismatch" in check_entries(
        _log("client", "in", [("C", None, "call", None), ("End", "C", "start_failed", None)], end_code=87)
        + _log("server", "in", [("D", None, "dispatch_in", None), ("End", "D", "fatal", None)], end_code=1726)
    ).by_kind()


# -- scripts and cancel points -----------------------------------------------------------------------

@pytest.mark.parametrize("kind,script,field", [
    ("out", PipeScript(at="after-in", at_count=1), "at"),
    ("in", PipeScript(at="after-out", at_count=1), "at"),
    ("both", PipeScript(at="after-in"), "at_count"),
    ("both", PipeScript(messages=-1), "messages"),
    ("in", PipeScript(interval=-1), "interval_ms"),
])
def test_bad_pipe_scripts_name_their_field(kind: str, script: PipeScript, field: str) -> None:
    with pytest.raises(ScriptError) as info:
        validate_pipe(script.to_proto(), kind)
    assert info.value.field == field


def test_pipe_cancel_points_parse_and_apply_per_kind() -> None:
    assert str(PipeCancelPoint.parse("after-sent:3")) == "after-sent:3"
    assert not PipeCancelPoint.parse("after-sent:1").applies_to("out")
    assert not PipeCancelPoint.parse("after-received:1").applies_to("in")
    assert PipeCancelPoint.parse("after-half-close").applies_to("both")
    for bad in ("after-sent", "after-headers:1", "after-received:0", "sometime"):
        with pytest.raises(ValueError):
            PipeCancelPoint.parse(bad)
