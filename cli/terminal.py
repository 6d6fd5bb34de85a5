"""State entries on a terminal: one readable line each, or JSON lines."""

from __future__ import annotations

from typing import Any, Mapping, TextIO

import orjson

from callstate import codes
from callstate.lifecycle import ENTER
from callstate.statelog import Entry, StateLog, is_final, to_dict


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
    return text


def line(d: Mapping[str, Any], as_json: bool) -> str:
    return orjson.dumps(d).decode() if as_json else human(d)


class PrintSink:
    """A state-log sink that prints each entry as it is recorded (and can tee to a file)."""

    enabled = True

    def __init__(self, out: TextIO, as_json: bool, tee: StateLog | None = None) -> None:
        self.out, self.as_json, self.tee = out, as_json, tee
        self.final: Entry | None = None

    def append(self, e: Entry) -> None:
        if self.tee is not None:
            self.tee.append(e)
        if is_final(e):
            self.final = e
        print(line(to_dict(e), self.as_json), file=self.out, flush=True)

    def close(self) -> None:
        if self.tee is not None:
            self.tee.close()
