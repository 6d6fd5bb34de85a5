"""`assert_lifecycle`: one call's two sides against what the test expected.

    assert_lifecycle(call, client=[C, WCOMP, CAN, WCOMP, COMP, END], server=[D, A, END],
                     code=1818, server_saw_cancel=True)

On a mismatch the message names each expectation that failed, the first state where a
side's history departs from the expected one, and both histories side by side with their
timestamps.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Sequence

from callstate import codes
from callstate.lifecycle import CANCEL_SEEN, CLIENT, END, ENTER, SERVER, SIDE_STATES
from callstate.statelog import to_dict
from callstate.pytest_plugin.recorder import Recorder
from callstate.pytest_plugin.servers import ServerHandle, ended
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


def _expected(side: str, states: Sequence[str] | str) -> list[str]:
    """The states a test expects of one side: a list, or text (`"C -> WComp -> Comp -> End"`);
    a name that is no state of that side is a usage error, not a mismatch to report."""
    if isinstance(states, str):
        states = re.split(r"\s*->\s*|[\s,]+", states.strip()) if states.strip() else []
    states = list(states)
    unknown = [s for s in states if s not in SIDE_STATES[side]]
    if unknown:
        raise ValueError(f"assert_lifecycle: {side}=: {', '.join(map(repr, unknown))} "
                         f"{'is no' if len(unknown) == 1 else 'are no'} {side} state "
                         f"(the {side} states: {', '.join(sorted(SIDE_STATES[side]))})")
    return states


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


def _code_problem(call: Any, code: int, c_entries: list[dict[str, Any]]) -> list[str]:
    got = call.code if call.code is not None else _final_code(c_entries)
    if got == code:
        return []
    return [f"final code: expected {codes.describe(code)}, got "
            f"{codes.describe(got) if got is not None else 'none (the call is not notified yet)'}"]


def _cancel_problem(expected: bool, s_entries: list[dict[str, Any]], marks: set[tuple[str, int]]) -> list[str]:
    seen = [i for i, e in enumerate(s_entries) if e.get("event") == CANCEL_SEEN]
    if bool(seen) == expected:
        return []
    marks.update((SERVER, i) for i in seen[:1])
    return [f"server saw a cancel: expected {'yes' if expected else 'no'}, got {'yes' if seen else 'no'}"]


def _server_entries(call: Any, journal: ServerHandle | None, needed: bool, timeout: float) -> list[dict[str, Any]]:
    """The server's side of the call, once it has ended it (or `timeout` on); [] when it is
    not needed and no journal is known."""
    handle = _server_for(call, journal)
    if handle is None:
        if needed:
            raise AssertionError(f"assert_lifecycle: no journal for {getattr(call._client, 'target', '?')}: "
                                 "pass journal=<the server handle>")
        return []
    return handle.wait_history(call.call_id, timeout)


def assert_lifecycle(call: Any, client: Sequence[str] | str | None = None, server: Sequence[str] | str | None = None, *,
                     code: int | None = None, server_saw_cancel: bool | None = None,
                     journal: ServerHandle | None = None, timeout: float = 5.0) -> None:
    """Assert the client states `client`, the server states `server`, the client's final `code`
    and whether the server saw a cancel (`server_saw_cancel`); each is checked only when given.
    The states are a list (`[C, WCOMP, COMP, END]`) or text (`"C -> WComp -> Comp -> End"`).
    The server's side is read from its journal, waiting up to `timeout` for it to end the call.
    `journal`: the server handle, when the call's client is not one of the plugin's."""
    __tracebackhide__ = True
    if not hasattr(call, "call_id"):
        raise TypeError(f"assert_lifecycle: expected a call (what .start() returns, or a pipe), got {type(call).__name__}")
    client = None if client is None else _expected(CLIENT, client)
    server = None if server is None else _expected(SERVER, server)
    c_entries = client_entries(call)
    s_entries = _server_entries(call, journal, server is not None or server_saw_cancel is not None, timeout)
    marks: set[tuple[str, int]] = set()
    problems: list[str] = []
    if client is not None:
        problems += _compare(CLIENT, client, c_entries, marks)
    if server is not None:
        problems += _compare(SERVER, server, s_entries, marks)
    if code is not None:
        problems += _code_problem(call, code, c_entries)
    if server_saw_cancel is not None:
        problems += _cancel_problem(server_saw_cancel, s_entries, marks)
    if problems and s_entries and not ended(s_entries):
        problems.append(f"(the server had not ended the call when the check gave up waiting, {timeout:g} s on: "
                        "wait for the call's outcome before asserting its lifecycle, or pass a longer timeout=)")
    if problems:
        raise AssertionError(f"call {call.call_id} did not follow the expected lifecycle\n  "
                             + "\n  ".join(problems) + "\n" + side_by_side(c_entries, s_entries, frozenset(marks)))
