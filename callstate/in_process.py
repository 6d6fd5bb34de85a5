"""Which ports this process serves on which event loop (`EmulatorServer`, server/app.py), for
a client in the same process to know a server it must not block on.

A client's blocking read of a target's reflection (`method=` without `schema=`) made on the
very loop that serves the target can never be answered: the loop waits for the read, the
server waits for the loop. The client asks here first and says so at once (client_base.py),
instead of stalling for the read's 10 s timeout and blaming the peer."""

from __future__ import annotations

from typing import Any

_SERVING: dict[int, tuple[Any, str]] = {}   # port -> the event loop serving it, and the address it binds
# the names of this machine a target can reach its own port by (besides the address bound)
_LOCAL = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "::", ""})


def serving(port: int, loop: Any, bind: str = "") -> None:
    _SERVING[port] = (loop, bind)


def stopped(port: int, loop: Any) -> None:
    if _SERVING.get(port, (None, ""))[0] is loop:
        del _SERVING[port]


def served_on(target: str, loop: Any) -> bool:
    """Whether `target` ("host:port") is a port this process serves on `loop` (the same port on
    another host is not)."""
    host, _, port = target.rpartition(":")
    if loop is None or not port.isdigit() or int(port) not in _SERVING:
        return False
    serving_loop, bind = _SERVING[int(port)]
    host = host.strip("[]")
    return serving_loop is loop and (host in _LOCAL or host == bind)
