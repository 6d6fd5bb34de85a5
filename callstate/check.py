"""Verify state logs against the invariants of docs/model.md, with the lifecycle module's rules.

1. each side's transitions are legal (`lifecycle.is_legal`);
2. every call id reaches End exactly once on each side that saw it, nothing after;
3. each side's final code fits its own path (`lifecycle.own_path_error`), and the client's
   final code agrees with the server's outcome (`lifecycle.codes_agree`);
4. the server's in-flight count is back to zero (when the caller knows it).

Input is any number of JSON-lines logs in any order; entries are joined by
call id. A side's entries for a call keep their order within a file.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from callstate import codes
from callstate.codes import LOCAL_CLOSE_STATUS
from callstate.lifecycle import (ABORTIVE, CAN, CANCEL_SEEN, CANCEL_SENT, CLIENT, CLIENT_CLOSED, END, ENTER, EVENTS,
                                 NON_ABORTIVE, NOTICE_KEPT, NULL_PULL, NULL_PUSH, PIPE_BOTH, PIPE_BREACH, PIPE_EVENTS,
                                 PIPE_OUT, SERVER, SIDE_STATES, SIDES, UNARY, breach_missing, cancel_kind_of,
                                 codes_agree, is_legal, kind_of_initial_move, own_path_error)
from callstate.propagation import cancel_propagation, figures_text, polled_text
from callstate.statelog import Entry, TimeReader, logged_time, parse_ts

KINDS = {
    "bad_entry": "an entry with an unknown side or state, or a field of the wrong type",
    "illegal_transition": "a state entered by a move the table does not allow (invariant 1)",
    "not_ended": "a call that never reached End on a side that saw it (invariant 2); in a log still being "
                 "written (a server still running, a call it still holds) a call in flight looks so: check "
                 "again once it has ended; a server killed mid-run (kill -9) leaves its calls in flight so; a "
                 "client's, from a harness that neither completed the call nor closed its client (close() ends "
                 "every call it logged)",
    "after_end": "an entry after End, or a second End (invariant 2)",
    "code_mismatch": "the client's final code disagrees with the server's outcome (invariant 3)",
    "wrong_final_code": "a side's final code does not fit its own path, e.g. a server Comp -> End with a non-zero "
                        "code (invariant 3)",
    "unknown_to_server": "the client completed with 0 but no server log has the call (invariant 3; behind "
                         "several replicas: is one replica's log missing? a server killed (kill -9) loses the "
                         "entries it had not yet written)",
    "server_in_flight": "calls still in flight on the server after the run (invariant 4)",
    "server_lost": "the server stopped answering during the run: its side cannot be verified",
    "pipe_kind_mismatch": "the two sides of a call follow different tables (unary, or pipes of different kinds)",
    "pipe_count_mismatch": "a side pulled more messages than the other side pushed, or a pipe completed normally on "
                           "both sides with different counts",
    "impossible_status": "a final code and gRPC status that cannot go together: 0 with a failure status, or a "
                         "non-zero code (an abort) with status OK",
    "time_order": "a side's End earlier than its first state, or a server dispatch far outside its client's call "
                  "(beyond the clock skew allowed between hosts)",
    "pipe_incomplete": "an out or both pipe completed normally on both sides, but the client pulled fewer messages "
                       "than the server pushed",
    "pipe_breach_missing": "a pipe call ended with 1917 RPC_X_PIPE_DISCIPLINE_ERROR but neither side logged a pipe "
                           "rule broken (pipe_breach)",
    "phantom_half_close": "the server logged the client's null push (half-close) but the client never made one: a "
                          "cancel taken for a half-close",
    "notice_astray": "a cancel notice answered 'delivered: kept for the dispatch' by a server that had not dispatched "
                     "the call, while the server that dispatched it never saw the notice: behind a balancer, the "
                     "notice went to another replica than its call (route every RPC on the callstate-call-id "
                     "metadata, as deploy/nginx does)",
}
# A kept notice waits --early-notice-ttl (10 s) for its call: a dispatch this much later than the
# notice's answer may have come after the notice was let go, and is not judged astray. (A server
# run with a shorter --early-notice-ttl lets a notice go sooner: on one server, that is named too.)
NOTICE_KEPT_WAIT_S = 1.0
EXAMPLES_PER_KIND = 5
# What a log still being written (its writer running, or stopped) shows of its calls in flight
LIVE_KINDS = frozenset({"not_ended", "unknown_to_server"})
_DEADLINE = codes.DEADLINE_EXCEEDED   # the status of a call whose deadline expired


@dataclass
class Violation:
    kind: str
    call_id: str
    message: str
    method: str = ""   # a stand-in's call: the user's method its entries name ("" for callstate.v1's own)

    def example(self) -> dict[str, str]:
        """As a report's JSON shows it: the method only where the call's entries name one."""
        return {"call_id": self.call_id, "message": self.message, **({"method": self.method} if self.method else {})}

    def line(self) -> str:
        """As the text summary shows it."""
        return f"{self.call_id}{f' ({self.method})' if self.method else ''}: {self.message}"


@dataclass(slots=True)
class SideTrack:
    """One side's view of one call, as the log replays it."""

    state: str | None = None
    ended: bool = False
    code: int | None = None
    grpc_status: str | None = None
    abortive_cancel: bool = False     # client: an abortive cancel before End
    closed: bool = False              # client: close() cut the call off (the client_closed event)
    cancel_ts: float | str | None = None   # client: first Can; server: first cancel_seen
    abortive_seen: bool = False       # server: saw an abortive cancel / disconnect
    start_ts: float | str | None = None  # the first state entered
    kind: str = UNARY                 # which table: unary or a pipe kind (from the first entry's move)
    sent: int = 0                     # pipes: the latest message counts a transition carried
    received: int = 0
    null_push: bool = False           # client: made its null push (half-close)
    null_pull: bool = False           # the peer's null push arrived
    end_ts: float | str | None = None  # when End was entered
    poll_wait_ms: float | None = None  # server: its first cancel_seen came from a poll, this long after arrival
    breach: bool = False              # a pipe rule broken, as this side logged it
    where: str = ""                   # the file and line of this side's latest entry ("path:N: "), if read from one
    first: Any = None                 # where its first entry is in the input (a retiring Checker orders by it)
    method: str = ""                  # a stand-in's call: the user's method, as its entries name it
    reused: bool = False              # a later call under the same id started on this side (not judged)
    notice_kept: float | str | None = None   # client: when a notice was answered NOTICE_KEPT
    notice_seen: bool = False         # server: saw a non-abortive cancel (a notice)


@dataclass
class CheckReport:
    files: list[str] = field(default_factory=list)
    entries: int = 0
    calls: int = 0
    by_side: dict[str, int] = field(default_factory=dict)
    by_code: dict[int, int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    cancel_propagation_ms: list[float] = field(default_factory=list)
    # calls whose handler polls for cancels: Can -> cancel_seen includes the wait for the poll
    cancel_propagation_polled_ms: list[float] = field(default_factory=list)
    cancel_poll_wait_ms: list[float] = field(default_factory=list)   # their arrival -> poll
    # calls only the server logged while other calls have client entries: a client log not given
    # (another client's, a load's own barrier call): their client side is not checked
    server_only: int = 0
    both_sides: int = 0   # calls both a client and a server log have: the calls the two sides were compared on
    # call ids a later call used again once the first had ended (runs appended to one log, a harness
    # naming its calls): only each id's first call is judged
    reused_ids: int = 0
    # what reading the logs warned of (a last line cut short, then skipped): said wherever the verdict is
    warnings: list[str] = field(default_factory=list)
    # the logs still being written as they were read (it grew, a process has it open for writing):
    # the calls they have in flight look unended, so such violations are no verdict
    live: list[str] = field(default_factory=list)
    live_files: list[str] = field(default_factory=list)   # those logs' names, as the violations' places name them

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def one_sided(self) -> str | None:
        """The only side the logs hold (the other side is unknown: a server that is not
        callstate, or one side's log missing), or None when both sides or nothing are logged."""
        return one_side_of(self.by_side)

    @property
    def bad_entries(self) -> int:
        """Entries of no known side (a bad_entry each): with `by_side` they add up to `entries`."""
        return self.entries - sum(self.by_side.values())

    @property
    def no_final_code(self) -> int:
        """Calls counted under no final code: neither side logged their End with one."""
        return self.calls - sum(self.by_code.values())

    def not_judged(self, allow_one_side: bool = False) -> str | None:
        """Why no verdict can be given, or None: nothing was checked, or only one side is logged
        and judging it alone was not asked for. The printed verdict and the exit status both
        follow this, so a summary never says OK where the command fails."""
        if not self.entries:
            return "nothing was checked: no entries"
        if self._live_explains():
            return (f"{'; '.join(self.live)}: a log still being written (its writer running, or stopped), whose "
                    "calls in flight look unended: check again once it has stopped")
        if self.reused_ids:
            return (f"{_reused_text(self.reused_ids)}: only each id's first call is judged; check each run's logs "
                    "apart, or give every call an id of its own")
        if (side := self.one_sided) is not None and not allow_one_side:
            return f"only the {side} side is logged: pass --allow-one-side to judge it alone, or add the other side's log"
        if not self.both_sides and all(self.by_side.get(s) for s in SIDES):
            # nothing was compared across the sides: an OK would hold for no call of the run
            return "the client and server logs share no call (logs of different runs?): the two sides were not compared"
        return None

    def shown_not_judged(self, allow_one_side: bool = False) -> str | None:
        """Why the verdict shown is NOT JUDGED, or None when it is OK or FAILED: no verdict could
        be given, and no violation proves a failure (those a log still being written explains do not)."""
        why = self.not_judged(allow_one_side)
        return why if why is not None and (self.ok or self._live_explains()) else None

    def _live_explains(self) -> bool:
        """Whether every violation is one a log still being written shows of its calls in flight: a
        call unended in such a log (on its other side too, then: the call is in flight), or a
        client's call no server log has while another log is still being written. A call a
        finished log left unended, its other side ended, is a failure whatever else runs on."""
        if not (self.live and self.violations):
            return False
        in_flight = {v.call_id for v in self.violations if v.kind == "not_ended" and _in_any(v, self.live_files)}
        return all(v.call_id in in_flight if v.kind == "not_ended" else
                   v.kind == "unknown_to_server" and any(not _in_any(v, [f]) for f in self.live_files)
                   for v in self.violations)

    def verdict_ok(self, allow_one_side: bool = False) -> bool:
        return self.ok and self.not_judged(allow_one_side) is None

    def by_kind(self) -> dict[str, list[Violation]]:
        out: dict[str, list[Violation]] = collections.defaultdict(list)
        for v in self.violations:
            out[v.kind].append(v)
        return dict(out)

    def to_json(self, allow_one_side: bool = False) -> dict[str, Any]:
        kinds = self.by_kind()
        return {
            "ok": self.verdict_ok(allow_one_side),
            "not_judged": self.not_judged(allow_one_side),
            "files": self.files,
            "entries": self.entries,
            "calls": self.calls,
            "by_side": self.by_side,
            "bad_entries": self.bad_entries,
            "by_code": {str(k): v for k, v in sorted(self.by_code.items())},
            "no_final_code": self.no_final_code,
            "violations": len(self.violations),
            "violations_by_kind": {
                kind: {"count": len(vs), "meaning": KINDS.get(kind, ""),
                       "examples": [v.example() for v in vs[:EXAMPLES_PER_KIND]]}
                for kind, vs in sorted(kinds.items())
            },
            "cancel_propagation_ms": percentiles(self.cancel_propagation_ms),
            "cancel_propagation_polled_ms": percentiles(self.cancel_propagation_polled_ms),
            "cancel_poll_wait_ms": percentiles(self.cancel_poll_wait_ms),
            "one_sided": self.one_sided,
            "server_only": self.server_only,
            "both_sides": self.both_sides,
            "reused_ids": self.reused_ids,
            "warnings": self.warnings,
        }

    def summary(self, allow_one_side: bool = False) -> str:
        sides = ", ".join([f"{n} {s}" for s, n in sorted(self.by_side.items())]
                          + ([f"{self.bad_entries} bad"] if self.bad_entries else []))   # so that they add up
        lines = [f"{counted(self.calls, 'call')}, {counted(self.entries, 'entry', 'entries')} from "
                 f"{counted(len(self.files), 'file') if self.files else 'in-memory files'}" + (f" ({sides})" if sides else "")]
        for code, n in sorted(self.by_code.items()):
            lines.append(f"  {n:>8}  {codes.describe(code)}")
        if self.no_final_code:   # so that the counts add up to the calls
            lines.append(f"  {self.no_final_code:>8}  no final code (no side logged the call's End with one)")
        prop = percentiles(self.cancel_propagation_ms)
        if (side := self.one_sided) is not None:
            lines.append(one_sided_text(side))
        elif prop["count"]:
            lines.append(figures_text(prop))
        polled, wait = percentiles(self.cancel_propagation_polled_ms), percentiles(self.cancel_poll_wait_ms)
        if polled["count"]:
            lines.append(polled_text(polled, wait))
        if self.server_only:
            lines.append(f"{counted(self.server_only, 'call')} only the server logged (no client log given has "
                         f"{'it' if self.server_only == 1 else 'them'}): the client side and the codes' agreement "
                         f"of {'that call' if self.server_only == 1 else 'those calls'} are not checked")
        if self.reused_ids and not self.ok:
            lines.append(f"{_reused_text(self.reused_ids)}: only each id's first call is judged")
        if (why := self.shown_not_judged(allow_one_side)) is not None:
            lines.append(f"NOT JUDGED: {why}")
            lines += self._violation_lines()
        elif self.ok:
            lines.append("OK: every invariant holds" + (f" on the {side} side" if side is not None else ""))
        else:
            lines.append(f"FAILED: {counted(len(self.violations), 'violation')}")
            lines += self._violation_lines()
        return "\n".join(lines)

    def _violation_lines(self) -> list[str]:
        lines = []
        for kind, vs in sorted(self.by_kind().items()):
            lines.append(f"  {kind}: {len(vs)} ({KINDS.get(kind, '')})")
            for v in vs[:EXAMPLES_PER_KIND]:
                lines.append(f"    {v.line()}")
        return lines


def _name_method(violations: Sequence[Violation], method: str) -> None:
    """Name a stand-in call's method in its violations (a call of callstate.v1's own names none)."""
    for v in violations if method else ():
        v.method = v.method or method


def _in_any(v: Violation, files: Sequence[str]) -> bool:
    """Whether `v` is of an entry of one of these files (its message starts with its place)."""
    return any(v.message.startswith(f"{name}:") for name in files)


def _reused_text(n: int) -> str:
    return (f"{counted(n, 'call id')} {'is' if n == 1 else 'are'} used by more than one call (a new call after the "
            "first had ended: runs appended to the same logs, or a harness naming its calls)")


def one_side_of(by_side: Mapping[str, int]) -> str | None:
    logged = [side for side in SIDES if by_side.get(side)]
    return logged[0] if len(logged) == 1 else None


def counted(n: int, noun: str, plural: str = "") -> str:
    """"1 call", "2 calls": a count and its noun, as a summary line says it."""
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def one_sided_text(side: str) -> str:
    other = next(s for s in SIDES if s != side)
    return (f"one-sided: only {side} entries, the {other} side is unknown (its invariants and the codes' agreement "
            f"are not checked); cancel propagation: not measurable")


def percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    s, n = sorted(values), len(values)
    # the nearest rank: the P-th percentile is the smallest value with P% of them at or below it,
    # the ceil(P * n / 100)-th in order (of two values the median is the lower; of 100, p99 the 99th)
    pick = lambda p: s[max(0, -(-p * n // 100) - 1)]  # noqa: E731
    return {"count": n, "p50": pick(50), "p90": pick(90), "p99": pick(99), "max": s[-1]}


def _ts(value: float | str) -> float:
    return value if isinstance(value, float) else parse_ts(value)


_TEXT = (str, type(None))


def _known(side: Any, call_id: Any, state: Any) -> bool:
    return isinstance(call_id, str) and isinstance(state, str) and side in SIDES and state in SIDE_STATES[side]


def _wrong_field(prev: Any, event: Any, move: Any, code: Any, grpc_status: Any, detail: Any, ts: Any, cancel: Any,
                 sent: Any, received: Any, delay_ms: Any) -> str:
    """The first field of the wrong type ("" when none): text, then counts, then times."""
    wrong = _wrong_types(prev=prev, event=event, move=move, grpc_status=grpc_status, detail=detail, cancel=cancel)
    wrong = wrong or next((name for name, value in (("code", code), ("sent", sent), ("received", received))
                           if value is not None and type(value) is not int), "")
    if not wrong and delay_ms is not None and (type(delay_ms) not in (int, float) or not delay_ms >= 0):
        wrong = "delay_ms"
    return wrong or ("" if isinstance(ts, (str, float)) else "ts")


def _not_a_time(ts: float | str) -> bool:
    if isinstance(ts, float):
        return False
    try:
        parse_ts(ts)
    except ValueError:
        return True
    return False


def _entry_problem(side: Any, call_id: Any, state: Any, prev: Any, event: Any, move: Any, code: Any,
                   grpc_status: Any, detail: Any, ts: Any, cancel: Any, sent: Any, received: Any,
                   delay_ms: Any) -> str | None:
    """Why an entry cannot be read (a bad_entry), or None."""
    if not isinstance(call_id, str):
        return f"call_id {call_id!r} is not text"
    if not _known(side, call_id, state):
        return f"side={side!r} state={state!r}"
    if wrong := _wrong_field(prev, event, move, code, grpc_status, detail, ts, cancel, sent, received, delay_ms):
        return f"{side} {state}: wrong type of {wrong}"
    if (sent is not None and sent < 0) or (received is not None and received < 0):
        return f"{side} {state}: negative message count"
    if _not_a_time(ts):
        return f"{side} {state}: ts {ts!r} is not a time"
    return None


def _note_event(track: SideTrack, side: str, event: str, ts: float | str, cancel: Any, detail: Any,
                delay_ms: Any) -> None:
    """What an event (no state change) tells about the call."""
    if side == CLIENT and event == CLIENT_CLOSED:
        track.closed = True
    if side == SERVER and event == CANCEL_SEEN:
        if not track.cancel_ts and delay_ms is not None:
            track.poll_wait_ms = float(delay_ms)
        track.cancel_ts = track.cancel_ts or ts
        track.abortive_seen = track.abortive_seen or cancel_kind_of(cancel, detail) == ABORTIVE
        track.notice_seen = track.notice_seen or cancel_kind_of(cancel, detail) == NON_ABORTIVE
    elif side == CLIENT and event == CANCEL_SENT and detail == NOTICE_KEPT:
        track.notice_kept = track.notice_kept or ts
    elif event == PIPE_BREACH:
        track.breach = True


def _note_pipe(track: SideTrack, move: Any, sent: Any, received: Any) -> None:
    """A pipe's counts and null pushes, as a transition carries them."""
    if sent is not None:
        track.sent, track.received = sent, received or 0
    if move == NULL_PUSH:
        track.null_push = True
    elif move == NULL_PULL:
        track.null_pull = True


def _note_state(track: SideTrack, side: str, state: str, ts: float | str, cancel: Any, detail: Any) -> None:
    """A state entered: the call's first time, and the client's first cancel."""
    if track.state is None:
        track.start_ts = ts
    track.state = state
    if side == CLIENT and state == CAN:
        track.cancel_ts = track.cancel_ts or ts
        track.abortive_cancel = track.abortive_cancel or cancel_kind_of(cancel, detail) == ABORTIVE


class Checker:
    """Feed entries (dicts in the state-log format of docs/model.md), then `finish()`.

    `retire`: judge a call and drop its tracks once every side that logged it has ended and
    the log time read has moved on past that (`LATE_S` after both Ends; `ONE_SIDED_S` after a
    lone side's End, as the other side may still come, up to the clock skew allowed later).
    Memory then follows the calls in flight, not the log's length; the report comes out as a
    reading of the inputs one after another would give it (`pos`: an entry's place in that
    reading). The reader tells the log time with `advance`."""

    def __init__(self, retire: bool = False) -> None:
        self.tracks: dict[str, dict[str, SideTrack]] = collections.defaultdict(dict)
        self.report = CheckReport()
        self.retire = retire
        self.judged = 0                     # calls already judged and dropped (retire)
        self.now = -math.inf                # the log time read up to (retire: `advance`)
        self.horizon = -math.inf            # the latest time of the entries being read
        self._both: collections.deque[tuple[float, str]] = collections.deque()   # (when due, call id)
        self._lone: collections.deque[tuple[float, str]] = collections.deque()
        self._keys: list[tuple[int, Any]] = []   # retire: each violation's place in the one-after-another order
        self._unknown: list[tuple[tuple[int, Any], Violation]] = []   # unknown_to_server, if a server is logged
        self._no_client = 0                 # judged calls no client logged (server_only, if a client is logged)
        self._side_first: dict[str, Any] = {}
        self._times = TimeReader()
        # retire: the calls judged and dropped, by their id's hash (8 bytes of it, not the call):
        # an entry of one of them later on is a violation, as it was when every call was kept
        self._retired: set[int] = set()
        self._reused_ids: set[int] = set()   # ids (their hash) a later call reused, after the first ended
        self._reusing: set[int] = set()      # (id, side) hashes of such calls whose id was retired: not judged

    def add(self, e: Mapping[str, Any], where: str = "", pos: Any = None) -> None:
        """One entry as read from a log file (a dict in the state-log format)."""
        if self.retire:
            pos = self.report.entries + 1 if pos is None else pos
        self.add_values(e.get("side"), e.get("call_id"), e.get("state"), e.get("prev"), e.get("event"),
                        e.get("move"), e.get("code"), e.get("grpc_status"), e.get("detail"), e.get("ts"), where,
                        e.get("cancel"), e.get("sent"), e.get("received"), e.get("delay_ms"), pos, e.get("method"))
        if self.retire and len(self.report.violations) > len(self._keys):
            self._keys += [(0, pos)] * (len(self.report.violations) - len(self._keys))

    def advance(self, first: float, last: float) -> None:
        """A retiring checker: the entries that come next are of times from `first` to `last` (a
        file's next lines, in its order); the calls due before `first` are judged and dropped."""
        self.now = max(self.now, first)
        self.horizon = max(self.horizon, last)
        self._retire_due()

    def add_entry(self, e: Entry) -> None:
        """One entry as recorded in memory (no JSON round trip: `callstate load` feeds these live)."""
        self.add_values(e.side, e.call_id, e.state, e.prev, e.event, e.move, e.code, e.grpc_status, e.detail,
                        logged_time(e.t),   # as its log line has it: a figure then reads the same from the log
                        cancel=e.cancel, sent=e.sent, received=e.received, delay_ms=e.delay_ms, method=e.method)

    def add_values(self, side: Any, call_id: Any, state: Any, prev: Any, event: Any, move: Any, code: Any,
                   grpc_status: Any, detail: Any, ts: float | str | None, where: str = "", cancel: Any = None,
                   sent: Any = None, received: Any = None, delay_ms: Any = None, pos: Any = None,
                   method: Any = None) -> None:
        """One entry's fields; the violations it brings name its call's method, once its entries named one."""
        violations = self.report.violations
        before = len(violations)
        self._add_values(side, call_id, state, prev, event, move, code, grpc_status, detail, ts, where, cancel, sent,
                         received, delay_ms, pos, method)
        if len(violations) > before and type(call_id) is str and type(side) is str:
            track = self.tracks.get(call_id, {}).get(side)
            _name_method(violations[before:], track.method if track else "")

    def _add_values(self, side: Any, call_id: Any, state: Any, prev: Any, event: Any, move: Any, code: Any,
                    grpc_status: Any, detail: Any, ts: float | str | None, where: str, cancel: Any, sent: Any,
                    received: Any, delay_ms: Any, pos: Any, method: Any) -> None:
        r = self.report
        r.entries += 1
        if self.retire and type(ts) is str:
            ts = self._times.exact(ts)   # a float holds a call longer for less (and is a time already)
        problem = _entry_problem(side, call_id, state, prev, event, move, code, grpc_status, detail, ts, cancel, sent,
                                 received, delay_ms)
        if problem is not None:
            r.violations.append(Violation("bad_entry", str(call_id), f"{where}{problem}"))
            return
        assert ts is not None   # _entry_problem: a float or a time in text
        r.by_side[side] = r.by_side.get(side, 0) + 1
        fresh = event == ENTER and prev is None   # a side's first entry of a call
        sides = self.tracks[call_id]
        if not sides and self._retired and self._after_retired(side, call_id, state, event, fresh, where):
            del self.tracks[call_id]
            return
        track = sides.get(side)
        if track is not None and track.ended and self._reuse(track, call_id, fresh, ts):
            return
        if track is None:
            track = sides[side] = SideTrack(first=r.entries if pos is None else pos)
            if track.first < self._side_first.setdefault(side, track.first):
                self._side_first[side] = track.first
        track.where = where
        if method and type(method) is str:
            track.method = method
        if track.ended:
            r.violations.append(Violation("after_end", call_id, f"{where}{side} {event} {state} after End"))
        elif event != ENTER:
            self._event(track, side, call_id, state, event, ts, cancel, detail, delay_ms, where)
        else:
            self._enter(track, side, call_id, state, prev, move, code, grpc_status, ts, cancel, detail, sent, received,
                        where)

    def _after_retired(self, side: str, call_id: str, state: str, event: Any, fresh: bool, where: str) -> bool:
        """An entry of a call id already judged and dropped: a later call reusing the id (a side's
        first entry; True: not judged, as that call's later entries), a late entry (after_end),
        or the other side's first entry beyond the clock skew allowed (time_order)."""
        r, retired, key = self.report, self._retired, hash((call_id, side))
        if key in self._reusing:
            return True
        if hash(call_id) in retired or key in retired:
            if fresh:
                self._reusing.add(key)
                self._reused_ids.add(hash(call_id))
                return True
            r.violations.append(Violation("after_end", call_id, f"{where}{side} {event} {state} after the call had "
                                          f"ended on every side that logged it (judged {LATE_S:g} s after both Ends, "
                                          f"{ONE_SIDED_S:g} s after a lone side's; its entries this far apart "
                                          "cannot be one call's)"))
        elif hash((call_id, _other(side))) in retired:
            r.violations.append(Violation("time_order", call_id, f"{where}{side} {event} {state} more than "
                                          f"{ONE_SIDED_S:g} s of log time after the {_other(side)}'s End of the call: "
                                          f"beyond the {CLOCK_SKEW_S:g} s clock skew allowed between hosts"))
        return False

    def _reuse(self, track: SideTrack, call_id: str, fresh: bool, ts: float | str) -> bool:
        """An entry of a side that has ended: True when it is of a later call under the same id (a
        harness naming its calls, runs appended to one log): that call is not judged (the calls
        under one id cannot be told apart), only counted in `reused_ids`. A first entry later
        than the End starts such a call (a copy of a log has the same times: not one)."""
        if not track.reused and fresh and track.end_ts is not None and _later(ts, track.end_ts):
            track.reused = True
            self._reused_ids.add(hash(call_id))
        return track.reused

    def _event(self, track: SideTrack, side: str, call_id: str, state: str, event: Any, ts: float | str, cancel: Any,
               detail: Any, delay_ms: Any, where: str) -> None:
        """An event (no state change): known to the side's table, seen in the call's state."""
        if event not in EVENTS[side] and (track.kind == UNARY or event not in PIPE_EVENTS[side]):
            self.report.violations.append(Violation("bad_entry", call_id, f"{where}{side} unknown event {event!r}"))
        elif state != track.state:
            self.report.violations.append(Violation("illegal_transition", call_id, f"{where}{side} event {event} in "
                                                    f"{state} but the call is in {track.state}"))
        _note_event(track, side, event, ts, cancel, detail, delay_ms)

    def _enter(self, track: SideTrack, side: str, call_id: str, state: str, prev: Any, move: Any, code: Any,
               grpc_status: Any, ts: float | str, cancel: Any, detail: Any, sent: Any, received: Any,
               where: str) -> None:
        """A state entered: a legal move of the side's table (invariant 1); End, once (2, 3)."""
        if track.state is None and prev is None:
            track.kind = kind_of_initial_move(move) or UNARY
        legal = prev == track.state and is_legal(side, prev, move, state, track.kind)
        if track.kind != UNARY:
            _note_pipe(track, move, sent, received)
        if not legal:
            self.report.violations.append(Violation("illegal_transition", call_id,
                                                    f"{where}{side} {prev or '(start)'} --{move or '?'}--> {state}"
                                                    f" (call was in {track.state or '(nothing)'})"))
        _note_state(track, side, state, ts, cancel, detail)
        if state == END:
            self._end(track, side, call_id, move, code, grpc_status, ts, sent, received, legal, where)

    def _end(self, track: SideTrack, side: str, call_id: str, move: Any, code: Any, grpc_status: Any,
             ts: float | str, sent: Any, received: Any, legal: bool, where: str) -> None:
        track.ended = True
        track.code = code
        track.grpc_status = _STATUS_NAMES.get(grpc_status, grpc_status)   # one string for all calls
        track.end_ts = ts
        path_error = own_path_error(side, move, code) if legal else None
        if path_error:
            self.report.violations.append(Violation("wrong_final_code", call_id, f"{where}{path_error}"))
        for kind, why in _end_violations(side, track, code, grpc_status, sent, received, bool(path_error)):
            self.report.violations.append(Violation(kind, call_id, f"{where}{why}"))
        if self.retire:
            self._schedule(call_id)

    def _schedule(self, call_id: str) -> None:
        """Every side that logged the call has ended: it is due for judging once the log time has
        moved on (a late entry still finds its track until then)."""
        sides = self.tracks[call_id]
        if _all_ended(sides):
            if len(sides) == 2:   # both sides: none can come any more
                self._both.append((self.horizon + LATE_S, call_id))
            else:
                self._lone.append((self.horizon + ONE_SIDED_S, call_id))

    def _retire_due(self) -> None:
        """Judge and drop the calls due by the log time read (`now`)."""
        tracks, now = self.tracks, self.now
        for queue, count in ((self._both, 2), (self._lone, 1)):
            while queue and queue[0][0] < now:
                call_id = queue.popleft()[1]
                sides = tracks.get(call_id)
                # not if another side came meanwhile (a lone side's call), or has not ended yet
                if sides is not None and len(sides) == count and _all_ended(sides):
                    del tracks[call_id]
                    # a lone side's call by side: the other side's entries may still come (too late)
                    self._retired.add(hash(call_id) if count == 2 else hash((call_id, next(iter(sides)))))
                    # a later call under the id is under way on a side: its entries still to come are not judged
                    self._reusing.update(hash((call_id, side)) for side, track in sides.items() if track.reused)
                    self._judge(call_id, sides)

    def _judge(self, call_id: str, sides: dict[str, SideTrack]) -> None:
        """One call's end-of-run rules, as soon as it is retired (the rules that need the whole
        run, whether a side is logged at all, are settled in `finish`)."""
        r = self.report
        before = len(r.violations)
        client, server = sides.get(CLIENT), sides.get(SERVER)
        if client is not None and server is not None:   # the sides in the order they came in the input
            sides = {SERVER: server, CLIENT: client} if server.first < client.first else {CLIENT: client, SERVER: server}
        self._finish_call(call_id, sides, None)
        if len(r.violations) > before:
            self._keys += [(1, min(t.first for t in sides.values()))] * (len(r.violations) - before)
        self.judged += 1
        self._no_client += client is None
        r.both_sides += client is not None and server is not None

    def _finish_retired(self) -> None:
        """`finish` of a retiring checker: the calls still held, then every call's violations in
        the order a reading of the inputs one after another gives them."""
        r = self.report
        for call_id, sides in self.tracks.items():
            self._judge(call_id, sides)
        self.tracks.clear()
        if r.by_side.get(SERVER):
            for key, v in self._unknown:
                r.violations.append(v)
                self._keys.append(key)
        r.server_only = self._no_client if r.by_side.get(CLIENT) else 0
        r.calls = self.judged
        keys = self._keys
        r.violations = [r.violations[i] for i in sorted(range(len(keys)), key=keys.__getitem__)]
        r.by_side = dict(sorted(r.by_side.items(), key=lambda kv: self._side_first[kv[0]]))

    def finish(self, server_in_flight: int | None = None, server_lost: str = "") -> CheckReport:
        r = self.report
        if self.retire:
            self._finish_retired()
        else:
            have_server = any(SERVER in sides for sides in self.tracks.values())
            have_client = any(CLIENT in sides for sides in self.tracks.values())
            r.calls = len(self.tracks)
            for call_id, sides in self.tracks.items():
                self._finish_call(call_id, sides, have_server)
                r.server_only += have_client and CLIENT not in sides
                r.both_sides += CLIENT in sides and SERVER in sides
        if not r.both_sides and all(r.by_side.get(side) for side in SIDES):
            # logs of two runs (not_judged says so): no call of the client's is in the server's log,
            # those that ended 0 no more than the others; not a replica's log missing
            _drop_unknown_to_server(r)
        r.reused_ids = len(self._reused_ids)
        if server_in_flight:
            r.violations.append(Violation("server_in_flight", "-", f"{counted(server_in_flight, 'call')} still in flight"))
        if server_lost:
            _server_lost(r, server_lost)
        return r

    def _finish_call(self, call_id: str, sides: Mapping[str, SideTrack], have_server: bool | None) -> None:
        """One call's sides once every entry is in: End reached, its final code, its cancel
        propagation, and the rules across its two sides (`have_server` None: not known yet, an
        unknown_to_server is held until `finish` knows)."""
        r = self.report
        before = len(r.violations)
        self._finish_sides(call_id, sides, have_server)
        if len(r.violations) > before:
            _name_method(r.violations[before:], next((t.method for t in sides.values() if t.method), ""))

    def _finish_sides(self, call_id: str, sides: Mapping[str, SideTrack], have_server: bool | None) -> None:
        r = self.report
        for side, t in sides.items():
            if not t.ended:
                # where its last entry is: which of several logs (replicas) holds the cut-off history
                r.violations.append(Violation("not_ended", call_id, f"{t.where}{side} stopped in {t.state}"))
        client, server = sides.get(CLIENT), sides.get(SERVER)
        final = client if client is not None and client.ended else server
        if final is not None and final.ended and final.code is not None:
            r.by_code[final.code] = r.by_code.get(final.code, 0) + 1
        if client is not None and server is not None:
            self._propagation(client, server)
            for rule in CROSS_SIDE_RULES:
                for kind, why in rule(client, server):
                    r.violations.append(Violation(kind, call_id, why))
        elif _unknown_to_server(client, server, have_server is not False):
            assert client is not None
            v = Violation("unknown_to_server", call_id, f"{client.where}client completed with 0", client.method)
            if have_server is None:
                self._unknown.append(((1, client.first), v))
            else:
                r.violations.append(v)
        elif server is not None and (why := _server_breach_missing(server)):
            r.violations.append(Violation("pipe_breach_missing", call_id, why))

    def _propagation(self, client: SideTrack, server: SideTrack) -> None:
        """Client Can -> server cancel_seen, for the calls `callstate.propagation` counts."""
        if not (client.cancel_ts and server.cancel_ts and server.start_ts):
            return
        found = cancel_propagation(_ts(client.cancel_ts), _ts(server.start_ts), _ts(server.cancel_ts),
                                   server.poll_wait_ms)
        r = self.report
        if found is None:
            return
        if found.poll_wait_ms is None:
            r.cancel_propagation_ms.append(found.ms)
        else:   # reported apart: the handler kept working until its poll
            r.cancel_propagation_polled_ms.append(found.ms)
            r.cancel_poll_wait_ms.append(found.poll_wait_ms)


def _server_lost(r: CheckReport, why: str) -> None:
    """The server was lost mid-run (`callstate load`'s journal stream broke): the calls the client
    completed with 0 whose server entries the stream had not brought are not known to be unknown
    to the server (its state log may have them): counted in the server_lost line, not named as
    unknown_to_server."""
    if unseen := _drop_unknown_to_server(r):
        why += (f"; {counted(unseen, 'call')} the client completed with 0 {'is' if unseen == 1 else 'are'} not in "
                "what the server's side brought before (its state log may have " + ("it)" if unseen == 1 else "them)"))
    r.violations.append(Violation("server_lost", "-", why))


def _drop_unknown_to_server(r: CheckReport) -> int:
    """Take the unknown_to_server violations out of the report (the server's side of the run is
    not all there to judge them by); how many there were."""
    kept = [v for v in r.violations if v.kind != "unknown_to_server"]
    dropped, r.violations = len(r.violations) - len(kept), kept
    return dropped


def _other(side: str) -> str:
    return SERVER if side == CLIENT else CLIENT


def _later(ts: float | str, than: float | str) -> bool:
    try:
        return _ts(ts) > _ts(than)
    except ValueError:
        return False


def _all_ended(sides: Mapping[str, SideTrack]) -> bool:
    for t in sides.values():
        if not t.ended:
            return False
    return True


def _unknown_to_server(client: SideTrack | None, server: SideTrack | None, have_server: bool) -> bool:
    """The client completed with 0, other calls reached a server log, but this one none."""
    return (client is not None and client.ended and server is None and have_server
            and client.code == codes.RPC_S_OK)


def _code_mismatch(client: SideTrack, server: SideTrack) -> list[tuple[str, str]]:
    """Invariant 3: the client's final code agrees with the server's outcome."""
    if not (client.ended and server.ended):
        return []
    agreed = codes_agree(client.code, server.code, client_abortive=client.abortive_cancel,
                         client_deadline=client.grpc_status == _DEADLINE, server_saw_abortive=server.abortive_seen,
                         close_explained=client.closed or client.grpc_status != LOCAL_CLOSE_STATUS,
                         client_closed=client.closed)
    if agreed is not None:
        return []
    return [("code_mismatch", f"client {_code_text(client.code)} vs server {_code_text(server.code)}")]


def _code_text(code: Any) -> str:
    """A final code as a message names it: an End without one is not 0."""
    return codes.describe(code) if isinstance(code, int) else f"no code ({code!r})"


def _pipe_violations(client: SideTrack, server: SideTrack) -> list[tuple[str, str]]:
    """The pipe invariants across the two sides of one call: (kind, message) per violation."""
    if client.kind != server.kind:
        return [("pipe_kind_mismatch", f"client follows the {client.kind} table, server the {server.kind} table")]
    if client.kind == UNARY:
        return []
    return [found for rule in PIPE_RULES for found in rule(client, server)]


def _breach_missing(client: SideTrack, server: SideTrack) -> list[tuple[str, str]]:
    breach = client.breach or server.breach
    return [("pipe_breach_missing", f"the {side} ended with {codes.describe(track.code or 0)} but no side logged a "
                                    f"pipe rule broken")
            for side, track in ((CLIENT, client), (SERVER, server)) if track.ended and breach_missing(track.code, breach)]


def _server_breach_missing(server: SideTrack) -> str:
    """A pipe call only the server logged (a client under test that writes no log): the server
    logs every breach it makes or sees, so its own 1917 needs its own breach ('' when it has one)."""
    if server.kind == UNARY or not server.ended or not breach_missing(server.code, server.breach):
        return ""
    return f"the server ended with {codes.describe(server.code or 0)} but logged no pipe rule broken"


def _phantom_half_close(client: SideTrack, server: SideTrack) -> list[tuple[str, str]]:
    if server.null_pull and not client.null_push:
        return [("phantom_half_close", "server --null_pull--> NP but the client never made its null push")]
    return []


def _pulled_more_than_pushed(client: SideTrack, server: SideTrack) -> list[tuple[str, str]]:
    out = []
    # a push cut short by a cancel may have reached the server uncounted by the client
    slack = 1 if client.cancel_ts else 0
    if server.received > client.sent + slack:
        out.append(("pipe_count_mismatch", f"server pulled {server.received}, client pushed {client.sent}"))
    if client.received > server.sent:
        out.append(("pipe_count_mismatch", f"client pulled {client.received}, server pushed {server.sent}"))
    return out


def _ended_naturally(client: SideTrack, server: SideTrack) -> bool:
    """Both sides completed with 0 and neither saw a cancel."""
    return (client.ended and server.ended and client.code == 0 == server.code and not client.cancel_ts
            and not server.cancel_ts)


def _half_closed_count_differs(client: SideTrack, server: SideTrack) -> list[tuple[str, str]]:
    if (_ended_naturally(client, server) and client.null_push and server.null_pull
            and server.received != client.sent):
        return [("pipe_count_mismatch", f"completed normally but the server pulled {server.received} of the "
                                        f"{client.sent} messages the client pushed")]
    return []


# The pipe invariants across the two sides of a call of one pipe kind, in the order reported.
PIPE_RULES: tuple[Callable[[SideTrack, SideTrack], list[tuple[str, str]]], ...] = (
    _breach_missing, _phantom_half_close, _pulled_more_than_pushed, _half_closed_count_differs)


_OK_STATUS = codes.OK
_STATUS_NAMES = {name: name for name in codes.GRPC_STATUS_VALUES}
# How far apart two hosts' clocks may be: a server's dispatch outside its client's call by more
# than this is not skew but a log that cannot be (or logs of different runs mixed up).
CLOCK_SKEW_S = 300.0
# A retiring Checker keeps a call this long in log time after both sides' Ends, so that a late
# entry (a second End, an event after End) is still judged against its track; a call one side
# only has logged, until the other side cannot come any more without breaking the clock skew
# allowed (a server's dispatch later than that is judged as a call of its own).
LATE_S = 10.0
ONE_SIDED_S = CLOCK_SKEW_S + LATE_S


def _end_violations(side: str, track: SideTrack, code: Any, grpc_status: Any, sent: Any, received: Any,
                    code_reported: bool = False) -> list[tuple[str, str]]:
    """What one side's End entry cannot be, whatever the other side logged (`code_reported`: its
    code was already found wrong for its path, so its status is not reported again)."""
    out = []
    if isinstance(code, int) and grpc_status in _STATUS_NAMES and not code_reported:
        if code == codes.RPC_S_OK and grpc_status != _OK_STATUS:
            out.append(("impossible_status", f"{side} ended with 0 but gRPC status {grpc_status}"))
        elif code != codes.RPC_S_OK and grpc_status == _OK_STATUS:
            out.append(("impossible_status", f"{side} ended with {codes.describe(code)} but gRPC status OK"))
    if track.start_ts is not None and track.end_ts is not None and _ts(track.end_ts) < _ts(track.start_ts):
        out.append(("time_order", f"{side} End is earlier than its first state"))
    if track.kind != UNARY and (sent is None or received is None):
        out.append(("bad_entry", f"{side} {track.kind} pipe ended without its message counts"))
    return out


def _time_order(client: SideTrack, server: SideTrack) -> list[tuple[str, str]]:
    """The server's dispatch within its client's call, give or take the clock skew allowed."""
    if client.start_ts is None or server.start_ts is None:
        return []
    dispatched, called = _ts(server.start_ts), _ts(client.start_ts)
    ended = _ts(client.end_ts) if client.end_ts is not None else None
    if dispatched < called - CLOCK_SKEW_S or (ended is not None and dispatched > ended + CLOCK_SKEW_S):
        return [("time_order", f"server dispatched {dispatched - called:+.3f} s from the client's call, "
                               f"outside it by more than the {CLOCK_SKEW_S:g} s skew allowed")]
    return []


def _pipe_incomplete(client: SideTrack, server: SideTrack) -> list[tuple[str, str]]:
    """An out or both pipe that completed normally with messages its client never pulled."""
    if (_ended_naturally(client, server) and client.kind == server.kind and client.kind in (PIPE_OUT, PIPE_BOTH)
            and client.received < server.sent):
        return [("pipe_incomplete", f"completed normally but the client pulled {client.received} of the "
                                    f"{server.sent} messages the server pushed")]
    return []


def _notice_astray(client: SideTrack, server: SideTrack) -> list[tuple[str, str]]:
    """A notice some server kept for a dispatch it had not seen, while the server that dispatched
    the call never saw a notice: the two went to different servers (a balancer that does not route
    on the call id). Not judged when the call had ended on its server before the client cancelled
    (a journal that forgot it keeps a late notice too) or was dispatched long after the notice's
    answer (past its --early-notice-ttl)."""
    if client.notice_kept is None or server.notice_seen or not server.ended or server.start_ts is None:
        return []
    kept = _ts(client.notice_kept)
    if (server.end_ts is not None and client.cancel_ts is not None and _ts(server.end_ts) < _ts(client.cancel_ts)) \
            or _ts(server.start_ts) > kept + NOTICE_KEPT_WAIT_S:
        return []
    return [("notice_astray", f"{client.where}the client's cancel notice was kept for the dispatch by a server that "
                              f"had not dispatched the call; {server.where}the server that dispatched it never saw "
                              f"the notice (or, on one server, let it go first: an --early-notice-ttl under "
                              f"{NOTICE_KEPT_WAIT_S:g} s)")]


# What the two sides of one call cannot be together, in the order reported: (client, server)
# -> (kind, message) per violation.
CROSS_SIDE_RULES: tuple[Callable[[SideTrack, SideTrack], list[tuple[str, str]]], ...] = (
    _pipe_violations, _time_order, _pipe_incomplete, _code_mismatch, _notice_astray)


def _wrong_types(**fields: Any) -> str:
    """The first field that is neither text nor absent."""
    return next((name for name, value in fields.items() if not isinstance(value, _TEXT)), "")


def check_entries(entries: Iterable[Mapping[str, Any]], server_in_flight: int | None = None,
                  server_lost: str = "") -> CheckReport:
    checker = Checker()
    for entry in entries:
        checker.add(entry)
    return checker.finish(server_in_flight, server_lost)
