"""What one test did: the client entries of every call it made, and the check at its end.

The plugin's clients log into a `Recorder` (a state-log sink kept in memory), so at teardown
the plugin knows every call the test made and which server it went to. `TestCalls.check`
reads each call's server side from that server's journal and runs the same `Checker` as
`callstate check`.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc

from callstate.check import Checker, Violation
from callstate.lifecycle import SERVER, STARTED
from callstate.statelog import Entry, format_line, to_dict
from callstate.pytest_plugin.servers import ServerHandle, ended
from callstate.pytest_plugin.sidebyside import side_by_side


# A call the server has no record of may have been cancelled before it went out: its record
# is looked for this long, not the full settle time.
UNSEEN = 0.5
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")   # what a test id may not keep in a folder name


class Recorder:
    """A client state-log sink (`append`) that keeps every entry, by call id, in memory."""

    enabled = True

    def __init__(self, server: ServerHandle) -> None:
        self.server = server
        self.entries: dict[str, list[Entry]] = defaultdict(list)
        self._lock = threading.Lock()   # the sync client appends from gRPC's threads

    def append(self, entry: Entry) -> None:
        with self._lock:
            self.entries[entry.call_id].append(entry)

    def calls(self) -> dict[str, list[Entry]]:
        with self._lock:
            return {call_id: list(entries) for call_id, entries in self.entries.items()}


class TestCalls:
    """The calls one test made, on any number of servers; checked once, at its teardown."""

    __test__ = False   # not a test class, whatever pytest's collector thinks of its name

    def __init__(self, nodeid: str, log_dir: Path | None, settle: float) -> None:
        self.nodeid = nodeid
        self.log_dir = log_dir
        self.settle = settle
        self.recorders: list[Recorder] = []
        self.closers: list[Callable[[], None]] = []
        self.test_failed = False
        self.verdict: str | None = None   # the check's text, once run: the same for every caller
        self.kept: Path | None = None     # where its logs were kept (--callstate-log-dir)
        self.timeout_at: float | None = None   # pytest-timeout's end of the test (time.monotonic), if it times it

    def call_ids(self) -> list[str]:
        """The id of every call the test made through the plugin's clients, in the order made."""
        return [call_id for rec in self.recorders for call_id in rec.calls()]

    def __len__(self) -> int:
        return len(self.call_ids())

    def __iter__(self) -> Iterator[str]:
        return iter(self.call_ids())

    def __repr__(self) -> str:
        return f"<callstate_calls of {self.nodeid}: {len(self)} call(s)>"

    def recorder(self, server: ServerHandle) -> Recorder:
        rec = Recorder(server)
        self.recorders.append(rec)
        return rec

    def close_clients(self) -> None:
        """Close every client still open: calls still live are ended on the client's side."""
        closers, self.closers = self.closers, []
        for close in reversed(closers):
            close()

    def check(self) -> str:
        """Close the clients, check every call (both sides), keep the logs of a failed test.
        Returns the failure text ('' when every invariant holds). Runs once per test; a later
        call returns the same text, so a fixture that checks early (while its servers still
        answer) leaves the verdict for `callstate_calls` to raise."""
        if self.verdict is None:
            self.verdict = self._check()
        return self.verdict

    def _check(self) -> str:
        self.close_clients()
        if self.timeout_at is not None:   # pytest-timeout would cut the check off: it takes half the time left
            self.settle = min(self.settle, max(0.0, (self.timeout_at - time.monotonic()) / 2))
        found = _Findings()
        deadline = time.monotonic() + self.settle   # one bound for all the test's calls
        for rec in self.recorders:
            self._check_calls_on(rec, deadline, found)
        text = found.text()
        if self.log_dir is not None and (found.problems or self.test_failed):
            self.kept = self.keep_logs(found.client_lines, found.server_lines)
            text += f"\n\nboth sides' logs of this test are kept in {self.kept}" if text else ""
        elif self.log_dir is not None:
            self.drop_stale_logs()
        return text

    def _check_calls_on(self, rec: Recorder, deadline: float, found: "_Findings") -> None:
        """Every call of this test on `rec`'s server, judged with that server's side of it."""
        gone: grpc.RpcError | None = None
        calls = rec.calls()
        for call_id, entries in calls.items():
            found.client_lines.extend(format_line(e) for e in entries)
            if gone is not None:
                continue
            left = max(0.0, deadline - time.monotonic())
            try:
                if any(e.move == STARTED for e in entries):
                    server = rec.server.wait_history(call_id, left, unseen_timeout=min(UNSEEN, left))
                else:   # it never went out (cancelled in C, or failed to start): nothing to wait for
                    server = rec.server.history(call_id)
            except grpc.RpcError as err:   # the server went away: its calls cannot be checked
                gone = err
                continue
            self._judge(rec, call_id, entries, server, found)
        if gone is not None:
            found.unchecked.append(f"{len(calls)} call(s) of this test on {rec.server.target} could not be checked: "
                                   f"its journal does not answer ({_rpc_error(gone)})")

    def _judge(self, rec: Recorder, call_id: str, entries: list[Entry], server: list[dict[str, Any]],
               found: "_Findings") -> None:
        checker = Checker()
        for e in entries:
            checker.add_entry(e)
        for d in server:
            checker.add(d)
        violations = checker.finish().violations
        found.server_lines.extend(_line(d) for d in server)
        held = server[-1]["state"] if server and not ended(server) else None
        if held is not None:   # not a broken rule: the server had not finished it yet
            violations = [v for v in violations if not (v.kind == "not_ended" and f"{SERVER} stopped in" in v.message)]
            found.left_in_flight += 1
        found.broken += bool(violations)
        if violations or held is not None:
            found.problems.append(_describe(call_id, violations, [to_dict(e) for e in entries], server,
                                            held and self._in_flight(held)))
            if rec.server.log_path is not None and rec.server.log_path not in found.broken_logs:
                found.broken_logs.append(rec.server.log_path)

    def _in_flight(self, state: str) -> str:
        return (f"  still in flight: the server holds it in {state} {self.settle:.3g} s after the client ended it "
                "(the test left it there, e.g. with a cancel the server ignores: wait for its outcome before "
                "the test ends)")

    def log_folder(self) -> Path:
        """DIR/<test id>: the id made a file name; an id that loses more than its `::` and `/`
        to that (a parameter `[a b]` or `[a/b]`) gets a digest of itself, so no two tests share one."""
        assert self.log_dir is not None
        plain = self.nodeid.replace("::", "_").replace("/", "_")
        name = _UNSAFE.sub("_", plain).strip("_")
        if _UNSAFE.search(plain):
            name += "-" + hashlib.sha1(self.nodeid.encode()).hexdigest()[:8]
        return self.log_dir / name

    def keep_logs(self, client_lines: list[str], server_lines: list[str]) -> Path:
        folder = self.log_folder()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "client.jsonl").write_text("".join(client_lines))   # a rerun replaces them
        (folder / "server.jsonl").write_text("".join(server_lines))
        return folder

    def drop_stale_logs(self) -> None:
        """A test that passes now removes the logs an earlier run kept of it: the folder holds
        the failed tests of the last run that ran them."""
        folder = self.log_folder()
        for name in ("client.jsonl", "server.jsonl"):
            (folder / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):   # absent, or holding files of the user's own
            folder.rmdir()


@dataclass
class _Findings:
    """What the check of one test's calls found, gathered call by call."""

    problems: list[str] = field(default_factory=list)          # one text per call that broke a rule or is held
    broken_logs: list[Path] = field(default_factory=list)      # the server logs those calls are in
    unchecked: list[str] = field(default_factory=list)         # servers whose journal did not answer
    client_lines: list[str] = field(default_factory=list)
    server_lines: list[str] = field(default_factory=list)
    broken: int = 0
    left_in_flight: int = 0

    def text(self) -> str:
        """The failure text ('' when every invariant holds)."""
        text = ""
        if self.problems:
            heads = [f"{self.broken} call(s) of this test broke an invariant of the call lifecycle"] if self.broken else []
            if self.left_in_flight:
                heads.append(f"{self.left_in_flight} call(s) of this test were still in flight on the server at its end")
            text = "\n".join(heads) + "\n\n" + "\n\n".join(self.problems)
            text += "".join(f"\n\nthe server's state log: {log}" for log in self.broken_logs)
        if self.unchecked:
            text = "\n".join(self.unchecked) + ("\n\n" + text if text else "")
        return text


def _rpc_error(err: grpc.RpcError) -> str:
    code, details = err.code(), err.details()   # type: ignore[attr-defined]
    return f"{code.name}: {(details or 'no details').splitlines()[0]}"


def _line(d: dict[str, Any]) -> str:
    import orjson
    return orjson.dumps(d).decode() + "\n"


def _describe(call_id: str, violations: list[Violation], client: list[dict[str, Any]],
              server: list[dict[str, Any]], note: str | None = None) -> str:
    lines = [f"call {call_id}:"]
    lines += [note] if note else []
    lines += [f"  {v.kind}: {v.message}" for v in violations]
    lines.append(side_by_side(client, server))
    return "\n".join(lines)
