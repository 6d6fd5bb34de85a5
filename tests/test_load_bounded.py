"""`callstate load` on a soak: its checker judges and lets go of each call some seconds after
both sides ended, so the load's memory follows the calls in flight, not the run's length.

The windows are shrunk here (seconds instead of 10 s and 310 s of log time) so that a run of a
few seconds shows what an hour-long one does."""

from __future__ import annotations

import bisect
import math
from pathlib import Path

import pytest

import callstate.check as check
import callstate.cli.load.run as load_run
from callstate.check import Checker
from callstate.cli import main
from callstate.lifecycle import END, ENTER
from callstate.statelog import Entry, parse_ts
from tests.conftest import read_entries, start_server


def test_a_load_run_judges_its_calls_as_it_goes_and_still_checks_every_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(check, "LATE_S", 0.3)
    monkeypatch.setattr(check, "ONE_SIDED_S", 1.0)
    monkeypatch.setattr(load_run, "STREAM_LAG_S", 0.2)
    monkeypatch.setattr(load_run, "ADVANCE_EVERY_S", 0.05)
    # at each look: calls held, judged, held but not ended on every side, log time not yet judgeable
    seen: list[tuple[int, int, int, float]] = []
    times: list[tuple[float, float]] = []   # at each look: the log time judged up to, the client's latest
    advance = Checker.advance

    def spy(self: Checker, first: float, last: float) -> None:
        advance(self, first, last)
        unended = sum(1 for sides in self.tracks.values() if not all(t.ended for t in sides.values()))
        seen.append((len(self.tracks), self.judged, unended, self.horizon - self.now))
        times.append((self.now, self.horizon))
    monkeypatch.setattr(Checker, "advance", spy)
    srv = start_server(tmp_path)
    try:
        rc = main(["load", "--target", srv.target, "--calls", "1500", "--rate", "300", "--progress", "never",
                   "--hold-for", "0.2", "--seed", "5", "--log-file", str(tmp_path / "client.jsonl")])
    finally:
        srv.stop()
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "check: OK — 1500 calls, every invariant holds on both sides" in out, out
    assert seen, "the run's checker was never told the time: nothing could be let go"
    # When each call started and ended, from the client's own log: a busy machine starts them late
    # and then in a burst (the open loop catches up), and their replies take longer than their hold,
    # so the bounds count the calls that did start and end, not 300 a second.
    starts: dict[str, float] = {}
    ends: list[float] = []
    for e in read_entries(tmp_path / "client.jsonl"):
        starts.setdefault(e["call_id"], parse_ts(e["ts"]))
        if e["state"] == END and e["event"] == ENTER:
            ends.append(parse_ts(e["ts"]))
    assert len(starts) == len(ends) == 1500
    ends.sort()
    last_start = max(starts.values())

    def ended_between(first: float, last: float) -> int:
        return bisect.bisect_right(ends, last) - bisect.bisect_left(ends, first)
    # judged while the run went, not at its end
    assert any(judged and horizon < last_start for (_, judged, _, _), (_, horizon) in zip(seen, times)), \
        "no call was judged before the run's last call started"
    # 700 of the 1,500 on a quiet machine; a lagging journal stream (seconds behind on a busy
    # machine) leaves fewer judgeable before the run's last call, so the bound follows the log time
    # the checker could judge up to at its last look: the calls ended LATE_S (0.3 s) and 0.5 s of
    # slack (the server's End may trail the client's) before it
    judgeable_by_then = ended_between(-math.inf, max(now for now, _ in times) - 0.3 - 0.5) - 100
    assert max(judged for _, judged, _, _ in seen) >= min(700, judgeable_by_then), (seen[-5:], judgeable_by_then)
    # held at each look: the calls still in flight, and those ended in the log time not yet
    # judgeable (the server's stream lags the client's entries by its own lag plus STREAM_LAG_S:
    # seconds on a busy machine, when it held 1,284 calls against a fixed bound of 900) or within
    # LATE_S (0.3 s) before it (about 200 on a quiet machine, 1,500 at the end if nothing were let
    # go; judged 1.5 s late, 640)
    for (held, judged, unended, pending), (now, horizon) in zip(seen, times):
        assert held <= unended + ended_between(now - 0.3 - 0.5, horizon) + 100, (held, judged, unended, pending)


def test_calls_are_let_go_only_as_far_as_the_servers_stream_has_come() -> None:
    """A call judged by the client's clock alone could be judged before its server entries came
    through a lagging journal stream, and each of those would then be a false after_end: the
    load's sink lets calls go only up to the time of the server's latest streamed entry."""
    checker = Checker(retire=True)
    sink = load_run._Sink(checker, None)
    t0 = 1_780_000_000.0

    def client_call(t: float, call_id: str) -> None:
        for dt, state, prev, move in ((0, "C", None, "call"), (0.001, "WComp", "C", "started"),
                                      (0.004, "Comp", "WComp", "complete"), (0.005, "End", "Comp", "completed")):
            sink.append(Entry(t0 + t + dt, "client", call_id, state, prev, "enter", move,
                              *((1818, "CANCELLED") if state == "End" else (None, None))))
    client_call(0, "first")   # the server never saw it (cancelled before it was sent, say)
    for i in range(1, 400):   # 400 s of the client's entries; the server's stream has brought none
        client_call(i, f"later-{i}")
    assert "first" in checker.tracks and checker.judged == 0
    sink.server_time = t0 + 399   # the stream caught up: the calls due by then are let go
    client_call(400, "last")
    assert "first" not in checker.tracks and checker.judged > 0
