"""Ctrl-C and SIGTERM during `callstate call`: the caller's abortive cancel of its call or pipe."""

from __future__ import annotations

import asyncio
import signal
from typing import Any, Callable

from callstate.lifecycle import C, CAN, COMP, END


def cancel_if_pending(call: Any, abortive: bool = True, timeout: float | None = None) -> None:
    """Cancel the command's call or pipe unless it is notified, cancelled a moment ago (by a
    signal, say) or completed: a second cancel of the command's own would be a second Can."""
    if not call.done() and call.state not in (CAN, COMP, END):
        call.cancel(abortive=abortive, timeout=timeout)


class CancelOnSignals:
    """From its making on, Ctrl-C or SIGTERM runs `cancel(call)` (the command's abortive cancel,
    after which it still waits for the call and completes it). Made before the call starts, so
    no signal finds the default handlers once the call is on its way (they ended the command
    with 130, or killed it); one that comes while the call is still in C is kept (`caught`)
    and applied by `started()`, which the command runs once it has started the call."""

    def __init__(self, call: Any, cancel: Callable[[Any], None] = cancel_if_pending) -> None:
        self.call, self.cancel = call, cancel
        self.caught: list[int] = []
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, signum: int) -> None:
        if self.call.state == C:
            self.caught.append(signum)
        else:
            self.cancel(self.call)

    def started(self) -> None:
        if self.caught:
            self.cancel(self.call)
