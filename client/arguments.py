"""What a caller hands the client, checked before anything reaches the state log: a wrong
argument is one TypeError or ValueError naming it, never a call left in C or an error from deep
inside protobuf or a timer thread."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def checked_timeout(timeout: float | None, what: str = "timeout") -> float | None:
    """A gRPC deadline, in seconds: a positive finite number, or None for none."""
    if timeout is None or (_seconds(timeout) and 0 < timeout < math.inf):
        return timeout
    raise ValueError(f"{what} must be a positive number of seconds or None, not {timeout!r}")


def _no_limit(timeout: float | None) -> float | None:
    """None (no limit) for None, and for a timeout past what threading can wait (`math.inf`,
    1e10): its waits and timers raise OverflowError there, the sync surface's from a timer
    thread, unseen."""
    return None if timeout is None or timeout >= threading.TIMEOUT_MAX else timeout


def checked_wait(timeout: float | None, what: str = "timeout") -> float | None:
    """How long a wait (or a cancel's escalation) may take: a number of seconds >= 0, or None
    (also for `math.inf`: no limit)."""
    if timeout is None or (_seconds(timeout) and timeout >= 0):
        return _no_limit(timeout)
    raise ValueError(f"{what} must be a number of seconds >= 0 or None, not {timeout!r}")


def checked_wait_for(timeout: float | None) -> float | None:
    """How long `wait()` or `result()` waits: a number of seconds, or None for as long as it takes
    (0 or less: only look, as threading's waits take it; `math.inf`: None)."""
    if timeout is None or _seconds(timeout):
        return _no_limit(timeout)
    raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__} {timeout!r}")


def check_client(target: Any, log: Any) -> None:
    """`Client(target, log=)`: an address, and a path or a sink with `append()` (a StateLog)."""
    if not isinstance(target, str):
        raise TypeError(f"target must be a str like '127.0.0.1:50051', not {type(target).__name__}")
    if log is not None and not isinstance(log, (str, Path)) and not callable(getattr(log, "append", None)):
        raise TypeError(f"log must be a path, a StateLog or None, not {type(log).__name__}")


def check_call(script: Any, script_types: tuple[type, ...], *, payload: Any = b"", call_id: Any = None,
               queue: Any = None, on_complete: Any = None) -> None:
    """`prepare()`'s and `pipe()`'s arguments, before the call is made (and logged)."""
    if script is not None and not isinstance(script, script_types):
        names = " or ".join(t.DESCRIPTOR.full_name if hasattr(t, "DESCRIPTOR") else t.__name__ for t in script_types)
        raise TypeError(f"script must be a {names} or None, not {type(script).__name__}")
    if not isinstance(payload, bytes):
        raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
    if call_id is not None and not isinstance(call_id, str):
        raise TypeError(f"call_id must be a str or None, not {type(call_id).__name__}")
    if queue is not None and not callable(getattr(queue, "post", None)):
        raise TypeError(f"queue must be a completion queue (with post(call)), not {type(queue).__name__}")
    if on_complete is not None and not callable(on_complete):
        raise TypeError(f"on_complete must be callable, not {type(on_complete).__name__}")
