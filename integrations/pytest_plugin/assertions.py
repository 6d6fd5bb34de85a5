"""`assert_lifecycle`: one call's two sides against what the test expected.

    assert_lifecycle(call, client=[C, WCOMP, CAN, WCOMP, COMP, END], server=[D, A, END],
                     code=1818, server_saw_cancel=True)

On a mismatch the message names each expectation that failed, the first state where a
side's history departs from the expected one, and both histories side by side with their
timestamps.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

from callstate import codes
from callstate.lifecycle import CANCEL_SEEN, CLIENT, END, ENTER, SERVER
from callstate.statelog import to_dict
from callstate.pytest_plugin.recorder import Recorder
from callstate.pytest_plugin.servers import ServerHandle
from callstate.pytest_plugin.sidebyside import side_by_side

# Servers the plugin runs or reaches, by target: a call's client knows only its target.
_SERVERS: dict[str, ServerHandle] = {}
_SERVERS_LOCK = threading.Lock()


def register_server(server: ServerHandle) -> None:
    with _SERVERS_LOCK:
        _SERVERS[server.target] = server


def unregister_server(server: ServerHandle) -> None:
    with _SERVERS_LOCK:
        if _SERVERS.get(server.target) is server:
            del _SERVERS[server.target]


def _recorder_of(call: Any) -> Recorder | None:
    """The plugin recorder the call's client logs to, also inside the wrapper that feeds a
    traced client's spans (`tracing=`: observe.ObservedLog, its `inner`)."""
    log = getattr(getattr(call, "_client", None), "log", None)
    log = getattr(log, "inner", log)
    return log if isinstance(log, Recorder) else None


def client_entries(call: Any) -> list[dict[str, Any]]:
    """The call's client entries with timestamps when its client logs to a plugin recorder;
    otherwise its state history alone."""
    log = _recorder_of(call)
    if log is not None:
        return [to_dict(e) for e in log.calls().get(call.call_id, [])]
    return [{"ts": "", "side": CLIENT, "call_id": call.call_id, "state": s, "event": ENTER} for s in call.history]


def _server_for(call: Any, journal: ServerHandle | None) -> ServerHandle | None:
    if journal is not None:
        return journal
    client = getattr(call, "_client", None)
    log = _recorder_of(call)
    if log is not None:
        return log.server
    with _SERVERS_LOCK:
        return _SERVERS.get(getattr(client, "target", ""))


def _states(entries: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(index in entries, state) of every state entered."""
    return [(i, e["state"]) for i, e in enumerate(entries) if e.get("event") == ENTER]


def _compare(side: str, expected: Sequence[str], entries: list[dict[str, Any]],
             marks: set[tuple[str, int]]) -> list[str]:
    got = _states(entries)
    states = [s for _, s in got]
    if states == list(expected):
        return []
    lines = [f"{side} states: expected {' -> '.join(expected) or '(none)'}",
             f"{'':{len(side)}}         got      {' -> '.join(states) or '(none)'}"]
    n = next((k for k, (a, b) in enumerate(zip(expected, states)) if a != b), min(len(expected), len(states)))
    if n < len(states):
        index, state = got[n]
        marks.add((side, index))
        want = f"expected {expected[n]}" if n < len(expected) else "expected nothing more"
        lines.append(f"{'':{len(side)}}         first difference at state {n + 1}: {want}, got {state} "
                     f"(at {entries[index].get('ts') or 'an unrecorded time'})")
    else:
        lines.append(f"{'':{len(side)}}         first difference at state {n + 1}: expected {expected[n]}, "
                     "got nothing (the history stops there)")
    return lines


def _final_code(entries: list[dict[str, Any]]) -> int | None:
    return next((e.get("code") for e in entries if e.get("state") == END and e.get("event") == ENTER), None)


def assert_lifecycle(call: Any, client: Sequence[str] | None = None, server: Sequence[str] | None = None, *,
                     code: int | None = None, server_saw_cancel: bool | None = None,
                     journal: ServerHandle | None = None, timeout: float = 5.0) -> None:
    """Assert the client states `client`, the server states `server`, the client's final `code`
    and whether the server saw a cancel (`server_saw_cancel`); each is checked only when given.
    The server's side is read from its journal, waiting up to `timeout` for it to end the call.
    `journal`: the server handle, when the call's client is not one of the plugin's."""
    __tracebackhide__ = True
    c_entries = client_entries(call)
    s_entries: list[dict[str, Any]] = []
    handle = _server_for(call, journal)
    if server is not None or server_saw_cancel is not None or handle is not None:
        if handle is None:
            raise AssertionError(f"assert_lifecycle: no journal for {getattr(call._client, 'target', '?')}: "
                                 "pass journal=<the server handle>")
        s_entries = handle.wait_history(call.call_id, timeout)
    marks: set[tuple[str, int]] = set()
    problems: list[str] = []
    if client is not None:
        problems += _compare(CLIENT, client, c_entries, marks)
    if server is not None:
        problems += _compare(SERVER, server, s_entries, marks)
    if code is not None:
        got = call.code if call.code is not None else _final_code(c_entries)
        if got != code:
            problems.append(f"final code: expected {codes.describe(code)}, got "
                            f"{codes.describe(got) if got is not None else 'none (the call is not notified yet)'}")
    if server_saw_cancel is not None:
        seen = [i for i, e in enumerate(s_entries) if e.get("event") == CANCEL_SEEN]
        if bool(seen) != server_saw_cancel:
            marks.update((SERVER, i) for i in seen[:1])
            problems.append(f"server saw a cancel: expected {'yes' if server_saw_cancel else 'no'}, "
                            f"got {'yes' if seen else 'no'}")
    if problems:
        raise AssertionError(f"call {call.call_id} did not follow the expected lifecycle\n  "
                             + "\n  ".join(problems) + "\n" + side_by_side(c_entries, s_entries, frozenset(marks)))
