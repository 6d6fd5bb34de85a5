"""`callstate check` at soak scale: the checker holds the calls in flight and those ended lately,
not every call of the log; what it reports is what reading the files one after another gave;
progress lines on stderr only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

import callstate.cli.check as check_cmd
import callstate.logfile as logfile
from callstate.check import Checker, CheckReport
from callstate.cli import main
from callstate.logfile import ReadProgress, check_files, read_log
from callstate.statelog import format_ts

T0 = 1_780_000_000.0


def entry(t: float, side: str, call_id: str, state: str, prev: str | None, move: str | None = None,
          event: str = "enter", **extra: Any) -> dict[str, Any]:
    return {"ts": format_ts(T0 + t), "side": side, "call_id": call_id, "state": state, "prev": prev,
            "event": event, **({"move": move} if move else {}), **extra}


def client(t: float, call_id: str, code: int = 0, status: str = "OK") -> list[dict[str, Any]]:
    return [entry(t, "client", call_id, "C", None, "call"), entry(t + 0.001, "client", call_id, "WComp", "C", "started"),
            entry(t + 0.004, "client", call_id, "Comp", "WComp", "complete"),
            entry(t + 0.005, "client", call_id, "End", "Comp", "completed", code=code, grpc_status=status)]


def server(t: float, call_id: str) -> list[dict[str, Any]]:
    return [entry(t + 0.002, "server", call_id, "D", None, "dispatch"),
            entry(t + 0.003, "server", call_id, "Comp", "D", "complete"),
            entry(t + 0.0031, "server", call_id, "End", "Comp", "completed", code=0, grpc_status="OK")]


def write(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in entries))
    return path


def sequential_run(tmp: Path, calls: int, every_s: float) -> tuple[Path, Path]:
    """`calls` calls one after another, `every_s` apart; every 10th never reached the server."""
    cli_entries: list[dict[str, Any]] = []
    srv_entries: list[dict[str, Any]] = []
    for i in range(calls):
        t, call_id = i * every_s, f"call-{i:06d}"
        if i % 10 == 9:
            cli_entries += client(t, call_id, 1818, "CANCELLED")   # cancelled before the server saw it
        else:
            cli_entries += client(t, call_id)
            srv_entries += server(t, call_id)
    return write(tmp / "client.jsonl", cli_entries), write(tmp / "server.jsonl", srv_entries)


def test_the_checker_holds_the_calls_of_a_window_not_of_the_whole_log(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """4,000 calls over 800 s of log: the tracks held at any time stay those of the last LATE_S
    (both sides ended) and of the last ONE_SIDED_S (one side only: the other may still come),
    a few hundred, while the verdict counts every call."""
    calls, every_s = 4000, 0.2
    seen: list[ReadProgress] = []
    monkeypatch.setattr(logfile, "CHUNK", 50)
    report = check_files(sequential_run(tmp_path, calls, every_s), progress=seen.append)
    assert report.ok and report.calls == calls and report.both_sides == calls * 9 // 10, report.summary()
    assert report.by_code == {0: calls * 9 // 10, 1818: calls // 10}
    held = max(p.calls_held for p in seen)
    # both-sided calls: LATE_S / every_s = 50 of them; client-only ones: 310 s / 2 s = 155
    assert held < 300, held
    assert seen[-1].calls_judged > calls * 3 // 4   # judged as the reading went, not at the end


def test_a_late_entry_after_both_ends_is_still_judged_against_its_call(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A second server End for a call, 5 s of log time (and 100 calls) after both its
    Ends: an after_end, as in a reading that holds every call; the report is the same word for
    word as that reading's, with the files named in either order."""
    cli_entries: list[dict[str, Any]] = []
    srv_entries: list[dict[str, Any]] = []
    for i in range(200):
        t = i * 0.05
        cli_entries += client(t, f"c{i}")
        srv_entries += server(t, f"c{i}")
        if i == 5 + 100:   # 5 s later: within LATE_S (10 s)
            srv_entries.append(entry(t, "server", "c5", "End", "Comp", "completed", code=0, grpc_status="OK"))
    cli_entries += [entry(299, "client", "odd2", "Q", None, "call")]  # a bad entry, later than the server's
    cli_entries += client(300, "lost", 0)[:2]                          # never ended: not_ended
    srv_entries += [entry(300.5, "server", "odd", "Q", None, "dispatch")]  # a bad entry
    cli_entries += client(301, "cut")[:2]   # both sides cut off: each side's not_ended, in the files' order
    srv_entries += server(301, "cut")[:1]
    paths = write(tmp_path / "c.jsonl", cli_entries), write(tmp_path / "s.jsonl", srv_entries)
    monkeypatch.setattr(logfile, "CHUNK", 20)   # calls are retired as the reading goes, not only at the end
    for order in (paths, paths[::-1]):
        got, whole = check_files(order), one_after_another(order)
        assert [(v.kind, v.call_id) for v in got.violations] == [(v.kind, v.call_id) for v in whole.violations]
        assert {(v.kind, v.call_id) for v in got.violations} == {("after_end", "c5"), ("bad_entry", "odd"),
                                                                 ("bad_entry", "odd2"), ("not_ended", "lost"),
                                                                 ("not_ended", "cut")}
        assert got.calls == 202
        assert got.to_json() == whole.to_json() and got.summary() == whole.summary()
        assert list(got.by_side) == list(whole.by_side)   # the JSON's keys in the same order too


@pytest.mark.parametrize("late, sides", [
    ("server", "client only"),   # cancelled before the server saw it; then the server's D 400 s later
    ("client", "both"),          # a second client End 60 s after both Ends
])
def test_an_entry_of_a_call_long_judged_still_fails_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             late: str, sides: str) -> None:
    """Entries of one call further apart than the window a retiring checker keeps it: the call
    was judged and dropped, but the late entry is still a violation (a log that fails when every
    call is held must not pass)."""
    cli_entries = client(0, "x", *((1818, "CANCELLED") if sides == "client only" else ()))
    srv_entries = server(0, "x") if sides == "both" else []
    for i in range(1, 500):   # log time moves on past the window: "x" is judged and dropped
        cli_entries += client(i, f"f{i}")
        srv_entries += server(i, f"f{i}")
    if late == "server":
        srv_entries += server(400, "x")
    else:
        cli_entries.append(entry(60, "client", "x", "End", "Comp", "completed", code=0, grpc_status="OK"))
        cli_entries.sort(key=lambda e: e["ts"])
    paths = write(tmp_path / "c.jsonl", cli_entries), write(tmp_path / "s.jsonl", srv_entries)
    monkeypatch.setattr(logfile, "CHUNK", 20)
    seen: list[ReadProgress] = []
    got, whole = check_files(paths, progress=seen.append), one_after_another(paths)
    assert not whole.ok and not got.ok, got.summary()
    # the kind the checker holding every call gives: a D 400 s after its client's End is beyond the clock skew
    kind = "time_order" if late == "server" else "after_end"
    assert (kind, "x") in {(v.kind, v.call_id) for v in got.violations} & {(v.kind, v.call_id) for v in whole.violations}
    assert min(p.calls_held for p in seen[len(seen) // 2:]) < 100   # it was retired, not held to the end


def one_after_another(paths: tuple[Path, ...]) -> CheckReport:
    """The checker as `check_files` ran it before: every call held, the files read in turn."""
    checker = Checker()
    for path in paths:
        checker.report.files.append(str(path))
        for lineno, e in read_log(path):
            checker.add(e, f"{path}:{lineno}: ")
    return checker.finish()


def test_progress_goes_to_stderr_with_always_and_never_to_stdout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    logs = [str(p) for p in sequential_run(tmp_path, 300, 0.2)]
    monkeypatch.setattr(logfile, "CHUNK", 100)
    monkeypatch.setattr(check_cmd, "PROGRESS_S", 0.0)   # every report a line, as a long reading's
    assert main(["check", "--json", "--progress", "always", *logs]) == 0
    out, err = capsys.readouterr()
    assert orjson.loads(out)["ok"] is True and "callstate check: read" not in out
    lines = [line for line in err.splitlines() if line.startswith("callstate check: read")]
    assert len(lines) >= 3 and "calls judged" in lines[-1] and "MB" in lines[-1], err
    for mode in ("auto", "never"):   # auto: stderr is not a terminal here
        assert main(["check", "--progress", mode, *logs]) == 0
        out, err = capsys.readouterr()
        assert "OK: every invariant holds" in out and "callstate check: read" not in out + err


def test_of_two_bad_logs_the_error_is_the_first_files_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read together, the second log's bad first line is met first; the error named is still the
    one a reading in turn meets: the first log's, on its last line."""
    first = write(tmp_path / "a.jsonl", client(0, "a"))
    first.write_bytes(first.read_bytes() + b"not a state entry\n")
    second = tmp_path / "b.jsonl"
    second.write_bytes(b"neither is this\n" + first.read_bytes())
    from callstate.statelog import LogFormatError
    monkeypatch.setattr(logfile, "CHUNK", 2)
    with pytest.raises(LogFormatError, match=r"a\.jsonl:5"):
        check_files([first, second])
    with pytest.raises(LogFormatError, match=r"b\.jsonl:1"):
        check_files([second, first])


def test_log_times_are_read_as_parse_ts_reads_them() -> None:
    """The checker and the merge read the writer's times through one cached reader: to the last
    bit what parse_ts gives (a figure reads the same as before), other text parsed, the rest the default."""
    from random import Random

    from callstate.statelog import TimeReader, parse_ts
    reader, rng = TimeReader(), Random(3)
    for _ in range(20_000):
        text = format_ts(rng.uniform(1.5e9, 2e9))
        assert reader.exact(text) == reader.read(text, 0.0) == parse_ts(text), text
    assert reader.exact("2026-01-02T03:04:05+00:00") == "2026-01-02T03:04:05+00:00"   # not the writer's form
    assert reader.read("2026-01-02T03:04:05+00:00", -1.0) == parse_ts("2026-01-02T03:04:05+00:00")
    assert reader.read("yesterday", -1.0) == -1.0 and reader.read(None, -2.0) == -2.0 and reader.read(5.5, 0) == 5.5
