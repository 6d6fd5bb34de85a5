"""Which ports this process serves on which event loop (`EmulatorServer`, server/app.py), for
a client in the same process to know a server it must not block on.

A client's blocking read of a target's reflection (`method=` without `schema=`) made on the
very loop that serves the target can never be answered: the loop waits for the read, the
server waits for the loop. The client asks here first and says so at once (client_base.py),
instead of stalling for the read's 10 s timeout and blaming the peer."""

from __future__ import annotations

from typing import Any

_SERVING: dict[int, Any] = {}   # port -> the event loop serving it


def serving(port: int, loop: Any) -> None:
    _SERVING[port] = loop


def stopped(port: int, loop: Any) -> None:
    if _SERVING.get(port) is loop:
        del _SERVING[port]


def served_on(target: str, loop: Any) -> bool:
    """Whether `target` ("host:port") is a port this process serves on `loop`."""
    port = target.rpartition(":")[2]
    return loop is not None and port.isdigit() and _SERVING.get(int(port)) is loop
