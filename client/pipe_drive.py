"""Drive one asynchronous pipe to its end from a plan: push N messages (in, both), pull all
of the server's (out, both), cancel at a point counted in messages. `drive_pipe` on the event
loop (`callstate call --pipe`, `callstate load`'s pipe share), `drive_pipe_sync` its twin on a
sync `Pipe` (the Locust user); when to cancel is decided once, by `cancel_due`."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

from callstate.client.pipe_aio import AsyncPipe
from callstate.client.pipe_sync import Pipe
from callstate.errors import CallError
from callstate.lifecycle import PIPE_IN, PIPE_OUT, PUSH, LifecycleError
from callstate.cancel_points import AFTER_HALF_CLOSE as CANCEL_AFTER_HALF_CLOSE
from callstate.cancel_points import AFTER_HEADERS as CANCEL_AFTER_HEADERS
from callstate.cancel_points import AFTER_RECEIVED as CANCEL_AFTER_RECEIVED
from callstate.cancel_points import AFTER_SENT as CANCEL_AFTER_SENT
from callstate.cancel_points import BEFORE_START as CANCEL_BEFORE_START
from callstate.pipe_script import PipeCancelPoint

_COUNTED = (CANCEL_AFTER_SENT, CANCEL_AFTER_RECEIVED)


def cancel_due(cancel_at: PipeCancelPoint | None, reached: str, count: int = 0) -> bool:
    """Whether the caller cancels on reaching point `reached`; for the counted points, `count`
    is the messages pushed (after-sent) or pulled (after-received) so far."""
    if cancel_at is None or cancel_at.kind != reached:
        return False
    return reached not in _COUNTED or count == cancel_at.count


class _Canceller:
    """The caller's cancel of one pipe, at its plan's point (both drivers use it)."""

    def __init__(self, pipe: AsyncPipe | Pipe, cancel_at: PipeCancelPoint | None, abortive: bool,
                 escalate_after: float | None) -> None:
        self.pipe, self.cancel_at, self.abortive, self.escalate_after = pipe, cancel_at, abortive, escalate_after

    def due(self, reached: str, count: int = 0) -> bool:
        return cancel_due(self.cancel_at, reached, count)

    def now(self) -> None:
        """RpcAsyncCancelCall unless the call has ended (a non-abortive cancel escalates)."""
        if not self.pipe.done():
            try:
                self.pipe.cancel(abortive=self.abortive, timeout=None if self.abortive else self.escalate_after)
            except (CallError, LifecycleError):
                pass   # the call ended meanwhile

    def at(self, reached: str, count: int = 0) -> bool:
        """Cancel if the plan's point is `reached` (with `count` messages); whether it was."""
        due = self.due(reached, count)
        if due:
            self.now()
        return due


async def drive_pipe(pipe: AsyncPipe, *, messages: int, message_bytes: int = 0, interval: float = 0.0,
                     cancel_at: PipeCancelPoint | None = None, abortive: bool = True,
                     escalate_after: float | None = None, half_close: bool = True, on_started: Callable[[AsyncPipe], None] | None = None,
                     payload: Any = None, on_message: Callable[[Any], None] | None = None) -> Any:
    """Run the pipe call; returns `pipe.result()` (the PipeReply of an in pipe, else None) or
    raises its CallError. `interval` paces the caller's pushes (part of the scenario);
    `half_close=False` keeps the caller's pipe open after its pushes (no null push). `payload`:
    what each push sends (default: `message_bytes` zero bytes; on a user's method, its request).
    `on_message`: told each message pulled, as it comes (what `callstate call --method` prints)."""

    cancel = _Canceller(pipe, cancel_at, abortive, escalate_after)

    if cancel.at(CANCEL_BEFORE_START):
        return await pipe.result()
    pipe.start()
    if on_started is not None:
        on_started(pipe)
    on_headers: asyncio.Future[None] | None = None
    if cancel.due(CANCEL_AFTER_HEADERS):
        if pipe.method is None:   # callstate sends its headers at dispatch
            await pipe.headers()
            cancel.now()
        else:   # a user's server may send them only with its first message or its reply: go on meanwhile
            on_headers = asyncio.ensure_future(_cancel_on_headers(pipe, cancel))

    ended = asyncio.get_running_loop().create_future()   # the notification: no more pacing
    if interval:
        pipe.on_notification(lambda _: ended.done() or ended.set_result(None))

    async def push_all() -> None:
        message = bytes(message_bytes) if payload is None else payload
        for _ in range(messages):
            if pipe.state != PUSH or pipe.done():
                return
            try:
                await pipe.push(message)
            except CallError:
                return   # the call ended under the push: its status says how
            if cancel.at(CANCEL_AFTER_SENT, pipe.sent):
                return
            if interval:   # a cancel (Ctrl-C) or the server's end cuts the wait short
                await asyncio.wait((ended,), timeout=interval)
        if half_close and pipe.state == PUSH and not pipe.done():
            try:
                await pipe.close_push()
            except CallError:
                return   # the call ended (or was cancelled) first: its status says how
            cancel.at(CANCEL_AFTER_HALF_CLOSE)

    async def pull_all() -> None:
        while (message := await pipe.pull()) is not None:
            if on_message is not None:
                on_message(message)
            if cancel.at(CANCEL_AFTER_RECEIVED, pipe.received):
                return

    try:
        if pipe.kind == PIPE_IN:
            await push_all()
        elif pipe.kind == PIPE_OUT:
            await pull_all()
        else:
            await asyncio.gather(push_all(), pull_all())
        return await pipe.result()
    finally:
        if on_headers is not None:
            on_headers.cancel()


async def _cancel_on_headers(pipe: AsyncPipe, cancel: _Canceller) -> None:
    await pipe.headers()
    cancel.now()


def drive_pipe_sync(pipe: Pipe, *, messages: int, message_bytes: int = 0, interval: float = 0.0,
                    cancel_at: PipeCancelPoint | None = None, abortive: bool = True,
                    escalate_after: float | None = None, half_close: bool = True, payload: Any = None,
                    on_message: Callable[[Any], None] | None = None) -> Any:
    """`drive_pipe` on a sync `Pipe`, blocking: the same moves at the same points (`on_message`
    is told each message pulled, on the thread that pulls it). A `both`
    pipe pulls on a helper thread while the caller pushes (a greenlet under gevent, where the
    threading module is patched). An exception out of the pushes (a greenlet's kill) leaves
    the pipe to the caller, who cancels it, which ends the pulls."""

    cancel = _Canceller(pipe, cancel_at, abortive, escalate_after)

    if cancel.at(CANCEL_BEFORE_START):
        return pipe.result()
    pipe.start()
    if cancel.due(CANCEL_AFTER_HEADERS):
        if pipe.method is None:   # callstate sends its headers at dispatch
            pipe.headers()
            cancel.now()
        else:   # a user's server may send them late (see drive_pipe): a helper thread waits for them
            threading.Thread(target=lambda: (pipe.headers(), cancel.now()), name="callstate-pipe-headers",
                             daemon=True).start()

    ended = threading.Event()   # the notification: no more pacing
    if interval:
        pipe.on_notification(lambda _: ended.set())

    def push_all() -> None:
        message = bytes(message_bytes) if payload is None else payload
        for _ in range(messages):
            if pipe.state != PUSH or pipe.done():
                return
            try:
                pipe.push(message)
            except CallError:
                return   # the call ended under the push: its status says how
            if cancel.at(CANCEL_AFTER_SENT, pipe.sent):
                return
            if interval:   # a cancel (from another thread) or the server's end cuts the wait short
                ended.wait(interval)
        if half_close and pipe.state == PUSH and not pipe.done():
            try:
                pipe.close_push()
            except CallError:
                return   # a cancel from the pulling thread moved the pipe out of Push first
            cancel.at(CANCEL_AFTER_HALF_CLOSE)

    def pull_all() -> None:
        try:
            while (message := pipe.pull()) is not None:
                if on_message is not None:
                    on_message(message)
                if cancel.at(CANCEL_AFTER_RECEIVED, pipe.received):
                    return
        except CallError:
            return   # the call ended under the pull (the caller's own cancel on a kill): its status says how

    if pipe.kind == PIPE_IN:
        push_all()
    elif pipe.kind == PIPE_OUT:
        pull_all()
    else:
        puller = threading.Thread(target=pull_all, name="callstate-pipe-pull", daemon=True)
        puller.start()
        push_all()
        puller.join()
    return pipe.result()
