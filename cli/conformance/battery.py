"""The conformance battery on one path (direct or through a proxy): how its calls are made and
waited for, and the order of its rows (replies, cancels, pipes and endings hold them).

Each scenario makes its calls sequentially, then again at `concurrency`, and judges them
from both sides: the client's entries (recorded in memory) and the server's (its journal,
read from the server directly). Every wait is bounded by `BatteryConfig.wait`, so a
middlebox that drops a cancel fails its row instead of hanging the run.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any, Awaitable, Callable

from callstate import codes
from callstate.cli.conformance import cancels
from callstate.cli.conformance import endings
from callstate.cli.conformance import pipes
from callstate.cli.conformance import replies
from callstate.cli.conformance.calls import BatteryConfig, Recorder, Result, complete_late, open_channel, open_client
from callstate.cli.conformance.journal import ServerJournal, dispatched, ended
from callstate.cli.conformance.properties import (ABORT_AFTER_HEADERS, ABORT_TRAILERS_ONLY, CANCEL_ABORTIVE,
                                                  CANCEL_NON_ABORTIVE, COMPLETE_LARGE, COMPLETE_SMALL, DEADLINE, FATAL,
                                                  LARGE_METADATA, MANY_STREAMS, PIPE_ABORT_MID_STREAM,
                                                  PIPE_BOTH_FULL_DUPLEX, PIPE_CANCEL, PIPE_EARLY_ANSWER,
                                                  PIPE_IN_HALF_CLOSE, PIPE_OUT_STREAMED, UNIMPLEMENTED, Row)
from callstate.client import AsyncCall, AsyncClient, AsyncPipe, CallError, PipeScript, Script, WaitTimedOut

__all__ = ["Battery", "BatteryConfig", "open_channel", "open_client"]


async def completed(call: AsyncCall, timeout: float, t0: float) -> Result | None:
    """The call's outcome once its notification has come within `timeout` (the call completed:
    its End logged), None while it is pending. A wait that runs out as the notification lands
    still completes the call: `result(timeout=0)` on a call whose gRPC outcome is already in
    starts the task that reads it and gives up before that task has run, the call notified just
    after. Through a stalled proxy every call that never reached the server was so left without
    its End (the check row's `not_ended`, "client stopped in WComp"), its result the wait's 1460."""
    try:
        reply = await call.result(timeout=timeout)
        return Result(call.call_id, codes.RPC_S_OK, "OK", reply=reply, ms=(time.perf_counter() - t0) * 1000)
    except WaitTimedOut:
        if not call.done():
            return None
        return await completed(call, 0, t0)   # notified meanwhile: completes at once
    except CallError as err:
        return Result(call.call_id, err.code, err.grpc_status, err.details, ms=(time.perf_counter() - t0) * 1000)


class Battery:
    """The battery on one path: `target` is where the calls go; `journal` reads the server."""

    def __init__(self, label: str, target: str, journal: ServerJournal, cfg: BatteryConfig) -> None:
        self.label, self.target, self.journal, self.cfg = label, target, journal, cfg
        self.recorder = Recorder()
        self.client = open_client(target, self.recorder)
        self.channel = open_channel(target)
        self.judged: dict[str, str] = {}   # the calls the check row covers -> the property that made them
        self._held: asyncio.Task[Row] | None = None

    async def close(self) -> None:
        await self.client.close()
        await self.channel.close()

    # -- driving ---------------------------------------------------------------------------
    def prepare(self, prop: str, client: AsyncClient, script: Script, payload: bytes = b"") -> AsyncCall:
        call = client.prepare(script, payload=payload)
        self.journal.watch(call.call_id)
        self.judged[call.call_id] = prop
        return call

    def pipe(self, prop: str, kind: str, script: PipeScript) -> AsyncPipe:
        """A pipe call on the battery's client, judged by the check row like `prepare`'s."""
        pipe: AsyncPipe = self.client.pipe(kind, script)
        self.journal.watch(pipe.call_id)
        self.judged[pipe.call_id] = prop
        return pipe

    async def finish(self, call: AsyncCall, bound: float, ends: bool = False) -> Result:
        """The call's outcome, or `hung` when no notification came within `bound` (then the
        call is cancelled abortively, so it still ends). `ends`: the server ends the call by
        its script, so a slow server is told from a lost answer by its journal: past `bound`,
        the call is hung only once the server has ended it and --wait more has passed. Every
        call is completed, so its End is in the client's log for the check row; one whose
        notification comes only after the last wait is completed when it comes."""
        t0 = time.perf_counter()
        outcome = await completed(call, bound, t0)
        if outcome is None and ends and await self.journal.wait((call.call_id,), ended, self.cfg.wait):
            bound += self.cfg.wait
            outcome = await completed(call, self.cfg.wait, t0)
        if outcome is not None:
            return outcome
        call.cancel()
        if await completed(call, self.cfg.wait, t0) is None:
            call.add_done_callback(complete_late)
        return Result(call.call_id, None, ms=(time.perf_counter() - t0) * 1000, bound=bound)

    async def twice(self, one: Callable[[int], Awaitable[Any]], n: int | None = None) -> list[Any]:
        """`n` calls one after the other, then `n` at the configured concurrency."""
        n = self.cfg.calls if n is None else n
        out = [await one(i) for i in range(n)]
        gate = asyncio.Semaphore(self.cfg.concurrency)

        async def gated(i: int) -> Any:
            async with gate:
                return await one(i)
        return out + list(await asyncio.gather(*(gated(n + i) for i in range(n))))

    async def until_dispatched(self, call: AsyncCall) -> bool:
        return await self.journal.wait((call.call_id,), dispatched, self.cfg.wait)

    # -- the rows ----------------------------------------------------------------------------
    def steps(self) -> list[tuple[str, Callable[[], Awaitable[Row]]]]:
        """Every row but the ones judged at the end (held, check, graceful-stop), in order, by property."""
        cfg = self.cfg
        return [(COMPLETE_SMALL, partial(replies.complete, self, COMPLETE_SMALL, cfg.small_bytes, cfg.calls)),
                (COMPLETE_LARGE, partial(replies.complete, self, COMPLETE_LARGE, cfg.max_bytes, cfg.large_calls)),
                (ABORT_TRAILERS_ONLY, partial(replies.abort, self, ABORT_TRAILERS_ONLY, headers_first=False)),
                (ABORT_AFTER_HEADERS, partial(replies.abort, self, ABORT_AFTER_HEADERS, headers_first=True)),
                *((prop, partial(row, self)) for prop, row in (
                    (FATAL, replies.fatal), (UNIMPLEMENTED, replies.unimplemented),
                    (CANCEL_ABORTIVE, cancels.cancel_abortive), (CANCEL_NON_ABORTIVE, cancels.cancel_non_abortive),
                    (DEADLINE, cancels.deadline), (MANY_STREAMS, replies.many_streams),
                    (LARGE_METADATA, replies.large_metadata), (PIPE_OUT_STREAMED, pipes.out_streamed),
                    (PIPE_IN_HALF_CLOSE, pipes.in_half_close), (PIPE_EARLY_ANSWER, pipes.early_answer),
                    (PIPE_BOTH_FULL_DUPLEX, pipes.both_full_duplex), (PIPE_ABORT_MID_STREAM, pipes.abort_mid_stream),
                    (PIPE_CANCEL, pipes.cancel)))]

    # -- held calls run in the background while the other rows run -------------------------------
    def start_held(self) -> None:
        async def timed() -> Row:
            t0 = time.perf_counter()
            row = await endings.held(self)
            row.seconds = time.perf_counter() - t0
            return row
        self._held = asyncio.ensure_future(timed())

    async def held_row(self) -> Row:
        assert self._held is not None
        return await self._held

    async def check_row(self) -> Row:
        return await endings.check_row(self)

    async def graceful_stop(self, stop_server: Callable[[], Awaitable[None]] | None) -> Row:
        """Only when conformance runs the server (`stop_server`); skipped otherwise."""
        return await endings.graceful_stop(self, stop_server)
