"""Whether this thread is one of gRPC's, running a sync call's done-callback (and the caller's
callbacks from it): closing the channel there would wait for gRPC to cancel the calls still in
flight on this very thread, which never returns to do it. `Client.close()` asks."""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, TypeVar

_here = threading.local()
F = TypeVar("F", bound=Callable[..., Any])


def runs_on_grpc_thread(on_done: F) -> F:
    """Mark a done-callback gRPC calls on its own thread."""
    @functools.wraps(on_done)
    def marked(*args: Any) -> Any:
        _here.active = True
        try:
            return on_done(*args)
        finally:
            _here.active = False
    return marked  # type: ignore[return-value]


def on_grpc_thread() -> bool:
    return getattr(_here, "active", False)
