"""Drive one asynchronous pipe to its end from a plan: push N messages (in, both), pull all
of the server's (out, both), cancel at a point counted in messages; shared by `callstate call
--pipe` and `callstate load`'s pipe share."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from callstate.client.pipe_aio import AsyncPipe
from callstate.errors import CallError
from callstate.lifecycle import PIPE_IN, PIPE_OUT, PUSH, LifecycleError
from callstate.pipe_script import (CANCEL_AFTER_HALF_CLOSE, CANCEL_AFTER_HEADERS, CANCEL_AFTER_RECEIVED,
                                   CANCEL_AFTER_SENT, CANCEL_BEFORE_START, PipeCancelPoint)


async def drive_pipe(pipe: AsyncPipe, *, messages: int, message_bytes: int = 0, interval: float = 0.0,
                     cancel_at: PipeCancelPoint | None = None, abortive: bool = True,
                     escalate_after: float | None = None, half_close: bool = True, on_started: Callable[[AsyncPipe], None] | None = None) -> Any:
    """Run the pipe call; returns `pipe.result()` (the PipeReply of an in pipe, else None) or
    raises its CallError. `interval` paces the caller's pushes (part of the scenario);
    `half_close=False` keeps the caller's pipe open after its pushes (no null push)."""
    point = cancel_at.kind if cancel_at is not None else None

    def cancel() -> None:
        if not pipe.done():
            try:
                pipe.cancel(abortive=abortive, timeout=escalate_after if not abortive else None)
            except (CallError, LifecycleError):
                pass   # the call ended meanwhile

    if point == CANCEL_BEFORE_START:
        cancel()
        return await pipe.result()
    pipe.start()
    if on_started is not None:
        on_started(pipe)
    if point == CANCEL_AFTER_HEADERS:
        await pipe.headers()
        cancel()

    async def push_all() -> None:
        payload = bytes(message_bytes)
        for _ in range(messages):
            if pipe.state != PUSH or pipe.done():
                return
            try:
                await pipe.push(payload)
            except CallError:
                return   # the call ended under the push: its status says how
            if point == CANCEL_AFTER_SENT and pipe.sent == cancel_at.count:  # type: ignore[union-attr]
                cancel()
                return
            if interval:
                await asyncio.sleep(interval)
        if half_close and pipe.state == PUSH and not pipe.done():
            await pipe.close_push()
            if point == CANCEL_AFTER_HALF_CLOSE:
                cancel()

    async def pull_all() -> None:
        while await pipe.pull() is not None:
            if point == CANCEL_AFTER_RECEIVED and pipe.received == cancel_at.count:  # type: ignore[union-attr]
                cancel()
                return

    if pipe.kind == PIPE_IN:
        await push_all()
    elif pipe.kind == PIPE_OUT:
        await pull_all()
    else:
        await asyncio.gather(push_all(), pull_all())
    return await pipe.result()
