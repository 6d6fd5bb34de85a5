"""The cross-side rules of the lifecycle module, as the checker and the client core apply them:
each tolerance accepted, and its near miss rejected."""

from __future__ import annotations

from typing import Any

import pytest

from callstate import codes, lifecycle
from callstate.check import check_entries
from callstate.client.call_core import CallCore
from callstate.lifecycle import LifecycleError
from callstate.statelog import Entry

T = iter(range(10**6))


def e(side: str, state: str, prev: str | None, move: str | None = None, event: str = "enter",
      call_id: str = "x", **extra: Any) -> dict[str, Any]:
    return {"ts": f"2026-11-24T10:00:00.{next(T):06d}Z", "side": side, "call_id": call_id, "state": state,
            "prev": prev, "event": event, **({"move": move} if move else {}), **extra}


def client(code: int, cancel: str | None = None, status: str = "X", legacy: bool = False) -> list[dict[str, Any]]:
    out = [e("client", "C", None, "call"), e("client", "WComp", "C", "started")]
    if cancel:
        field = {"detail": cancel} if legacy else {"cancel": cancel}
        out += [e("client", "Can", "WComp", "cancel", **field), e("client", "WComp", "Can", "cancel_issued")]
    return out + [e("client", "Comp", "WComp", "complete"),
                  e("client", "End", "Comp", "completed", code=code, grpc_status=status)]


def server(path: str, code: int, seen: str | None = None, legacy: bool = False) -> list[dict[str, Any]]:
    out = [e("server", "D", None, "dispatch")]
    if seen:
        out.append(e("server", "D", "D", event="cancel_seen", **({"detail": seen} if legacy else {"cancel": seen})))
    if path == "complete":
        out += [e("server", "Comp", "D", "complete"), e("server", "End", "Comp", "completed", code=code)]
    elif path == "abort":
        out += [e("server", "A", "D", "abort"), e("server", "End", "A", "aborted", code=code)]
    else:
        out += [e("server", "End", "D", "fatal", code=code)]
    return out


def kinds(entries: list[dict[str, Any]]) -> set[str]:
    return set(check_entries(entries).by_kind())


# -- each side against its own path -------------------------------------------------------------

@pytest.mark.parametrize("path,code,ok", [
    ("complete", 0, True), ("complete", 77, False), ("complete", 1726, False),
    ("fatal", 1726, True), ("fatal", 0, False), ("fatal", 5001, False),
    ("abort", 5001, True), ("abort", 1818, True), ("abort", 0, False),
])
def test_a_server_is_judged_against_its_own_path_even_when_the_client_agrees(path: str, code: int, ok: bool) -> None:
    got = kinds(client(code) + server(path, code))
    assert got == (set() if ok else {"wrong_final_code"}), got


def test_a_client_that_failed_to_start_must_end_non_zero() -> None:
    good = [e("client", "C", None, "call"), e("client", "End", "C", "start_failed", code=87)]
    bad = [e("client", "C", None, "call", call_id="y"), e("client", "End", "C", "start_failed", code=0, call_id="y")]
    assert kinds(good) == set()
    assert kinds(bad) == {"wrong_final_code"}


# -- the tolerances of the cross-side rule, each with its near miss --------------------------------

@pytest.mark.parametrize("legacy", [False, True])
def test_1818_after_an_abortive_cancel_is_accepted_whatever_the_server_did(legacy: bool) -> None:
    assert kinds(client(1818, "abortive", legacy=legacy) + server("complete", 0)) == set()
    assert kinds(client(1818, "abortive", legacy=legacy) + server("abort", 5001)) == set()


@pytest.mark.parametrize("legacy", [False, True])
def test_near_miss_1818_after_only_a_non_abortive_cancel_is_rejected(legacy: bool) -> None:
    # a notice leaves the answer to the server: it completed, so the client must see 0
    assert kinds(client(1818, "non-abortive", legacy=legacy) + server("complete", 0)) == {"code_mismatch"}
    assert kinds(client(1818) + server("complete", 0)) == {"code_mismatch"}   # no cancel at all


def test_1818_after_a_deadline_is_accepted_and_a_different_status_is_not() -> None:
    assert kinds(client(1818, status="DEADLINE_EXCEEDED") + server("complete", 0)) == set()
    assert kinds(client(1818, status="CANCELLED") + server("complete", 0)) == {"code_mismatch"}


@pytest.mark.parametrize("legacy", [False, True])
def test_1722_while_the_server_saw_the_caller_vanish_is_accepted(legacy: bool) -> None:
    assert kinds(client(1722) + server("abort", 1818, seen="abortive", legacy=legacy)) == set()


@pytest.mark.parametrize("legacy", [False, True])
def test_near_miss_1722_without_an_abortive_cancel_seen_is_rejected(legacy: bool) -> None:
    notice = "notice" if legacy else "non-abortive"
    assert kinds(client(1722) + server("abort", 1818, seen=notice, legacy=legacy)) == {"code_mismatch"}
    assert kinds(client(1722) + server("complete", 0)) == {"code_mismatch"}


def test_equal_codes_agree_and_a_server_stop_is_1722_on_both_sides() -> None:
    assert kinds(client(1722) + server("abort", 1722)) == set()
    assert kinds(client(5001) + server("abort", 5001)) == set()
    assert kinds(client(5002) + server("abort", 5001)) == {"code_mismatch"}


def test_codes_agree_names_the_rule_that_accepts() -> None:
    agree = lifecycle.codes_agree
    kw = dict(client_abortive=False, client_deadline=False, server_saw_abortive=False)
    assert agree(0, 0, **kw) == lifecycle.AGREE_EQUAL
    assert agree(1818, 0, **{**kw, "client_abortive": True}) == lifecycle.AGREE_CALLER_CANCELLED
    assert agree(1818, 0, **{**kw, "client_deadline": True}) == lifecycle.AGREE_CALLER_CANCELLED
    assert agree(1722, 1818, **{**kw, "server_saw_abortive": True}) == lifecycle.AGREE_CONNECTION_LOST
    assert agree(1722, 1818, **{**kw, "client_abortive": True}) is None
    assert agree(1818, 0, **{**kw, "server_saw_abortive": True}) is None


def test_server_end_codes() -> None:
    assert lifecycle.server_end_code(lifecycle.COMPLETED) == codes.RPC_S_OK
    assert lifecycle.server_end_code(lifecycle.FATAL) == codes.RPC_S_CALL_FAILED
    assert lifecycle.server_end_code(lifecycle.ABORTED, 5001) == 5001


def test_cancel_kind_of_reads_the_field_and_old_logs() -> None:
    assert lifecycle.cancel_kind_of("abortive") == lifecycle.ABORTIVE
    assert lifecycle.cancel_kind_of(None, "notice") == lifecycle.NON_ABORTIVE
    assert lifecycle.cancel_kind_of(None, "non-abortive") == lifecycle.NON_ABORTIVE
    assert lifecycle.cancel_kind_of(None, "before start") is None
    assert lifecycle.cancel_kind_of("non-abortive", "abortive") == lifecycle.NON_ABORTIVE   # the field wins


def test_a_renamed_detail_does_not_change_the_cancel_kind() -> None:
    """The kind is a field of its own: the free-text detail may say anything."""
    entries = client(1818, "non-abortive") + server("complete", 0)
    for x in entries:
        if x["state"] == "Can":
            x["detail"] = "the caller changed its mind"
    assert kinds(entries) == {"code_mismatch"}


def test_wrong_typed_fields_are_bad_entries() -> None:
    entries = client(0) + server("complete", 0)
    entries[1]["prev"] = 5
    entries[-1]["code"] = "0"
    entries[2]["ts"] = 17
    got = check_entries(entries)
    bad = [v.message for v in got.violations if v.kind == "bad_entry"]
    assert [m.rsplit(" ", 1)[-1] for m in bad] == ["prev", "ts", "code"], bad   # each names its field


@pytest.mark.parametrize("at,logged_in", [(2, "C"), (1, "WComp")])   # a state sorting before / after the call's
def test_an_event_logged_in_a_state_the_call_is_not_in_is_illegal(at: int, logged_in: str) -> None:
    entries = client(0)
    entries.insert(at, e("client", logged_in, logged_in, event="complete_pending"))
    got = check_entries(entries)
    assert [v.kind for v in got.violations] == ["illegal_transition"], got.summary()
    assert "event complete_pending in " + logged_in in got.violations[0].message
    entries[at] = e("client", entries[at - 1]["state"], entries[at - 1]["state"], event="complete_pending")
    assert check_entries(entries).ok   # logged in the call's own state: fine


def test_an_unknown_side_is_a_bad_entry() -> None:
    entries = client(0)
    entries[1]["side"] = "proxy"
    got = check_entries(entries)
    assert [v.kind for v in got.violations if v.kind == "bad_entry"] == ["bad_entry"], got.summary()


def test_a_cancel_seen_logged_by_the_client_is_a_bad_entry_and_not_a_cancel() -> None:
    dispatched = server("complete", 0, seen="abortive")   # timed before the client's entries
    entries = client(0)
    entries.insert(2, e("client", "WComp", "WComp", event="cancel_seen", cancel="abortive"))
    got = check_entries(entries + dispatched)
    assert set(got.by_kind()) == {"bad_entry"} and got.cancel_propagation_ms == [], got.summary()


def test_a_cancel_seen_without_a_kind_is_not_abortive() -> None:
    done = server("complete", 0)
    entries = client(0) + done[:1] + [e("server", "D", "D", event="cancel_seen")] + done[1:]
    assert kinds(entries) == set()
    assert kinds(client(1722) + done[:1] + [e("server", "D", "D", event="cancel_seen")] + done[1:]) == {"code_mismatch"}


def test_a_ts_that_is_not_a_time_is_a_bad_entry() -> None:
    bad = e("client", "C", None, "call")
    bad["ts"] = "yesterday"
    got = check_entries([bad])
    assert [v.kind for v in got.violations] == ["bad_entry"] and "is not a time" in got.violations[0].message


@pytest.mark.parametrize("event", ["abort_seen", "disconnect_seen"])   # sorting before and after cancel_seen
def test_an_unknown_server_event_is_a_bad_entry_and_not_a_cancel_seen(event: str) -> None:
    done = server("complete", 0)
    entries = client(1722) + done[:1] + [e("server", "D", "D", event=event, cancel="abortive")] + done[1:]
    assert kinds(entries) == {"bad_entry", "code_mismatch"}   # no 1722 tolerance from an unknown event
    assert kinds(client(1722) + server("complete", 0, seen="abortive")) == set()   # the real event gives it


# -- the client's rule: an outcome that arrives in C is held until WComp ------------------------

class Sink:
    enabled = True

    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def append(self, entry: Entry) -> None:
        self.entries.append(entry)


def test_an_outcome_arriving_while_the_caller_is_in_c_waits_for_wcomp() -> None:
    sink = Sink()
    core = CallCore("id", sink)  # type: ignore[arg-type]
    fired: list[object] = []
    core.add_done_callback(fired.append)
    assert core.notify(codes.RPC_S_OK, b"reply", "OK")   # the reply beat `started`
    assert core.state == lifecycle.C and not core.notified and not fired
    assert core.status() == codes.RPC_S_ASYNC_CALL_PENDING
    core.started()
    assert core.notified and len(fired) == 1 and core.status() == codes.RPC_S_OK
    assert core.complete() == b"reply"
    assert [x.state for x in sink.entries] == ["C", "WComp", "Comp", "End"]


def test_a_cancel_after_the_outcome_arrived_is_logged_but_changes_no_code() -> None:
    sink = Sink()
    core = CallCore("id", sink)  # type: ignore[arg-type]
    core.started()
    core.notify(codes.RPC_S_OK, b"r", "OK")
    assert core._cancel_moves(True, sent=True) == "done"
    assert core.complete() == b"r"
    cans = [x for x in sink.entries if x.state == lifecycle.CAN]
    assert [x.cancel for x in cans] == [lifecycle.ABORTIVE]


def test_illegal_moves_are_refused_on_the_production_path() -> None:
    """The adapters' own move(): the client core and the server call refuse what the table forbids."""
    core = CallCore("id", Sink())  # type: ignore[arg-type]
    with pytest.raises(LifecycleError, match="client lifecycle: move 'complete' is illegal in state 'C'"):
        core._move(lifecycle.COMPLETE)

    from callstate.server.calls import ServerCall
    from callstate.server.journal import Journal
    call = ServerCall("s", Journal(), lambda entry: None)
    call.move(lifecycle.ABORT)
    with pytest.raises(LifecycleError, match="server lifecycle: move 'complete' is illegal in state 'A'"):
        call.move(lifecycle.COMPLETE)
    call.move(lifecycle.ABORTED, 5001)
    with pytest.raises(LifecycleError, match="no move leaves it"):
        call.move(lifecycle.ABORTED, 5001)


def test_an_end_without_an_integer_code_is_a_wrong_final_code() -> None:
    entries = [e("client", "C", None, "call"), e("client", "WComp", "C", "started"),
               e("client", "Comp", "WComp", "complete"), e("client", "End", "Comp", "completed", code=None)]
    assert kinds(entries) == {"wrong_final_code"}
    assert lifecycle.own_path_error("client", lifecycle.COMPLETED, True) is not None   # a bool is no code
    assert lifecycle.own_path_error("client", lifecycle.COMPLETED, 0) is None


def test_an_illegal_move_names_the_legal_ones() -> None:
    with pytest.raises(LifecycleError) as info:
        lifecycle.next_state("client", "WComp", "started")
    assert str(info.value) == "client lifecycle: move 'started' is illegal in state 'WComp' (legal: cancel, complete)"


def test_an_unknown_state_is_not_called_final() -> None:
    message = str(LifecycleError("client", "Bogus", "started"))
    assert "no move leaves it" not in message and "legal:" not in message
    assert "no move leaves it" in str(LifecycleError("client", "End", "started"))


# -- the checker's figures and bookkeeping (found by mutation testing) ---------------------------

def test_percentiles_pick_by_rank() -> None:
    from callstate.check import percentiles
    # the nearest rank: the smallest value with P% of the values at or below it
    got = percentiles([float(x) for x in range(7, 0, -1)])    # 1..7, given unsorted
    assert got == {"count": 7, "p50": 4.0, "p90": 7.0, "p99": 7.0, "max": 7.0}
    hundred = percentiles([float(x) for x in range(1, 101)])
    assert (hundred["p50"], hundred["p90"], hundred["p99"]) == (50.0, 90.0, 99.0)   # p99 of 100 is not the max
    thousand = percentiles([float(x) for x in range(1, 1001)])
    assert (thousand["p99"], thousand["max"]) == (990.0, 1000.0)
    assert percentiles([0.335, 1.105])["p50"] == 0.335   # the median of two is the lower, not the max
    assert percentiles([2.0])["p50"] == percentiles([2.0])["p99"] == 2.0
    assert percentiles([]) == {"count": 0}


def test_cancel_propagation_is_client_can_to_server_cancel_seen_in_ms() -> None:
    def at(ms: float) -> str:
        return f"2026-11-24T10:00:00.{int(ms * 1000):06d}Z"
    entries = [
        {**e("client", "C", None, "call"), "ts": at(1)}, {**e("client", "WComp", "C", "started"), "ts": at(2)},
        {**e("server", "D", None, "dispatch"), "ts": at(3)},
        {**e("client", "Can", "WComp", "cancel", cancel="abortive"), "ts": at(10)},
        {**e("server", "D", "D", event="cancel_seen", cancel="abortive"), "ts": at(12.5)},
    ]
    report = check_entries(entries)
    assert report.cancel_propagation_ms == [pytest.approx(2.5, abs=0.001)]   # float timestamps
    entries[2]["ts"] = at(10)   # dispatched at the cancel's instant: still measured
    assert check_entries(entries).cancel_propagation_ms == [pytest.approx(2.5, abs=0.001)]
    entries[2]["ts"] = at(11)   # near miss: a cancel racing the dispatch would measure the dispatch: left out
    assert check_entries(entries).cancel_propagation_ms == []
    entries[2]["ts"] = at(3)
    entries[4]["ts"] = at(9)    # the server's clock 1 ms behind the client's: reported as it is, negative
    assert check_entries(entries).cancel_propagation_ms == [pytest.approx(-1.0, abs=0.001)]


def test_counts_by_side_and_examples_capped() -> None:
    from callstate.check import EXAMPLES_PER_KIND
    entries = client(0) + server("complete", 0)
    report = check_entries(entries)
    assert report.by_side == {"client": 4, "server": 3} and report.entries == 7
    many = [x for i in range(8) for x in server("complete", 77) if (x.update(call_id=f"s{i}") or True)]
    shown = check_entries(many).to_json()["violations_by_kind"]["wrong_final_code"]
    assert shown["count"] == 8 and len(shown["examples"]) == EXAMPLES_PER_KIND == 5


def test_a_non_text_call_id_is_a_bad_entry() -> None:
    bad = e("client", "C", None, "call")
    bad["call_id"] = 5
    assert [v.kind for v in check_entries([bad]).violations] == ["bad_entry"]


def test_an_illegal_first_entry_names_the_start() -> None:
    got = check_entries([e("client", "WComp", None, "started")])
    assert any("(start) --started--> WComp (call was in (nothing))" in v.message for v in got.violations), got.summary()
    got = check_entries([e("client", "C", None, "call"), e("client", "Comp", "C", "complete")])
    assert any("C --complete--> Comp (call was in C)" in v.message for v in got.violations), got.summary()
