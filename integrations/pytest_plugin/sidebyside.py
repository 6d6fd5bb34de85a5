"""Two sides of one call as one table: client entries on the left, server entries on the
right, one entry per row in time order, so a reader sees which side moved first."""

from __future__ import annotations

from typing import Any

from callstate import codes
from callstate.lifecycle import CLIENT, END, ENTER, SERVER
from callstate.statelog import parse_ts

WIDTH = 58


def describe_entry(e: dict[str, Any]) -> str:
    """One entry in a few words: `WComp  started`, `End  completed  0 RPC_S_OK`, `. cancel_seen [abortive]`."""
    if e.get("event") == ENTER:
        text = f"{e['state']:<6} {e.get('move') or ''}".rstrip()
        if e["state"] == END and isinstance(e.get("code"), int):
            text += f"  {codes.describe(e['code'])}"
    else:
        text = f"{e.get('state', '?'):<6} . {e.get('event')}"
    if e.get("cancel"):
        text += f" [{e['cancel']}]"
    return text


def _clock(ts: object) -> str:
    return ts[11:] if isinstance(ts, str) and len(ts) > 11 else str(ts)


def side_by_side(client: list[dict[str, Any]], server: list[dict[str, Any]],
                 marks: frozenset[tuple[str, int]] = frozenset()) -> str:
    """The table. `marks` holds (side, index in that side's list) of entries to flag with `>>`."""
    rows: list[tuple[float, int, str, int, dict[str, Any]]] = []
    for order, (side, entries) in enumerate(((CLIENT, client), (SERVER, server))):
        for i, e in enumerate(entries):
            try:
                t = parse_ts(e["ts"])
            except (KeyError, TypeError, ValueError):
                t = float("inf")
            rows.append((t, order, side, i, e))
    rows.sort(key=lambda r: (r[0], r[1], r[3]))
    cells = [(side, i, f"{_clock(e.get('ts'))}  {describe_entry(e)}") for _, _, side, i, e in rows]
    # the client column as wide as its longest cell (a long code name, a cancel kind): one straight divider
    width = max([WIDTH] + [len(cell) + 1 for side, _, cell in cells if side == CLIENT])
    out = [f"    {CLIENT:<{width}}| {SERVER}", f"    {'-' * width}+{'-' * WIDTH}"]
    for side, i, cell in cells:
        flag = ">> " if (side, i) in marks else "   "
        if side == CLIENT:
            out.append(f" {flag}{cell:<{width}}|")
        else:
            out.append(f" {flag}{'':<{width}}| {cell}")
    if not client:
        out.append(f"    {'(no client entries)':<{width}}|")
    if not server:
        out.append(f"    {'':<{width}}| (no server entries: the server never saw the call)")
    if any(not e.get("ts") for e in client):
        out.append("    (the client's states carry no time, so they stand below the server's, in their own order: "
                   "the call's client is not one of the plugin's, which record each entry's time)")
    return "\n".join(out)
