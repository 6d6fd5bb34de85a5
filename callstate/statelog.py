"""The state log's format: one JSON object per line for every state entered or event seen.

An entry in memory (`Entry`, a tuple with a float timestamp), as JSON (a dict or one line) and on
the wire (`pb.StateEntry`), and a log's lines read back. No I/O here: the writer thread and the
file reading live in `callstate.logfile`.
"""

from __future__ import annotations

import functools
import time
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

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


# Entry(...) without the Python-level __new__ of a NamedTuple (the hot paths of both sides make
# one per state entered): all sixteen fields, in order, as one tuple.
new_entry: Callable[[tuple[Any, ...]], Entry] = functools.partial(tuple.__new__, Entry)  # type: ignore[assignment]

_ts_cache: tuple[int, str] = (0, "1970-01-01T00:00:00.")   # a second and its text, for the lines within it


def format_ts(t: float) -> str:
    """RFC 3339 UTC with microseconds, e.g. 2026-11-24T15:46:14.123456Z."""
    global _ts_cache
    sec, prefix = _ts_cache
    us = (t - sec) * 1_000_000
    if not 0.0 <= us < 1_000_000.0:   # another second than the last line's (rarely: lines come in bursts)
        sec = int(t)
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
        _ts_cache = (sec, prefix)
        us = (t - sec) * 1_000_000
    return f"{prefix}{'%06d' % us}Z"   # %d truncates: the microsecond the clock was in


def logged_time(t: float) -> float:
    """`t` as `format_ts` writes it (to the microsecond it was in), read back: a figure measured
    in memory then agrees with the same figure measured from the log."""
    sec = int(t)
    return sec + int((t - sec) * 1_000_000) / 1_000_000


def parse_ts(value: str) -> float:
    """The inverse of `format_ts` (any RFC 3339 time with an offset or Z)."""
    return datetime.fromisoformat(value).timestamp()


def parse_ts_or(value: str, default: float) -> float:
    """`parse_ts`, or `default` for text that is not such a time."""
    try:
        return parse_ts(value)
    except ValueError:
        return default


class TimeReader:
    """Log times read back many at a time (a checker, a merge of logs): the writer's own form
    (2026-01-02T03:04:05.678901Z) as the float `parse_ts` makes of it, to the last bit (whole
    microseconds over 10**6), its whole seconds parsed once per second of log."""

    def __init__(self) -> None:
        self._us: dict[str, int] = {}

    def exact(self, ts: str) -> float | str:
        """`ts` as a float when it is in the writer's form; any other text as it is."""
        if len(ts) != 27 or ts[19] != "." or ts[26] != "Z" or not ts[20:26].isdigit():
            return ts
        base = self._us.get(ts[:19])
        if base is None:
            if len(self._us) > 4096:
                self._us.clear()
            try:
                base = self._us[ts[:19]] = int(parse_ts(ts[:19] + "Z")) * 1_000_000
            except ValueError:
                return ts
        t = (base + int(ts[20:26])) / 1_000_000
        return t if t else ts   # 0.0 would read as no time at all where the text does not

    def read(self, ts: Any, default: float) -> float:
        """Any entry's `ts` as a float: a float as it is, text parsed; `default` for what is neither."""
        if type(ts) is float:
            return ts
        if type(ts) is not str:
            return default
        t = self.exact(ts)
        return t if type(t) is float else parse_ts_or(t, default)


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


def _json_str(text: str) -> str:
    """`text` as a JSON string. A lone surrogate (a caller's own str can hold one; UTF-8 cannot)
    is written as its escape's text, so the line is still made and read back, never lost."""
    try:
        return _dumps(text).decode()
    except TypeError:
        return _dumps(text.encode("utf-8", "backslashreplace").decode()).decode()

# What follows the call id in a line, by the values it is made from: a log's entries take few
# distinct shapes (a server's common call: three), so each shape is formatted once and looked up
# after that. The key is the fields from `state` to `rule` where no field is a count (the common
# case: the rest of the line, to its newline), else only those from `state` to `cancel` (a pipe's
# sent/received and a poll's delay differ line by line: formatted each time). Bounded: details that
# differ call by call (a user's abort text) clear it when it fills.
_TAILS: dict[tuple[Any, ...], str] = {}
_MAX_TAILS = 4096
_head_cache: tuple[str, str, str] = ("", "", "")   # the last call id, its side, and their JSON text


def _tail(e: Entry) -> str:
    """The fields from `state` to `cancel`, as JSON members."""
    prev = "null" if e.prev is None else f'"{e.prev}"'
    tail = f'"state":"{e.state}","prev":{prev},"event":"{e.event}"'
    if e.move is not None:
        tail += f',"move":"{e.move}"'
    if e.state == END and e.event == ENTER:
        code = "null" if e.code is None else int(e.code)
        status = "null" if e.grpc_status is None else f'"{e.grpc_status}"'
        tail += f',"code":{code},"grpc_status":{status}'
    if e.detail:
        tail += f',"detail":{_json_str(e.detail)}'
    if e.cancel:
        tail += f',"cancel":"{e.cancel}"'
    return tail


def _extras(e: Entry) -> str:
    """The fields from `sent` to `rule`, as JSON members, and the line's end."""
    line = ""
    if e.sent is not None:
        line += f',"sent":{int(e.sent)},"received":{int(e.received or 0)}'
    if e.delay_ms is not None:
        line += f',"delay_ms":{float(e.delay_ms)!r}'
    if e.method is not None:   # "pkg.Svc/Method": proto identifiers, dots and a slash, nothing to escape
        line += f',"method":"{e.method}"'
    if e.rule is not None:     # a rule's name is the user's text: escaped
        line += f',"rule":{_json_str(e.rule)}'
    return line + "}\n"


def _rest(e: Entry) -> str:
    """The line after the call id, from the cache where its fields can be a key."""
    counted = e.sent is not None or e.delay_ms is not None
    key = e[3:11] if counted else e[3:]
    try:
        rest = _TAILS.get(key)
    except TypeError:   # a field that cannot be a key (not a str, int or None): formatted each time
        return _tail(e) + _extras(e)
    if rest is None:
        rest = _tail(e) if counted else _tail(e) + _extras(e)
        if len(_TAILS) >= _MAX_TAILS:
            _TAILS.clear()
        _TAILS[key] = rest
    return rest + _extras(e) if counted else rest


def format_line(e: Entry) -> str:
    """`to_dict(e)` as one JSON line, about 5x faster than building the dict.

    Only call_id, detail and rule can hold arbitrary text (they come from callers), so
    only they go through orjson's escaping; every other field is a name from the
    lifecycle module or a number. A unit test holds this equal to `to_dict`, byte for byte.
    """
    global _ts_cache, _head_cache
    t, side, cid = e[0], e[1], e[2]
    if e[11] is None and e[13] is None:   # no count (sent, delay_ms): the common case, inlined
        key = e[3:]
        try:
            rest = _TAILS.get(key) or _rest(e)
        except TypeError:
            rest = _rest(e)
    else:
        rest = _rest(e)
    sec, prefix = _ts_cache   # format_ts, inlined
    us = (t - sec) * 1_000_000
    if not 0.0 <= us < 1_000_000.0:
        sec = int(t)
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
        _ts_cache = (sec, prefix)
        us = (t - sec) * 1_000_000
    last, last_side, head = _head_cache   # a call's entries come in runs (Can and WComp, D, Comp and End)
    if cid is not last or side is not last_side:
        # made by callstate, an id is hex: letters and digits need no escaping
        head = (f'Z","side":"{side}","call_id":"{cid}",' if cid.isalnum() else
                f'Z","side":"{side}","call_id":{_json_str(cid)},')
        _head_cache = (cid, side, head)
    # the microseconds as six digits: %d truncates a float, to the microsecond the clock was in
    return f'{{"ts":"{prefix}{"%06d" % us}{head}{rest}'


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


class LogFormatError(ValueError):
    """A state log line that is not a valid state entry; names file and line."""


REQUIRED_KEYS = ("ts", "side", "call_id", "state", "prev", "event")


def cut_short(raw: bytes) -> bool:
    """Whether a line that is not JSON is the start of a JSON object, cut short: its text ends
    before the object does (a cut may split a character: it reads as U+FFFD)."""
    if not raw.startswith(b"{"):
        return False
    text = raw.decode("utf-8", "replace")
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return exc.pos >= len(text)
    return False


def _not_utf8(raw: bytes) -> str:
    """Where a line is not UTF-8 ('' when it is): orjson's own message for it speaks of
    surrogates and column 1 wherever the byte is."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}"
    return ""


def parse_log(lines: Iterable[bytes], name: str,
              warn: Callable[[str], None] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, entry) from the lines of a JSON-lines state log called `name`.

    Non-state lines are refused with the name and line number, so a wrong file
    is reported, never half-read silently. The one exception, when `warn` is given:
    a last line cut short (no newline, not a whole entry: the writer died or its disk
    filled) is reported through `warn` and the complete lines before it are kept; so is
    such a line inside the log, once a later run (a restarted server) appended after it.
    """
    cut: tuple[int, str] | None = None   # a line cut short inside the log, until the next line shows the log went on
    for lineno, line in enumerate(lines, 1):
        raw = line.strip()
        if not raw:
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if warn is not None and not line.endswith(b"\n"):
                _told_cut(cut, name, warn)
                warn(f"{name}:{lineno}: the last line is cut short (no newline, not JSON): ignored; "
                     f"the {lineno - 1} {'line' if lineno == 2 else 'lines'} before it "
                     f"{'is' if lineno == 2 else 'are'} checked")
                return
            if warn is not None and cut_short(raw):
                _told_cut(cut, name, warn)
                cut = (lineno, str(exc))
                continue
            raise _refused(name, lineno, f"not JSON ({_not_utf8(line) or exc})", cut) from None
        if not isinstance(obj, dict) or any(k not in obj for k in REQUIRED_KEYS):
            missing = [k for k in REQUIRED_KEYS if not isinstance(obj, dict) or k not in obj]
            if warn is not None and not line.endswith(b"\n") and isinstance(obj, dict):
                _told_cut(cut, name, warn)
                warn(f"{name}:{lineno}: the last line is cut short (missing {', '.join(missing)}): ignored")
                return
            raise _refused(name, lineno, f"not a state entry (missing {', '.join(missing)})", cut)
        _told_cut(cut, name, warn)
        cut = None
        yield lineno, obj
    _told_cut(cut, name, warn)


def _told_cut(cut: tuple[int, str] | None, name: str, warn: Callable[[str], None] | None) -> None:
    if cut is not None and warn is not None:
        warn(f"{name}:{cut[0]}: a line cut short (the start of an entry: its writer stopped mid-line, "
             f"and the log was appended to after it): ignored")


def _refused(name: str, lineno: int, why: str, cut: tuple[int, str] | None) -> LogFormatError:
    """The error for a line that is no entry; after a line that looked cut short, that line's:
    no entry followed it, so it was no cut entry (a JSON document over several lines, say)."""
    if cut is None:
        return LogFormatError(f"{name}:{lineno}: {why}")
    return LogFormatError(f"{name}:{cut[0]}: not JSON ({cut[1]}), and line {lineno} is no entry either: not a "
                          f"JSON-lines state log (one entry per line)?")
