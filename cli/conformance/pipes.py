"""Rows about asynchronous pipes (gRPC streams) crossing the proxy: an out pipe streamed as the
server paces it, an in pipe's half-close, an in pipe and a bidi pipe answered before the caller
half-closes,
an abort after messages, and abortive cancels of held pipes mid-stream.

Every pipe is driven within a bound (`drive`): a proxy that buffers a stream or waits for the
end of the request stream fails its row after --wait instead of hanging the run.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from callstate import codes
from callstate.cli.conformance.calls import Result, code_failure, complete_late, examples
from callstate.cli.conformance.cancels import judge_propagation
from callstate.cli.conformance.journal import cancel_seen_at, dispatched, ended, final, first
from callstate.cli.conformance.properties import (PIPE_ABORT_MID_STREAM, PIPE_BOTH_FULL_DUPLEX, PIPE_CANCEL,
                                                  PIPE_EARLY_ANSWER, PIPE_IN_HALF_CLOSE, PIPE_OUT_STREAMED, Row)
from callstate.client import AsyncPipe, CallError, PipeScript
from callstate.lifecycle import ABORT, COMP, COMPLETE, ENTER, NP, NULL_PULL, PIPE_BOTH, PIPE_IN, PIPE_OUT
from callstate.script import HOLD

if TYPE_CHECKING:
    from callstate.cli.conformance.battery import Battery

MESSAGES = 4              # per pipe: small, the rows test the shape of a stream, not its volume
INTERVAL = 0.02           # s between the streamed row's messages: 60 ms from the first to the last
MESSAGE_BYTES = 16        # the in pipe's pushes
CANCEL_AFTER = 3          # pipe-cancel: messages pulled before the cancel
EARLY_AFTER = 2           # pipe-early-answer: the server completes after this many messages
HELD_INTERVAL = 0.01      # s between a held pipe's messages (the server's default is 0.1)


@dataclass
class Pulled:
    """What the caller pulled: each message's seq and when it arrived (perf_counter seconds)."""

    seqs: list[int] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)

    async def take(self, pipe: AsyncPipe, n: int | None = None) -> None:
        """Pull `n` messages, or (None) up to the end of the server's pipe; fewer when it ends first."""
        while n is None or len(self.seqs) < n:
            msg = await pipe.pull()
            if msg is None:
                return
            self.seqs.append(msg.seq)
            self.arrivals.append(time.perf_counter())

    def in_order(self, n: int) -> bool:
        return self.seqs == list(range(1, n + 1))


@dataclass
class PipeResult(Result):
    pipe_reply: Any = None    # an in pipe's PipeReply


async def drive(b: Battery, pipe: AsyncPipe, steps: Callable[[AsyncPipe], Awaitable[None]],
                bound: float) -> PipeResult:
    """Start `pipe`, run `steps` (pushes, pulls), then wait for its notification and complete it,
    all within `bound` seconds. Past it the pipe is cancelled abortively, so it still ends, and
    the result is `hung`."""
    t0 = time.perf_counter()

    async def run() -> Any:
        try:
            await steps(pipe.start())
        except CallError:
            pass   # a push on a call that has ended: its status says how
        return await pipe.result()
    task = asyncio.ensure_future(run())
    await asyncio.wait((task,), timeout=bound)
    if task.done():
        ms = (time.perf_counter() - t0) * 1000
        try:
            return PipeResult(pipe.call_id, codes.RPC_S_OK, "OK", pipe_reply=task.result(), ms=ms)
        except CallError as err:
            return PipeResult(pipe.call_id, err.code, err.grpc_status, err.details, ms=ms)
    return await _abandon(b, pipe, task, t0, bound)


async def _abandon(b: Battery, pipe: AsyncPipe, task: asyncio.Future[Any] | None, t0: float,
                   bound: float) -> PipeResult:
    """A pipe with no notification within `bound`: cancelled abortively, so it still ends; hung.
    Completed as soon as its notification is in (now, or when it comes), unless its task did:
    its End is in the client's log, as the check row expects of every call."""
    try:
        pipe.cancel()
    except CallError:
        pass
    if task is not None:
        await asyncio.wait((task,), timeout=b.cfg.wait)
        task.cancel()   # a task cancelled in pipe.result() leaves the pipe uncompleted
        await asyncio.gather(task, return_exceptions=True)
    else:
        await pipe.wait(b.cfg.wait)
    pipe.add_done_callback(complete_late)
    return PipeResult(pipe.call_id, None, ms=(time.perf_counter() - t0) * 1000, bound=bound)


async def out_streamed(b: Battery) -> Row:
    """Held out pipes the server paces INTERVAL apart and never ends on its own: the caller must
    pull MESSAGES of them, in order, while the stream is still open, then its cancel notice has
    the server complete with 0. Causal, not timed: a proxy that holds a response stream until its
    end delivers nothing while it is open, however fast or loaded the machine is."""
    script = PipeScript(outcome=HOLD, interval=INTERVAL, on_cancel=COMPLETE)

    async def one(i: int) -> str:
        pulled = Pulled()

        async def pull_then_notice(pipe: AsyncPipe) -> None:
            await pulled.take(pipe, MESSAGES)
            if len(pulled.seqs) == MESSAGES:
                pipe.cancel(abortive=False, timeout=b.cfg.wait)   # unanswered: escalates, and the row fails
        pipe = b.pipe(PIPE_OUT_STREAMED, PIPE_OUT, script)
        r = await drive(b, pipe, pull_then_notice, b.cfg.wait)
        if not pulled.seqs:
            dispatched_ = await b.until_dispatched(pipe)
            if r.hung and dispatched_:
                return (f"no message within {b.cfg.wait:g} s while the server streamed and its stream stayed "
                        "open: buffered, not streamed")
            return r.describe() if dispatched_ else f"{r.describe()}, never reached the server"
        if not pulled.in_order(len(pulled.seqs)) or len(pulled.seqs) < MESSAGES:
            return f"messages {pulled.seqs} instead of 1..{MESSAGES}"
        if r.code != codes.RPC_S_OK:
            return await _not_ok(b, r)
        return ""
    results = await b.twice(one)
    bad = [why for why in results if why]
    return Row(PIPE_OUT_STREAMED, not bad, f"{len(results) - len(bad)}/{len(results)} streamed in order while "
               "open, then 0", examples(bad),
               {"calls": len(results), "failed": len(bad), "messages": MESSAGES, "interval_ms": INTERVAL * 1000})


async def in_half_close(b: Battery) -> Row:
    """In pipes of MESSAGES pushes and the null push: the server counts them all, its journal
    shows the null push (null_pull into NP) after the last one, then Comp; 0 at the client."""
    async def push_all(pipe: AsyncPipe) -> None:
        for _ in range(MESSAGES):
            await pipe.push(os.urandom(MESSAGE_BYTES))
        await pipe.close_push()

    async def one(i: int) -> str:
        pipe = b.pipe(PIPE_IN_HALF_CLOSE, PIPE_IN, PipeScript())
        r = await drive(b, pipe, push_all, b.cfg.wait)
        if r.code != codes.RPC_S_OK:
            return await _not_ok(b, r)
        if r.pipe_reply.received != MESSAGES or r.pipe_reply.received_bytes != MESSAGES * MESSAGE_BYTES:
            return f"the server counted {r.pipe_reply.received} of {MESSAGES} messages"
        await b.journal.wait((pipe.call_id,), ended, b.cfg.wait)   # the journal may trail the reply
        entries = b.journal.entries(pipe.call_id)
        np, comp = first(entries, ENTER, NP), first(entries, ENTER, COMP)
        if np is None or np.get("move") != NULL_PULL:
            return "the server's journal has no null push (null_pull into NP)"
        if np.get("received") != MESSAGES:
            return f"the null push arrived after {np.get('received')} of {MESSAGES} messages"
        if comp is None or entries.index(comp) < entries.index(np):
            return "the server did not complete after the null push"
        return ""
    results = await b.twice(one)
    bad = [r for r in results if r]
    return Row(PIPE_IN_HALF_CLOSE, not bad, f"{len(results) - len(bad)}/{len(results)} counted {MESSAGES} + "
               "null push", examples(bad), {"calls": len(results), "failed": len(bad), "messages": MESSAGES})


async def _not_ok(b: Battery, r: PipeResult) -> str:
    """Why a pipe the server completed did not end 0 at the client; names a lost answer."""
    await b.journal.wait((r.call_id,), ended, b.cfg.wait)
    end = final(b.journal.entries(r.call_id))
    if end is not None and end.get("code") == codes.RPC_S_OK:   # the server answered: the proxy lost it
        return f"{r.describe()} at the client, 0 at the server: the proxy lost the answer"
    return r.describe()


async def early_answer(b: Battery) -> Row:
    """In pipes the server completes after the caller's EARLY_AFTER-th message, while the caller
    has not half-closed: gRPC lets a server answer before the request ends, and its PipeReply
    must reach the caller. Two ways a proxy gets this wrong, told apart by the server's journal
    and a half-close made only once the answer is overdue: it resets the caller's stream when
    the answer is complete before the request (RST_STREAM CANCEL: 1818), or it holds the answer
    until the caller half-closes (the answer arrives only after the half-close)."""
    script = PipeScript(outcome=COMPLETE, at="after-in", at_count=EARLY_AFTER)

    async def push_some(pipe: AsyncPipe) -> None:
        for _ in range(EARLY_AFTER):
            await pipe.push(os.urandom(MESSAGE_BYTES))   # and no close_push: the answer comes first

    async def one(i: int) -> str:
        r, why = await _answered_while_open(b, b.pipe(PIPE_EARLY_ANSWER, PIPE_IN, script), push_some)
        if r is None:
            return why
        if r.code != codes.RPC_S_OK:
            lost = await _not_ok(b, r)
            return lost + (" (reset when the answer came before the request's end)" if r.reset else "")
        if r.pipe_reply is None or r.pipe_reply.received != EARLY_AFTER:
            return f"the reply counts {getattr(r.pipe_reply, 'received', None)} of {EARLY_AFTER} messages"
        return ""
    results = await b.twice(one)
    bad = [r for r in results if r]
    return Row(PIPE_EARLY_ANSWER, not bad, f"{len(results) - len(bad)}/{len(results)} answers before the "
               "half-close delivered", examples(bad), {"calls": len(results), "failed": len(bad)})


async def _answered_while_open(b: Battery, pipe: AsyncPipe,
                                steps: Callable[[AsyncPipe], Awaitable[None]]) -> tuple[PipeResult | None, str]:
    """Start `pipe`, run `steps` (pushes, no half-close) and wait for its answer while the
    caller's pipe stays open: (the result, "") when it came. When it did not come within --wait,
    (None, what happened), told apart by the server's journal and a half-close made only once
    the answer is overdue: held until the half-close (the server had answered), half-duplex (the
    server got nothing before the half-close), or no answer at all."""
    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(steps(pipe.start()), b.cfg.wait)
    except (CallError, asyncio.TimeoutError):
        pass   # the call ended or stalled: its notification (or none) says how
    if await pipe.wait(b.cfg.wait):
        return await _pipe_result(pipe, t0), ""
    if dispatched(b.journal.entries(pipe.call_id)):   # had the server answered? (its journal may trail)
        await b.journal.wait((pipe.call_id,), ended, b.cfg.wait)
    end = final(b.journal.entries(pipe.call_id))
    try:
        await pipe.close_push()   # does a half-close release the answer?
    except CallError:
        pass   # its outcome came in meanwhile: the caller's pipe can no longer be closed
    if not await pipe.wait(b.cfg.wait):
        hung = await _abandon(b, pipe, None, t0, b.cfg.wait)
        return None, f"{hung.describe()} while the caller's pipe stayed open, nor after its half-close"
    r = await _pipe_result(pipe, t0)
    if end is None:
        return None, ("the server got the call only after the caller's half-close: the proxy holds the request "
                      "stream until its end (half-duplex)")
    # the call's own code is left out: the same failure on every call reads as one, with its count
    return None, (f"answer delayed until the half-close: the server had answered within {b.cfg.wait:g} s, "
                  f"the caller got the answer ({'its code' if r.code == end.get('code') else r.describe()}) "
                  "only after half-closing")


async def _pipe_result(pipe: AsyncPipe, t0: float) -> PipeResult:
    """The outcome of a pipe whose notification has come."""
    ms = (time.perf_counter() - t0) * 1000
    try:
        return PipeResult(pipe.call_id, codes.RPC_S_OK, "OK", pipe_reply=await pipe.result(0), ms=ms)
    except CallError as err:
        return PipeResult(pipe.call_id, err.code, err.grpc_status, err.details, ms=ms)


async def both_full_duplex(b: Battery) -> Row:
    """Bidi pipes whose server aborts with a per-call code once the caller's first message is in;
    the caller never half-closes. A proxy that waits for the end of the request stream before
    forwarding, or holds the answer until it, leaves the caller waiting: the row fails after
    --wait and says which."""
    async def push_one(pipe: AsyncPipe) -> None:
        await pipe.push(b"first")   # and no close_push: the answer must come while the pipe is open

    async def one(i: int) -> str:
        code = 7000 + i % 1000   # a different code per call: a code that reaches the wrong call shows
        script = PipeScript(messages=0, outcome=ABORT, at="after-in", at_count=1, abort_code=code)
        r, why = await _answered_while_open(b, b.pipe(PIPE_BOTH_FULL_DUPLEX, PIPE_BOTH, script), push_one)
        return why if r is None else code_failure(r, code, 7000)
    results = await b.twice(one)
    bad = [r for r in results if r]
    return Row(PIPE_BOTH_FULL_DUPLEX, not bad, f"{len(results) - len(bad)}/{len(results)} answered before the "
               "half-close", examples(bad), {"calls": len(results), "failed": len(bad)})


async def abort_mid_stream(b: Battery) -> Row:
    """Out pipes aborted with a per-call code after MESSAGES messages: the messages, then the code."""
    async def one(i: int) -> str:
        code = 8000 + i % 1000
        script = PipeScript(messages=MESSAGES, outcome=ABORT, at="after-out", at_count=MESSAGES, abort_code=code)
        pulled = Pulled()
        r = await drive(b, b.pipe(PIPE_ABORT_MID_STREAM, PIPE_OUT, script), pulled.take, b.cfg.wait)
        if r.code != code:
            return code_failure(r, code, 8000)
        if not pulled.in_order(MESSAGES):
            return f"messages {pulled.seqs} before the code instead of 1..{MESSAGES}"
        return ""
    results = await b.twice(one)
    bad = [r for r in results if r]
    return Row(PIPE_ABORT_MID_STREAM, not bad, f"{len(results) - len(bad)}/{len(results)} {MESSAGES} messages "
               "then the exact code", examples(bad), {"calls": len(results), "failed": len(bad),
                                                      "messages": MESSAGES})


async def cancel(b: Battery) -> Row:
    """Held out pipes, cancelled abortively once the caller has pulled CANCEL_AFTER messages:
    did each cancel reach the server, how fast, is anything left in flight?"""
    bound = b.cfg.cancel_bound_ms / 1000
    script = PipeScript(outcome=HOLD, interval=HELD_INTERVAL)

    async def one(i: int) -> tuple[Result, int]:
        pulled = Pulled()

        async def pull_then_cancel(pipe: AsyncPipe) -> None:
            await pulled.take(pipe, CANCEL_AFTER)
            pipe.cancel()
        pipe = b.pipe(PIPE_CANCEL, PIPE_OUT, script)
        r = await drive(b, pipe, pull_then_cancel, b.cfg.wait)
        # sequential: wait a little for the server (a late cancel is still measured)
        await b.journal.wait((pipe.call_id,), lambda es: cancel_seen_at(es) is not None, min(2 * bound, b.cfg.wait))
        return r, len(pulled.seqs)
    results = await b.twice(one)
    short = sum(n < CANCEL_AFTER for _, n in results)
    notes = [f"{short} pipes got fewer than {CANCEL_AFTER} messages within {b.cfg.wait:g} s"] if short else []
    # a pipe the server never had is neither a lost cancel nor left in flight there (the journal may trail)
    await b.journal.wait([r.call_id for r, _ in results], dispatched, b.cfg.wait)
    reached = [r for r, _ in results if dispatched(b.journal.entries(r.call_id))]
    return await judge_propagation(b, PIPE_CANCEL, reached, len(results) - len(reached), notes)
