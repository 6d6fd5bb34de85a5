"""State entries on a terminal: one readable line each, or JSON lines."""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Mapping, TextIO

import orjson

from callstate import codes
from callstate.lifecycle import ENTER
from callstate.statelog import Entry, is_final, to_dict
from callstate.logfile import StateLog


# C0 controls (ESC, BEL...), DEL and C1 controls (CSI as U+009B...): a terminal acts on them, so
# text from the wire (an abort message, a detail) could set the window title or clear the screen
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with every control character shown as a \\uXXXX escape (also valid in JSON)."""
    return _CONTROLS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def print_final(code: int, details: str) -> None:
    """The command's last line (stderr): the call's final code, then what it says."""
    print(printable(f"final: {codes.describe(code)}" + (f": {details}" if details else "")), file=sys.stderr)


def human(d: Mapping[str, Any]) -> str:
    """One state entry (in its JSON form) as a terminal line."""
    ts = d["ts"][11:]  # time of day is enough on a terminal
    if d["event"] != ENTER:
        text = f"{ts}  {d['side']:<6}  {d['state']:<5}  . {d['event']}"
    else:
        via = f"{d.get('prev') or '-'} --{d.get('move', '')}-->"
        text = f"{ts}  {d['side']:<6}  {d['state']:<5}  {via}"
    if d.get("code") is not None:
        text += f"  {codes.describe(d['code'])}" + (f" (gRPC {d['grpc_status']})" if d.get("grpc_status") else "")
    if d.get("cancel"):
        text += f"  [{d['cancel']}]"
    if d.get("detail"):
        text += f"  [{d['detail']}]"
    if d.get("method"):   # a stand-in's call: which of the user's methods, and the rule that answered it
        text += f"  ({d['method']}" + (f", rule {d['rule']}" if d.get("rule") else "") + ")"
    return printable(text)


def line(d: Mapping[str, Any], as_json: bool) -> str:
    """JSON escapes C0 controls itself; C1 ones (and DEL) pass through it, so they are escaped too."""
    return printable(orjson.dumps(d).decode()) if as_json else human(d)


def stdout_gone() -> None:
    """The reader of stdout went away (`| head`): what is still printed there goes to /dev/null,
    and so does the flush at exit (which would print an "Exception ignored" BrokenPipeError)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def open_state_log(path: str) -> StateLog:
    """The client's state log (--log-file of call and load); OSError naming the option and the file
    when it cannot be written (not Python's `[Errno 21] Is a directory: 'path'`)."""
    from callstate.cli.outputs import gzipped_log

    if why := gzipped_log("--log-file", path):
        raise OSError(why)
    try:
        return StateLog(path)
    except OSError as exc:
        raise OSError(f"--log-file {path}: cannot write the state log ({exc.strerror or exc})") from None


class PrintSink:
    """A state-log sink that prints each entry as it is recorded (and can tee to a file). When
    its reader goes away (`| head`), it stops printing and the call goes on: its log is whole."""

    enabled = True

    def __init__(self, out: TextIO, as_json: bool, tee: StateLog | None = None) -> None:
        self.out: TextIO | None = out
        self.as_json, self.tee = as_json, tee
        self.final: Entry | None = None

    def append(self, e: Entry) -> None:
        if self.tee is not None:
            self.tee.append(e)
        if is_final(e):
            self.final = e
        if self.out is not None:
            text = line(to_dict(e), self.as_json)
            if not self.as_json and e.prev is None and e.event == ENTER:   # the call's first line names it:
                text += f"  call {printable(e.call_id)}"   # the id to find in the server's log, or to watch
            try:
                print(text, file=self.out, flush=True)
            except BrokenPipeError:
                self.out = None
                stdout_gone()

    def close(self) -> None:
        if self.tee is not None:
            self.tee.close()
