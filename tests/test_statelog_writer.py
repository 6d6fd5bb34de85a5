"""The state log's writer: the hot path's sink, lines made in runs and written in chunks, and a log
that fails."""

from __future__ import annotations

import io
import threading

import orjson

from callstate.lifecycle import DISPATCH, ENTER, SERVER, D
from callstate.statelog import Entry
from callstate.logfile import BATCH, DRAIN_CHUNK, StateLog


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
        sink(e)   # the server goes on; nothing may pile up in memory, even before the writer wakes
    assert len(log._entries) < BATCH and not log._lines
    log.flush()
    assert not log._entries and not log._lines
    assert log.sink is not sink   # a fresh sink discards at once
    log.close()


def test_threads_appending_at_once_keep_each_calls_lines_in_order() -> None:
    # the sync client appends from the caller's threads and gRPC's: whichever makes a run takes
    # the entries queued before it, so no call's lines come out of order and none is lost
    out = Recorder()
    log = StateLog(out, flush_interval=0.001)   # the writer makes and writes lines meanwhile too
    n, go = BATCH * 20 + 3, threading.Barrier(4)

    def append(k: int) -> None:
        go.wait()
        for i in range(n):
            log.append(Entry(float(i), SERVER, f"thread{k}", D, None, ENTER, DISPATCH))
    threads = [threading.Thread(target=append, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    got: dict[str, list[float]] = {}
    for line in b"".join(out.writes).splitlines():
        entry = orjson.loads(line)
        got.setdefault(entry["call_id"], []).append(entry["ts"])
    assert sorted(got) == [f"thread{k}" for k in range(4)]
    assert all(times == sorted(times) and len(times) == n for times in got.values())


def test_a_stalled_write_never_holds_up_the_appending_thread() -> None:
    class Stalled(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.entered, self.go = threading.Event(), threading.Event()

        def write(self, data) -> int:  # type: ignore[no-untyped-def, override]
            self.entered.set()
            assert self.go.wait(10)
            return super().write(data)
    out = Stalled()
    log = StateLog(out, flush_interval=60)
    for e in entries(10):
        log.append(e)
    writer = threading.Thread(target=log.flush)
    writer.start()
    assert out.entered.wait(10)   # the writer is in its write (a full disk, a stalled pipe reader)
    appended = threading.Event()

    def append() -> None:
        for e in entries(BATCH * 3)[10:]:
            log.append(e)
        appended.set()
    threading.Thread(target=append).start()
    assert appended.wait(10)   # appending, and making the lines, went on meanwhile
    assert len(log._lines) == 2 and len(log._entries) == BATCH - 10
    out.go.set()
    writer.join(10)
    log.close()
    ids = [orjson.loads(line)["call_id"] for w in out.writes for line in w.splitlines()]
    assert ids == [f"c{i}" for i in range(BATCH * 3)]


def test_runs_longer_than_a_chunk_are_written_one_to_a_write(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # benchmarks/writer_latency.py --batches sets BATCH; one above DRAIN_CHUNK once made the
    # drain take no run per write, for ever, holding the writer's lock
    import callstate.logfile as logfile
    monkeypatch.setattr(logfile, "BATCH", DRAIN_CHUNK * 2)
    out = Recorder()
    log = StateLog(out, flush_interval=60)
    for e in entries(DRAIN_CHUNK * 4 + 1):
        log.append(e)
    flushing = threading.Thread(target=log.flush, daemon=True)
    flushing.start()
    flushing.join(10)
    assert not flushing.is_alive(), "the drain wrote nothing and went round for ever"
    assert [w.count(b"\n") for w in out.writes] == [DRAIN_CHUNK * 2, DRAIN_CHUNK * 2, 1]
    log.close()
