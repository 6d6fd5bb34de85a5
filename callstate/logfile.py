"""The state log on disk: the buffered writer and the reader (the one place the core's log
format meets files, threads and exit hooks; `callstate.statelog` holds the format itself).

The hot path appends an `Entry` (a tuple with a float timestamp) to a thread-safe deque. Every
`BATCH` entries, the appending thread makes their lines, all at once, and queues them as one run;
a writer thread makes the lines of what is left (every `flush_interval`), joins the runs and
writes them, so no thread waits on the disk, and it holds the GIL only to join (the write itself
lets go of it). `close()` (also run at exit) drains everything, so the last calls' `End` lines
are never lost.

Why the lines are made where the entries are, in runs: a writer thread that made them itself
took turns at the GIL with the event loop, and each turn cost both threads a hand-over; a line
made alone as its entry came cost the client about 8 us a call more than the same lines made
together (docs/performance.md, sessions 40 and 41).
"""

from __future__ import annotations

import atexit
import collections
import gzip
import heapq
import itertools
import math
import os
import stat
import sys
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

from callstate.check import LIVE_KINDS, Checker, CheckReport
from callstate.statelog import Entry, LogFormatError, TimeReader, format_line, parse_log

# Entries an appending thread lets queue before it makes their lines, all at once: a run of
# lines made together costs less than each made alone amid the event loop's other work (its code
# and data stay in the processor's caches), and the loop waits for at most one run (about 0.1 ms).
BATCH = 128
# Lines (runs of BATCH) joined and written per hold of the GIL by the writer thread (the write
# lets go of it).
DRAIN_CHUNK = 1024


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
        self._entries: collections.deque[Entry] = collections.deque()   # appended, lines not yet made
        self._lines: collections.deque[list[str]] = collections.deque()   # runs of lines made, not yet written
        self._making = threading.Lock()   # one thread makes lines at a time: they queue in the entries' order
        self._lock = threading.Lock()   # one writer at a time (appending threads never wait on it)
        # append(entry), thread-safe: queued while the log is on, nothing once the log failed or
        # was closed (so nothing piles up where no writer will take it)
        self.append: Callable[[Entry], None] = self._batching() if self._out is not None else _discard
        self._interval = flush_interval
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        if self._out is not None:
            self._thread = threading.Thread(target=self._run, name="callstate-statelog", daemon=True)
            self._thread.start()
            atexit.register(self.close)

    def _batching(self) -> Callable[[Entry], None]:
        put, entries, making, make = self._entries.append, self._entries, self._making, self._make

        def append(entry: Entry) -> None:
            put(entry)
            if len(entries) >= BATCH and making.acquire(False):   # another thread making them: it takes this one too
                try:
                    make()
                finally:
                    making.release()
        return append

    def _make(self) -> None:
        """Make the lines of the entries queued so far, a run at a time (`_making` held)."""
        entries, line = self._entries, format_line
        if self._out is None:   # a cached sink of a log that failed or was closed: kept bounded
            entries.clear()
            return
        while n := min(len(entries), BATCH):
            self._lines.append([line(entries.popleft()) for _ in range(n)])

    @property
    def enabled(self) -> bool:
        return self._out is not None

    @property
    def sink(self) -> Callable[[Entry], None]:
        """What a hot path calls per entry: `append` as it is now, kept by the caller (after a
        write error or close the queued entries are dropped, so the queue stays bounded)."""
        return self.append

    def _drain(self) -> None:
        with self._making:
            self._make()
        lines, out = self._lines, self._out
        n = len(lines)
        if out is None:   # the log failed (or was closed): lines from a cached sink go nowhere
            lines.clear()
            return
        if not n:
            return
        taken = 0   # entries taken: until the flush succeeds, any of them may be in the file's buffer only
        per_write = max(1, DRAIN_CHUNK // BATCH)   # runs longer than a chunk (a BATCH set above it): one each
        try:
            while n > 0:
                runs = [lines.popleft() for _ in range(min(n, per_write))]
                taken += sum(map(len, runs))
                out.write("".join(itertools.chain.from_iterable(runs)).encode())
                n -= len(runs)
            out.flush()
        except (OSError, ValueError) as exc:  # reader went away, closed stream, disk full
            self._out, self.append = None, _discard
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
        self._out, self.append = None, _discard
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
    with open(path, "rb") as raw:
        yield from parse_log(_lines(raw, str(path)), str(path), warn)


_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"


def _lines(raw: IO[bytes], name: str) -> Iterator[bytes]:
    """A log file's lines: a gzip'd log (a rotated one) read through gzip, a UTF-8 byte order mark
    (an editor's or PowerShell's) before the first line skipped. The file itself is not closed
    when its lines stop being read (a last line cut short): the reader still asks it how far it is."""
    head = raw.read(3)
    if head[:2] != _GZIP_MAGIC:
        raw.seek(3 if head == _BOM else 0)
        return raw   # iterated as it is: no generator in the way, which would close it once left
    raw.seek(0)
    return _gunzipped(raw, name)


def _gunzipped(raw: IO[bytes], name: str) -> Iterator[bytes]:
    """A gzip'd log's lines; a stream cut short or damaged is a LogFormatError naming the file."""
    try:
        unzipped = gzip.GzipFile(fileobj=raw, mode="rb")   # closing it (once left) leaves `raw` open
        if unzipped.peek(3)[:3] == _BOM:
            unzipped.read(3)
        for line in unzipped:
            yield line
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise LogFormatError(f"{name}: a gzip'd log cut short or damaged ({exc or type(exc).__name__}): "
                             "decompress what is left (zcat) and check that") from None


# Lines of a log `check_files` reads at a time (and then tells its `progress` how far it is).
CHUNK = 1024
SAMPLE = 64   # of a chunk's entries, every SAMPLE-th one's time tells where in time the chunk is


@dataclass
class ReadProgress:
    """How far `check_files` is: bytes of the logs read (of their size at the start), entries
    read, calls judged and dropped, calls still held."""

    bytes_read: int
    bytes_total: int
    entries: int
    calls_judged: int
    calls_held: int


class _Log:
    """One log being read for `check_files`: its entries with their times, for the merge."""

    def __init__(self, index: int, path: str | Path, warn: Callable[[str], None] | None) -> None:
        st = os.stat(path)   # as read_log: only a regular file
        if not stat.S_ISREG(st.st_mode):
            raise LogFormatError(f"{path}: not a regular file")
        self.index, self.size, self.name = index, st.st_size, str(path)
        self.key = st.st_dev, st.st_ino
        self.warnings: list[str] = []   # told in the order of the files, once read (the merge interleaves them)
        self.file = open(path, "rb")   # its place (tell) is how far the log is read, gzip'd or not
        self.lines = parse_log(_lines(self.file, self.name), self.name, None if warn is None else self.warnings.append)

    def chunks(self) -> Iterator[tuple[float, int, float, list[tuple[int, dict[str, Any]]]]]:
        """The log's lines CHUNK at a time: (its earliest time, file index, its latest time, lines),
        of every SAMPLE-th entry and the last (an entry without a time takes the one before it): one
        entry of a time far off (a clock that jumped for a moment) cannot move the reading's time
        on, which would judge the calls in flight before their other side's entries come."""
        at, times = -math.inf, TimeReader()
        try:
            while chunk := list(itertools.islice(self.lines, CHUNK)):
                sampled = []
                for i in (*range(0, len(chunk), SAMPLE), len(chunk) - 1):
                    at = times.read(chunk[i][1].get("ts"), at)
                    sampled.append(at)
                yield min(sampled), self.index, max(sampled), chunk
        except (OSError, LogFormatError) as exc:
            exc.log_index = self.index   # type: ignore[union-attr]   # which file: for _first_error
            raise

    def drain(self) -> None:
        """Read the rest (for its first error, if any)."""
        for _ in self.lines:
            pass


def check_files(paths: Iterable[str | Path], server_in_flight: int | None = None,
                warn: Callable[[str], None] | None = None,
                progress: Callable[[ReadProgress], None] | None = None) -> CheckReport:
    """The checker's verdict on state log files. `warn`: told about a last line cut short, which
    is then skipped (else it is an error). `progress`: told how far, every CHUNK entries.

    The files are read together, merged by time, so that both sides of a call come close
    together and the checker judges and drops each call soon after it has ended (memory follows
    the calls in flight, not the logs' length); the report, errors and warnings are those of
    reading the files one after another."""
    checker = Checker(retire=True)
    logs, grown = _feed(paths, checker, checker.add, warn, progress)
    report = checker.finish(server_in_flight)
    _mark_live(logs, grown, report)
    report.warnings = _tell(logs, warn)
    return report


def _mark_live(logs: list[_Log], grown: list[_Log], report: CheckReport) -> None:
    """Say in `report` (and in each such log's warnings) which logs are still being written."""
    for log, note in _still_written(logs, grown, report).items():
        report.live.append(note)
        report.live_files.append(log.name)
        log.warnings.append(f"{note}: a log still being written")


def feed_files(paths: Iterable[str | Path], checker: Checker,
               add: Callable[[dict[str, Any], str, int], None] | None = None,
               warn: Callable[[str], None] | None = None,
               progress: Callable[[ReadProgress], None] | None = None) -> Callable[[CheckReport], None]:
    """Feed the logs' entries to `checker` (through `add(entry, where, pos)` when given: the HTML
    report's builder, which also sums each call up) merged by time as `check_files` reads them, so
    a call whose side's entries are split over files (a rotated log) reads the same in any order
    of the files; the files, warnings and errors go to the checker's report as `check_files` has them.
    Returns what then says, in the finished report, which logs were still being written (and tells
    `warn`), as `check_files` does."""
    logs, grown = _feed(paths, checker, add or checker.add, warn, progress)
    checker.report.warnings = _tell(logs, warn)

    def mark_live(report: CheckReport) -> None:
        for log in logs:
            log.warnings.clear()   # told already
        _mark_live(logs, grown, report)
        report.warnings += _tell(logs, warn)

    return mark_live


def _feed(paths: Iterable[str | Path], checker: Checker, add: Callable[[dict[str, Any], str, int], None],
          warn: Callable[[str], None] | None,
          progress: Callable[[ReadProgress], None] | None) -> tuple[list[_Log], list[_Log]]:
    """Read the logs into `checker` through `add`; returns them (closed) and those that grew while read."""
    logs: list[_Log] = []
    try:
        for path in paths:
            checker.report.files.append(str(path))
            logs.append(_Log(len(logs), path, warn))
        _check_merged(checker, logs, progress, add)
        grown = [log for log in logs if os.fstat(log.file.fileno()).st_size != log.size]
    except (OSError, LogFormatError) as exc:
        first, failed = _first_error(logs, exc)
        _tell(logs[:failed + 1], warn)   # the files after it were never reached
        raise first from None
    finally:
        for log in logs:
            log.file.close()
    return logs, grown


def _still_written(logs: list[_Log], grown: list[_Log], report: CheckReport) -> dict[_Log, str]:
    """The logs still being written as they were read, each with how that shows: it grew while
    read, or (when the verdict hangs on it: calls that look unended) a process has it open for
    writing. A server or client still running (or stopped) has calls in flight that look unended."""
    live = {log: f"{log.name} grew while it was read" for log in grown}
    if report.violations and any(v.kind in LIVE_KINDS for v in report.violations):
        files = {log.key: log for log in logs if log not in live}
        for key, pids in _writers(files).items():
            live[files[key]] = f"{files[key].name} is open for writing by process {', '.join(pids)}"
    return live


def _writers(files: dict[tuple[int, int], Any]) -> dict[tuple[int, int], list[str]]:
    """Which other processes have these files (by device and inode) open for writing, from /proc
    (nothing where there is none): "1234", or "1234 (stopped)" for one stopped by a signal."""
    found: dict[tuple[int, int], list[str]] = {}
    try:
        pids = [pid for pid in os.listdir("/proc") if pid.isdigit() and int(pid) != os.getpid()] if files else []
    except OSError:
        return found
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:   # gone, or another user's
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
                if (st.st_dev, st.st_ino) in files and _open_for_writing(pid, fd):
                    found.setdefault((st.st_dev, st.st_ino), []).append(pid + _stopped(pid))
            except OSError:
                continue
    return found


def _open_for_writing(pid: str, fd: str) -> bool:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        flags = next((line.split()[1] for line in f if line.startswith("flags:")), "0")
    return int(flags, 8) & 3 != 0   # O_WRONLY or O_RDWR


def _stopped(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return ""
    return " (stopped)" if state in ("T", "t") else ""


def _tell(logs: list[_Log], warn: Callable[[str], None] | None) -> list[str]:
    """Tell the logs' warnings, in the order of the files; they are also returned, for the report."""
    told = []
    for log in logs:
        for text in log.warnings:
            if warn is not None:   # a log still being written is said in the report without one
                warn(text)
            told.append(text)
    return told


def _check_merged(checker: Checker, logs: list[_Log], progress: Callable[[ReadProgress], None] | None,
                  add: Callable[[dict[str, Any], str, int], None]) -> None:
    """The logs' lines a chunk at a time, the chunk that starts earliest first: both sides of a
    call come close together (the checker orders what it reports as a reading one file after
    another would)."""
    names = [f"{log.name}:" for log in logs]
    total = sum(log.size for log in logs)
    entries = 0
    for first, index, last, chunk in heapq.merge(*[log.chunks() for log in logs]):
        checker.advance(first, last)
        name = names[index]
        for lineno, entry in chunk:
            add(entry, f"{name}{lineno}: ", (index << 40) + lineno)   # one int: held per call
        entries += len(chunk)
        if progress is not None:
            progress(ReadProgress(sum(log.file.tell() for log in logs), total, entries, checker.judged,
                                  len(checker.tracks)))


def _first_error(logs: list[_Log], exc: Exception) -> tuple[Exception, int]:
    """The error a reading of the files one after another would have met first, and its file's
    index: that of an earlier file, else `exc`."""
    failed = getattr(exc, "log_index", len(logs))   # none: opening the next file failed
    for log in logs[:failed]:
        try:
            log.drain()
        except (OSError, LogFormatError) as earlier:
            return earlier, log.index
    return exc, failed
