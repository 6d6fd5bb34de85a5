"""`callstate check` on good logs and on logs with each kind of violation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from callstate import codes
from callstate.check import KINDS, check_entries
from callstate.logfile import check_files
from tests.conftest import cli

T = iter(range(10**6))


def e(side: str, call_id: str, state: str, prev: str | None, move: str | None = None, event: str = "enter",
      **extra: Any) -> dict[str, Any]:
    return {"ts": f"2026-11-24T10:00:00.{next(T):06d}Z", "side": side, "call_id": call_id, "state": state,
            "prev": prev, "event": event, **({"move": move} if move else {}), **extra}


def client_ok(call_id: str, code: int = 0, cancel: str | None = None) -> list[dict[str, Any]]:
    out = [e("client", call_id, "C", None, "call"), e("client", call_id, "WComp", "C", "started")]
    if cancel:
        out += [e("client", call_id, "Can", "WComp", "cancel", detail=cancel),
                e("client", call_id, "WComp", "Can", "cancel_issued")]
    return out + [e("client", call_id, "Comp", "WComp", "complete"),
                  e("client", call_id, "End", "Comp", "completed", code=code, grpc_status="X")]


def server_complete(call_id: str) -> list[dict[str, Any]]:
    return [e("server", call_id, "D", None, "dispatch"), e("server", call_id, "Comp", "D", "complete"),
            e("server", call_id, "End", "Comp", "completed", code=0, grpc_status="OK")]


def server_abort(call_id: str, code: int, cancel: str | None = None) -> list[dict[str, Any]]:
    seen = [e("server", call_id, "D", "D", event="cancel_seen", detail=cancel)] if cancel else []
    return [e("server", call_id, "D", None, "dispatch"), *seen, e("server", call_id, "A", "D", "abort"),
            e("server", call_id, "End", "A", "aborted", code=code, grpc_status="ABORTED")]


def write(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in entries))
    return path


def cancelled_call(call_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A held call cancelled abortively, entries made in time order across both sides."""
    c = [e("client", call_id, "C", None, "call"), e("client", call_id, "WComp", "C", "started")]
    s = [e("server", call_id, "D", None, "dispatch")]
    c += [e("client", call_id, "Can", "WComp", "cancel", detail="abortive")]
    s += [e("server", call_id, "D", "D", event="cancel_seen", detail="abortive"), e("server", call_id, "A", "D", "abort"),
          e("server", call_id, "End", "A", "aborted", code=1818, grpc_status="CANCELLED")]
    c += [e("client", call_id, "WComp", "Can", "cancel_issued"), e("client", call_id, "Comp", "WComp", "complete"),
          e("client", call_id, "End", "Comp", "completed", code=1818, grpc_status="CANCELLED")]
    return c, s


def test_good_logs_in_any_order(tmp_path: Path) -> None:
    c_client, c_server = cancelled_call("c")
    client = client_ok("a") + client_ok("b", 77) + c_client + client_ok("d", 0, "abortive")
    server = server_complete("a") + server_abort("b", 77) + c_server + server_complete("d")
    paths = [write(tmp_path / "server.jsonl", server), write(tmp_path / "client.jsonl", client)]
    report = check_files(paths)
    assert report.ok, report.summary()
    assert report.calls == 4 and report.by_code == {0: 2, 77: 1, 1818: 1}
    assert len(report.cancel_propagation_ms) == 1   # only "c" has both a client Can and a server cancel_seen
    summary = report.summary()
    assert "from 2 files" in summary and f"       1  {codes.describe(77)}" in summary, summary
    result = cli("check", *map(str, reversed(paths)))
    assert result.returncode == 0 and "OK" in result.stdout


@pytest.mark.parametrize("kind,entries", [
    ("illegal_transition", [e("server", "x", "D", None, "dispatch"), e("server", "x", "End", "D", "completed", code=0)]),
    ("illegal_transition", [e("server", "x", "D", None, "dispatch"), e("server", "x", "A", "D", "abort"),
                            e("server", "x", "Comp", "A", "complete"), e("server", "x", "End", "Comp", "completed", code=0)]),
    ("illegal_transition", [e("client", "x", "WComp", None, "started")]),
    ("not_ended", [e("server", "x", "D", None, "dispatch")]),
    ("after_end", server_complete("x") + [e("server", "x", "A", "End", "abort")]),
    ("after_end", server_complete("x") + [e("server", "x", "End", "Comp", "completed", code=0)]),
    ("code_mismatch", client_ok("x", 0) + server_abort("x", 77)),
    ("code_mismatch", client_ok("x", 1818) + server_complete("x")),       # 1818 without any cancel
    ("code_mismatch", client_ok("x", 1818, cancel="non-abortive") + server_complete("x")),  # server decides
    ("unknown_to_server", client_ok("x", 0) + server_complete("y") + client_ok("y")),
    ("bad_entry", [e("server", "x", "Q", None, "dispatch")]),
])
def test_each_violation_kind_is_reported(tmp_path: Path, kind: str, entries: list[dict[str, Any]]) -> None:
    assert kind in KINDS
    report = check_entries(entries)
    assert not report.ok
    assert kind in report.by_kind(), report.summary()
    path = write(tmp_path / "bad.jsonl", entries)
    result = cli("check", str(path))
    assert result.returncode == 1 and kind in result.stdout
    as_json = orjson.loads(cli("check", "--json", str(path)).stdout)
    assert as_json["ok"] is False and kind in as_json["violations_by_kind"]


def test_calls_after_one_without_a_client_end_or_a_server_are_still_checked() -> None:
    entries = (server_complete("a") + client_ok("b")[:2] + server_complete("b") + client_ok("n", 1722)
               + client_ok("x", 0) + server_abort("x", 77))
    report = check_entries(entries)
    assert [v.call_id for v in report.by_kind()["code_mismatch"]] == ["x"], report.summary()
    [mismatch] = report.by_kind()["code_mismatch"]
    assert mismatch.message == f"client {codes.describe(0)} vs server {codes.describe(77)}"
    [other] = check_entries(client_ok("y", 77) + server_complete("y")).violations
    assert other.message == f"client {codes.describe(77)} vs server {codes.describe(0)}"
    assert "entries from in-memory files" in report.summary()
    assert f"    x: {mismatch.message}" in report.summary()   # each kind's examples


def test_only_a_client_ok_needs_the_server_to_know_the_call() -> None:
    # an HRESULT logged as a signed 32-bit code is negative: a failure, like any non-zero code
    for code, flagged in ((0, True), (1722, False), (-2147024891, False)):
        # a shares the run's logs (else they are two runs' logs, not judged: tests/test_audit32_ops.py)
        report = check_entries(server_complete("a") + client_ok("a") + client_ok("b", code))
        assert ("unknown_to_server" in report.by_kind()) == flagged, (code, report.summary())


def test_server_in_flight_after_run_and_server_lost() -> None:
    report = check_entries(server_complete("a"), server_in_flight=3)
    assert "server_in_flight" in report.by_kind()
    assert check_entries(server_complete("a"), server_in_flight=0).ok
    report = check_entries(server_complete("a"), server_lost="UNAVAILABLE: connection refused")
    assert "server_lost" in report.by_kind() and not report.ok


def test_unreadable_or_foreign_files_are_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text('{"ts": "x"}\n')
    result = cli("check", str(bad))
    assert result.returncode == 2 and "notes.txt:1" in result.stderr and "missing" in result.stderr
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("not json\n")
    result = cli("check", str(garbage))
    assert result.returncode == 2 and "garbage.jsonl:1: not JSON" in result.stderr
    result = cli("check", str(tmp_path / "missing.jsonl"))
    assert result.returncode == 2 and "missing.jsonl" in result.stderr


def test_a_folder_with_logrotates_numbered_parts_is_checked_whole(tmp_path: Path) -> None:
    """`check logs/` read only *.jsonl and *.jsonl.gz: the parts logrotate leaves beside a log
    (server.jsonl.1, server.jsonl.2.gz) were skipped, and the calls split over them failed."""
    import gzip

    from tests.test_audit33_check import run_logs
    c, s = run_logs(tmp_path)
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "client.jsonl").write_bytes(c.read_bytes())
    lines = s.read_bytes().splitlines(keepends=True)
    third = len(lines) // 3
    (folder / "server.jsonl.2.gz").write_bytes(gzip.compress(b"".join(lines[:third])))   # the oldest part
    (folder / "server.jsonl.1").write_bytes(b"".join(lines[third:2 * third]))
    (folder / "server.jsonl").write_bytes(b"".join(lines[2 * third:]))
    (folder / "server.jsonl.bak").write_text("not a log\n")   # other names are left alone
    (folder / "notes.txt").write_text("not a log\n")
    done = cli("check", str(folder))
    assert done.returncode == 0 and "20 calls" in done.stdout and "from 4 files" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("command", ["check", "report"])
def test_a_log_that_is_not_there_is_named_in_plain_words(tmp_path: Path, command: str) -> None:
    """It was Python's `[Errno 2] No such file or directory: '...'`."""
    missing = tmp_path / "load.jsonl"
    done = cli(command, str(missing), *(["--html", str(tmp_path / "r.html")] if command == "report" else []))
    assert done.returncode == 2 and done.stderr == f"callstate {command}: {missing}: No such file or directory\n", \
        done.stderr
    assert not (tmp_path / "r.html").exists()
