"""The suite's own helpers under load (session 33's flake hunt): each test names the race it guards."""

from __future__ import annotations

import types
from pathlib import Path

import orjson

from tests.conftest import check_own
from tests.test_check_bounded import client, server, write


class GrowingLog:
    """A server log read as a loaded writer fills it: each read returns the next snapshot."""

    def __init__(self, *snapshots: bytes) -> None:
        self.snapshots = list(snapshots)

    def exists(self) -> bool:
        return True

    def read_bytes(self) -> bytes:
        return self.snapshots.pop(0) if len(self.snapshots) > 1 else self.snapshots[0]


def test_check_own_judges_the_server_lines_its_wait_found_complete(tmp_path: Path) -> None:
    """A call the client cancelled: the wait saw none of its server lines and went on, then a
    second read took the server's first batch for it (D, its End still in the writer's buffer):
    `not_ended` for a call the server was still ending. check_own judges the one snapshot it waited on."""
    log = write(tmp_path / "client.jsonl", client(0.0, "cancelled", 1818, "CANCELLED"))
    dispatched = b"".join(orjson.dumps(e) + b"\n" for e in server(0.0, "cancelled")[:1])
    report = check_own(log, types.SimpleNamespace(log=GrowingLog(b"", dispatched)))  # type: ignore[arg-type]
    assert report.ok, report.summary()
