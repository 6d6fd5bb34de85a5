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
from callstate.check import percentiles
from callstate.cli.conformance_calls import Result, examples
from callstate.cli.conformance_cancels import judge_propagation
from callstate.cli.conformance_journal import cancel_seen_at, ended, final, first
from callstate.cli.conformance_properties import (PIPE_ABORT_MID_STREAM, PIPE_BOTH_FULL_DUPLEX, PIPE_CANCEL,
                                                  PIPE_EARLY_ANSWER, PIPE_IN_HALF_CLOSE, PIPE_OUT_STREAMED, Row)
from callstate.client import AsyncPipe, CallError, PipeScript
from callstate.lifecycle import COMP, ENTER, NP, NULL_PULL, PIPE_BOTH, PIPE_IN, PIPE_OUT

if TYPE_CHECKING:
    from callstate.cli.conformance_battery import Battery

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

    @property
    def spread(self) -> float:
        """Seconds from the first message's arrival to the last's."""
        return self.arrivals[-1] - self.arrivals[0] if self.arrivals else 0.0


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
    try:
        pipe.cancel()
    except CallError:
        pass
    await asyncio.wait((task,), timeout=b.cfg.wait)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return PipeResult(pipe.call_id, None, ms=(time.perf_counter() - t0) * 1000)


def _ms(p: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in p.items()}


async def out_streamed(b: Battery) -> Row:
    """Out pipes of MESSAGES paced by the server: all in order with 0, and spread out on arrival
    as they were sent (the last at least one interval after the first); a proxy that holds a
    response stream until its end delivers them in one burst. Clock-free: a proxy's latency
    shifts every arrival alike."""
    script = PipeScript(messages=MESSAGES, interval=INTERVAL)
    span_ms = (MESSAGES - 1) * INTERVAL * 1000

    async def one(i: int) -> tuple[str, float]:
        pulled = Pulled()
        r = await drive(b, b.pipe(PIPE_OUT_STREAMED, PIPE_OUT, script), pulled.take, b.cfg.wait + MESSAGES * INTERVAL)
        spread_ms = pulled.spread * 1000
        if r.code != codes.RPC_S_OK:
            return r.describe(), spread_ms
        if not pulled.in_order(MESSAGES):
            return f"messages {pulled.seqs} instead of 1..{MESSAGES}", spread_ms
        if pulled.spread < INTERVAL:
            return (f"all {MESSAGES} arrived within {spread_ms:.0f} ms, sent over {span_ms:.0f} ms: "
                    "buffered, not streamed"), spread_ms
        return "", spread_ms
    results = await b.twice(one)
    bad = [why for why, _ in results if why]
    p = percentiles([s for _, s in results])
    return Row(PIPE_OUT_STREAMED, not bad, f"{len(results) - len(bad)}/{len(results)} streamed in order, "
               f"spread p50 {p['p50']:.0f} of {span_ms:.0f} ms", examples(bad),
               {"calls": len(results), "failed": len(bad), "messages": MESSAGES, "interval_ms": INTERVAL * 1000,
                "spread_ms": _ms(p)})


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
    must reach the caller. A proxy that resets the caller's stream when the answer is complete
    before the request (RST_STREAM CANCEL) turns it into 1818."""
    script = PipeScript(outcome="complete", at="after-in", at_count=EARLY_AFTER)

    async def push_some(pipe: AsyncPipe) -> None:
        for _ in range(EARLY_AFTER):
            await pipe.push(os.urandom(MESSAGE_BYTES))   # and no close_push: the answer comes first

    async def one(i: int) -> str:
        r = await drive(b, b.pipe(PIPE_EARLY_ANSWER, PIPE_IN, script), push_some, b.cfg.wait)
        if r.code != codes.RPC_S_OK:
            lost = await _not_ok(b, r)
            return lost + (" (reset when the answer came before the request's end)" if lost != r.describe() else "")
        if r.pipe_reply is None or r.pipe_reply.received != EARLY_AFTER:
            return f"the reply counts {getattr(r.pipe_reply, 'received', None)} of {EARLY_AFTER} messages"
        return ""
    results = await b.twice(one)
    bad = [r for r in results if r]
    return Row(PIPE_EARLY_ANSWER, not bad, f"{len(results) - len(bad)}/{len(results)} answers before the "
               "half-close delivered", examples(bad), {"calls": len(results), "failed": len(bad)})


async def both_full_duplex(b: Battery) -> Row:
    """Bidi pipes whose server aborts with a per-call code once the caller's first message is in;
    the caller never half-closes. A proxy that waits for the end of the request stream before
    forwarding leaves the caller waiting: the row fails after --wait."""
    async def push_one(pipe: AsyncPipe) -> None:
        await pipe.push(b"first")   # and no close_push: the answer must come while the pipe is open

    async def one(i: int) -> str:
        code = 7000 + i   # a different code per call: a code that reaches the wrong call shows
        script = PipeScript(messages=0, outcome="abort", at="after-in", at_count=1, abort_code=code)
        r = await drive(b, b.pipe(PIPE_BOTH_FULL_DUPLEX, PIPE_BOTH, script), push_one, b.cfg.wait)
        if r.hung:
            return (f"no answer within {b.cfg.wait:g} s while the caller's pipe stayed open "
                    "(half-duplex: does the proxy wait for the end of the request stream?)")
        return f"{r.describe()} instead of {code}" if r.code != code else ""
    results = await b.twice(one)
    bad = [r for r in results if r]
    return Row(PIPE_BOTH_FULL_DUPLEX, not bad, f"{len(results) - len(bad)}/{len(results)} answered before the "
               "half-close", examples(bad), {"calls": len(results), "failed": len(bad)})


async def abort_mid_stream(b: Battery) -> Row:
    """Out pipes aborted with a per-call code after MESSAGES messages: the messages, then the code."""
    async def one(i: int) -> str:
        code = 8000 + i
        script = PipeScript(messages=MESSAGES, outcome="abort", at="after-out", at_count=MESSAGES, abort_code=code)
        pulled = Pulled()
        r = await drive(b, b.pipe(PIPE_ABORT_MID_STREAM, PIPE_OUT, script), pulled.take, b.cfg.wait)
        if r.code != code:
            return f"{r.describe()} instead of {code}"
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
    script = PipeScript(outcome="hold", interval=HELD_INTERVAL)

    async def one(i: int) -> tuple[Result, int]:
        pulled = Pulled()

        async def pull_then_cancel(pipe: AsyncPipe) -> None:
            await pulled.take(pipe, CANCEL_AFTER)
            pipe.cancel()
        pipe = b.pipe(PIPE_CANCEL, PIPE_OUT, script)
        r = await drive(b, pipe, pull_then_cancel, b.cfg.wait)
        # sequential: wait a little for the server (a late cancel is still measured)
        await b.journal.wait((pipe.call_id,), lambda es: cancel_seen_at(es) is not None, 2 * bound)
        return r, len(pulled.seqs)
    results = await b.twice(one)
    short = sum(n < CANCEL_AFTER for _, n in results)
    notes = [f"{short} pipes got fewer than {CANCEL_AFTER} messages within {b.cfg.wait:g} s"] if short else []
    return await judge_propagation(b, PIPE_CANCEL, [r for r, _ in results], 0, notes)
