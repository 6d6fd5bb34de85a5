"""The state log on disk: the buffered writer and the reader (the one place the core's log
format meets files, threads and exit hooks; `callstate.statelog` holds the format itself).

The hot path only appends an `Entry` (a tuple with a float timestamp) to a
thread-safe deque (`StateLog.sink` is the deque's own append: no Python frame per
entry); a writer thread formats and writes in batches, so the event loop never
formats JSON, and it yields the GIL between chunks of a batch, so the event loop
never waits for a whole batch to be formatted. `close()` (also run at exit) drains everything, so
the last calls' `End` lines are never lost.
"""

from __future__ import annotations

import atexit
import collections
import os
import stat
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

from callstate.check import Checker, CheckReport
from callstate.statelog import Entry, LogFormatError, format_line, parse_log

# Entries formatted per hold of the GIL by the writer thread (~0.3 ms of work).
DRAIN_CHUNK = 256


def _discard(entry: Entry) -> None:
    pass


class StateLog:
    """Buffered JSON-lines writer. `append` is cheap and thread-safe."""

    failures = 0   # logs of this process that could not be written whole (a command's exit status says so)

    def __init__(self, target: str | Path | IO[bytes] | None, *, flush_interval: float = 0.05) -> None:
        self._owns = False
        self._out: IO[bytes] | None
        if target is None:
            self._out = None
        elif target == "-":
            self._out = sys.stdout.buffer
        elif isinstance(target, (str, Path)):
            self._out = open(target, "ab")
            self._owns = True
            _end_cut_line(target, self._out)
        else:
            self._out = target
        self._queue: collections.deque[Entry] = collections.deque()
        self._interval = flush_interval
        self._wake = threading.Event()
        self._lock = threading.Lock()  # one drainer at a time keeps lines in order
        self._closed = False
        self._thread: threading.Thread | None = None
        if self._out is not None:
            self._thread = threading.Thread(target=self._run, name="callstate-statelog", daemon=True)
            self._thread.start()
            atexit.register(self.close)

    @property
    def enabled(self) -> bool:
        return self._out is not None

    def append(self, entry: Entry) -> None:
        if self._out is not None:
            self._queue.append(entry)

    @property
    def sink(self) -> Callable[[Entry], None]:
        """What a hot path calls per entry: the queue's own append while the log is on (after a
        write error the writer discards what is queued, so the queue stays bounded)."""
        return self._queue.append if self._out is not None else _discard

    def _drain(self) -> None:
        queue, out = self._queue, self._out
        n = len(queue)
        if not n:
            return
        if out is None:   # the log failed (or was closed): entries from a cached sink go nowhere
            for _ in range(n):
                queue.popleft()
            return
        taken = n   # until the flush succeeds, any of them may be in the file's buffer only
        try:
            while n > 0:
                chunk = min(n, DRAIN_CHUNK)
                out.write("".join([format_line(queue.popleft()) for _ in range(chunk)]).encode())
                n -= chunk
                if n:
                    time.sleep(0)   # let the event loop have the GIL between chunks
            out.flush()
        except (OSError, ValueError) as exc:  # reader went away, closed stream, disk full
            self._out = None
            StateLog.failures += 1
            if not isinstance(exc, BrokenPipeError):
                print(f"callstate: the state log cannot be written any more ({exc}); up to {taken} entries and "
                      "all later ones are not in it", file=sys.stderr)
            return

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._interval)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write everything appended so far (from any thread)."""
        with self._lock:
            self._drain()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.flush()
        if self._owns and self._out is not None:
            self._out.close()
        self._out = None
        atexit.unregister(self.close)


def _end_cut_line(path: str | Path, out: IO[bytes]) -> None:
    """A log appended to whose last line was cut short (its writer killed mid-line, a full
    disk): end that line first, so this run's first entry is not glued onto it, which would
    make both unreadable (`statelog.parse_log` skips a cut line with a warning)."""
    try:
        if not stat.S_ISREG(os.fstat(out.fileno()).st_mode) or not out.tell():
            return   # a FIFO or a device (reading it could block), or a new log
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
    except OSError:   # it cannot be read back (write-only): appended to as it is
        return
    if cut:
        out.write(b"\n")


def read_log(path: str | Path, warn: Callable[[str], None] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, entry) from a JSON-lines state log (`statelog.parse_log` on its lines).

    Only regular files are read (a FIFO or a device would block or never end).
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise LogFormatError(f"{path}: not a regular file")
    with open(path, "rb") as f:
        yield from parse_log(f, str(path), warn)


def check_files(paths: Iterable[str | Path], server_in_flight: int | None = None,
                warn: Callable[[str], None] | None = None) -> CheckReport:
    """The checker's verdict on state log files. `warn`: told about a last line cut short, which
    is then skipped (else it is an error)."""
    checker = Checker()
    for path in paths:
        checker.report.files.append(str(path))
        for lineno, entry in read_log(path, warn):
            checker.add(entry, f"{path}:{lineno}: ")
    return checker.finish(server_in_flight)
