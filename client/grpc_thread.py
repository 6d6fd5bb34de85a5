"""Whether this thread is a client's gRPC thread, running one of its sync calls' done-callbacks
(and the caller's callbacks from it). That thread delivers the client's notifications, so two
things cannot be done there: close the client (closing the channel waits for this thread to
cancel the calls in flight) and block waiting for another of its calls (the notification waited
for would come from this thread). `Client.close()` and the sync `wait()`s ask."""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Callable, TypeVar

from callstate import codes
from callstate.errors import CallError

_here = threading.local()
_LOG = logging.getLogger("callstate.client")
F = TypeVar("F", bound=Callable[..., Any])


def runs_on_grpc_thread(on_done: F) -> F:
    """Mark a call's done-callback, which gRPC runs on its client's thread. Nothing it raises may
    reach gRPC: a BaseException from a caller's callback (pytest.fail() in a harness,
    KeyboardInterrupt) ended the channel's polling thread, and every later call of the client
    then waited for ever for its notification. It is logged instead."""
    @functools.wraps(on_done)
    def marked(call: Any, *args: Any) -> Any:
        _here.owner = call._client
        try:
            return on_done(call, *args)
        except BaseException:
            _LOG.exception("callstate: a done-callback of call %s raised on gRPC's thread", call.call_id)
            return None
        finally:
            _here.owner = None
    return marked  # type: ignore[return-value]


def on_a_thread_of_their_own(run: Callable[[], None]) -> None:
    """How a sync call runs the callbacks of a notification given in the caller's own verb when no
    gRPC thread will (a cancel before start, an outcome that beat start(), the end of a pipe the
    caller pulled): on a thread of their own, as gRPC's thread would run them, never on the verb's
    stack (call_core.py, `_off_the_verb`). Those are rare moments; a rushed cancel's callbacks run on
    gRPC's thread, in the cancelled RPC's done-callback, with no thread started."""
    threading.Thread(target=run, name="callstate-callbacks", daemon=True).start()


def on_grpc_thread_of(client: Any) -> bool:
    return getattr(_here, "owner", None) is client


def check_wait(call: Any, timeout: float | None, what: str = "wait") -> None:
    """CallError 1915 for a blocking wait (`what`: wait, or a pipe's headers), in a done-callback,
    on a call of the same client not yet notified: the wait would run out (or never end), what it
    waits for held up behind it."""
    if (timeout is None or timeout > 0) and not call.notified and on_grpc_thread_of(call._client):
        raise CallError(codes.RPC_S_INVALID_ASYNC_CALL, call.call_id,
                        details=f"{what}() in a done-callback of the same client: gRPC's thread, which runs the "
                                f"callback, delivers the {'notification' if what == 'wait' else what} waited for; "
                                "wait on another thread, or take the call from a CompletionQueue")
