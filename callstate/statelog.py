"""The state log: one JSON object per line for every state entered or event seen.

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
from datetime import datetime
from typing import IO, Any, Callable, Iterator, Mapping, NamedTuple

import orjson

from callstate.lifecycle import END, ENTER
from callstate.v1 import callstate_pb2 as pb


class Entry(NamedTuple):
    t: float                    # time.time() when the state was entered
    side: str                   # CLIENT | SERVER
    call_id: str
    state: str
    prev: str | None
    event: str                  # ENTER or an event name such as CANCEL_SEEN
    move: str | None = None     # the table move that entered `state`
    code: int | None = None     # on End: the MS-RPC code
    grpc_status: str | None = None
    detail: str | None = None
    cancel: str | None = None   # the cancel kind, on a client's Can and a server's cancel_seen
    sent: int | None = None     # pipes: messages this side has sent so far (on its transitions)
    received: int | None = None  # pipes: messages this side has received so far
    delay_ms: float | None = None  # a polling server's cancel_seen: ms from the cancel's arrival to its poll
    method: str | None = None   # a stand-in's call: the user's method, "pkg.Svc/Method" (None: callstate.v1)
    rule: str | None = None     # a stand-in's call: the rule that answered it, "rules[N]" or its name


_ts_cache: tuple[int, str] = (-1, "")


def format_ts(t: float) -> str:
    """RFC 3339 UTC with microseconds, e.g. 2026-11-24T15:46:14.123456Z."""
    global _ts_cache
    sec = int(t)
    cached_sec, prefix = _ts_cache
    if sec != cached_sec:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _ts_cache = (sec, prefix)
    return f"{prefix}.{int((t - sec) * 1_000_000):06d}Z"


def parse_ts(value: str) -> float:
    """The inverse of `format_ts` (any RFC 3339 time with an offset or Z)."""
    return datetime.fromisoformat(value).timestamp()


# -- the three forms of an entry: in memory (Entry), JSON (dict / line), wire (pb.StateEntry) ----
# Every conversion lives here; a unit test holds them equal to each other.

def is_final(e: Entry) -> bool:
    """The entry that enters End (it carries the final code)."""
    return e.state == END and e.event == ENTER


def to_dict(e: Entry) -> dict[str, Any]:
    d: dict[str, Any] = {
        "ts": format_ts(e.t), "side": e.side, "call_id": e.call_id,
        "state": e.state, "prev": e.prev, "event": e.event,
    }
    if e.move is not None:
        d["move"] = e.move
    if is_final(e):
        d["code"] = e.code
        d["grpc_status"] = e.grpc_status
    if e.detail:
        d["detail"] = e.detail
    if e.cancel:
        d["cancel"] = e.cancel
    if e.sent is not None:
        d["sent"], d["received"] = e.sent, e.received
    if e.delay_ms is not None:
        d["delay_ms"] = e.delay_ms
    if e.method is not None:
        d["method"] = e.method
    if e.rule is not None:
        d["rule"] = e.rule
    return d


_dumps = orjson.dumps


def format_line(e: Entry) -> str:
    """`to_dict(e)` as one JSON line, about 5x faster than building the dict.

    Only call_id and detail can hold arbitrary text (they come from callers), so
    only they go through orjson's escaping; every other field is a name from the
    lifecycle module or a number. A unit test holds this equal to `to_dict`.
    """
    prev = "null" if e.prev is None else f'"{e.prev}"'
    line = (f'{{"ts":"{format_ts(e.t)}","side":"{e.side}","call_id":{_dumps(e.call_id).decode()},'
            f'"state":"{e.state}","prev":{prev},"event":"{e.event}"')
    if e.move is not None:
        line += f',"move":"{e.move}"'
    if e.state == END and e.event == ENTER:
        code = "null" if e.code is None else int(e.code)
        status = "null" if e.grpc_status is None else f'"{e.grpc_status}"'
        line += f',"code":{code},"grpc_status":{status}'
    if e.detail:
        line += f',"detail":{_dumps(e.detail).decode()}'
    if e.cancel:
        line += f',"cancel":"{e.cancel}"'
    if e.sent is not None:
        line += f',"sent":{int(e.sent)},"received":{int(e.received or 0)}'
    if e.delay_ms is not None:
        line += f',"delay_ms":{float(e.delay_ms)!r}'
    if e.method is not None:   # "pkg.Svc/Method": proto identifiers, dots and a slash, nothing to escape
        line += f',"method":"{e.method}"'
    if e.rule is not None:     # a rule's name is the user's text: escaped
        line += f',"rule":{_dumps(e.rule).decode()}'
    return line + "}\n"


def from_dict(d: Mapping[str, Any]) -> Entry:
    """An entry read from a log (`to_dict`'s form) back in memory; KeyError/ValueError when malformed."""
    return Entry(parse_ts(d["ts"]), d["side"], d["call_id"], d["state"], d.get("prev"), d["event"], d.get("move"),
                 d.get("code"), d.get("grpc_status"), d.get("detail"), d.get("cancel"), d.get("sent"), d.get("received"),
                 d.get("delay_ms"), d.get("method"), d.get("rule"))


def to_proto(e: Entry) -> pb.StateEntry:
    msg = pb.StateEntry(ts=format_ts(e.t), side=e.side, call_id=e.call_id, state=e.state, prev=e.prev or "",
                        event=e.event, move=e.move or "", grpc_status=e.grpc_status or "", detail=e.detail or "",
                        cancel=e.cancel or "")
    if e.code is not None:
        msg.code = e.code
    if e.sent is not None:
        msg.sent, msg.received = e.sent, e.received or 0
    if e.delay_ms is not None:
        msg.delay_ms = e.delay_ms
    if e.method is not None:
        msg.method = e.method
    if e.rule is not None:
        msg.rule = e.rule
    return msg


def proto_to_dict(msg: pb.StateEntry) -> dict[str, Any]:
    """A journal entry from the wire in `to_dict`'s form (the proto's empty strings are absent fields)."""
    d: dict[str, Any] = {"ts": msg.ts, "side": msg.side, "call_id": msg.call_id, "state": msg.state,
                         "prev": msg.prev or None, "event": msg.event}
    if msg.move:
        d["move"] = msg.move
    if msg.HasField("code"):
        d["code"], d["grpc_status"] = msg.code, msg.grpc_status or None
    if msg.detail:
        d["detail"] = msg.detail
    if msg.cancel:
        d["cancel"] = msg.cancel
    if msg.HasField("sent"):
        d["sent"], d["received"] = msg.sent, msg.received
    if msg.HasField("delay_ms"):
        d["delay_ms"] = msg.delay_ms
    if msg.method:
        d["method"] = msg.method
    if msg.rule:
        d["rule"] = msg.rule
    return d


# Entries formatted per hold of the GIL by the writer thread (~0.3 ms of work).
DRAIN_CHUNK = 256


def _discard(entry: Entry) -> None:
    pass


class StateLog:
    """Buffered JSON-lines writer. `append` is cheap and thread-safe."""

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
            if not isinstance(exc, BrokenPipeError):
                print(f"callstate: the state log cannot be written any more ({exc}); "
                      f"{n} entries and all later ones are not in it", file=sys.stderr)
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


class LogFormatError(ValueError):
    """A state log line that is not a valid state entry; names file and line."""


REQUIRED_KEYS = ("ts", "side", "call_id", "state", "prev", "event")


def read_log(path: str | Path, warn: Callable[[str], None] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, entry) from a JSON-lines state log.

    Non-state lines are refused with the file and line number, so a wrong file
    is reported, never half-read silently. The one exception, when `warn` is given:
    a last line cut short (no newline, not a whole entry: the writer died or its disk
    filled) is reported through `warn` and the complete lines before it are kept.
    Only regular files are read (a FIFO or a device would block or never end).
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise LogFormatError(f"{path}: not a regular file")
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            raw = line.strip()
            if not raw:
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                if warn is not None and not line.endswith(b"\n"):
                    warn(f"{path}:{lineno}: the last line is cut short (no newline, not JSON): ignored; "
                         f"the {lineno - 1} lines before it are checked")
                    return
                raise LogFormatError(f"{path}:{lineno}: not JSON ({exc})") from None
            if not isinstance(obj, dict) or any(k not in obj for k in REQUIRED_KEYS):
                missing = [k for k in REQUIRED_KEYS if not isinstance(obj, dict) or k not in obj]
                if warn is not None and not line.endswith(b"\n") and isinstance(obj, dict):
                    warn(f"{path}:{lineno}: the last line is cut short (missing {', '.join(missing)}): ignored")
                    return
                raise LogFormatError(f"{path}:{lineno}: not a state entry (missing {', '.join(missing)})")
            yield lineno, obj
