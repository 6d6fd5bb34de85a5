"""The state log's writer: the hot path's sink, chunked writes, and a log that fails."""

from __future__ import annotations

import io

import orjson

from callstate.lifecycle import DISPATCH, ENTER, SERVER, D
from callstate.statelog import Entry
from callstate.logfile import DRAIN_CHUNK, StateLog


class Recorder(io.RawIOBase):
    """A binary sink that keeps each write apart, and can be told to fail."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.fail = False

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[no-untyped-def, override]
        if self.fail:
            raise OSError(28, "No space left on device")
        self.writes.append(bytes(data))
        return len(data)


def entries(n: int) -> list[Entry]:
    return [Entry(1.0 + i, SERVER, f"c{i}", D, None, ENTER, DISPATCH) for i in range(n)]


def test_a_drain_writes_in_chunks_in_order() -> None:
    out = Recorder()
    log = StateLog(out, flush_interval=60)   # the writer thread does not wake by itself
    sink = log.sink
    n = DRAIN_CHUNK * 3 + 7
    for e in entries(n):
        sink(e)
    log.flush()
    assert len(out.writes) == 4   # one write per chunk, which lets go of the GIL
    assert all(w.count(b"\n") <= DRAIN_CHUNK for w in out.writes)
    ids = [orjson.loads(line)["call_id"] for w in out.writes for line in w.splitlines()]
    assert ids == [f"c{i}" for i in range(n)]
    log.close()


def test_after_a_write_error_the_sink_stays_bounded(capsys) -> None:  # type: ignore[no-untyped-def]
    out = Recorder()
    log = StateLog(out, flush_interval=60)
    sink = log.sink   # cached by the server at start, as the hot path holds it
    out.fail = True
    for e in entries(10):
        sink(e)
    log.flush()
    assert not log.enabled and "cannot be written any more" in capsys.readouterr().err
    for e in entries(5000):
        sink(e)   # the server goes on; nothing may pile up in memory
    log.flush()
    assert len(log._queue) == 0
    assert log.sink is not sink   # a fresh sink discards at once
    log.close()
