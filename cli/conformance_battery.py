"""The conformance battery: scripted lifecycle scenarios on one path (direct or through a proxy).

Each scenario makes its calls sequentially, then again at `concurrency`, and judges them
from both sides: the client's entries (recorded in memory) and the server's (its journal,
read from the server directly). Every wait is bounded by `BatteryConfig.wait`, so a
middlebox that drops a cancel fails its row instead of hanging the run.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import grpc

from callstate import codes
from callstate.check import Checker, percentiles
from callstate.cli.conformance_journal import ServerJournal, cancel_seen_at, dispatched, ended, final, first
from callstate.cli.conformance_properties import (ABORT_AFTER_HEADERS, ABORT_TRAILERS_ONLY, CANCEL_ABORTIVE,
                                                  CANCEL_NON_ABORTIVE, CHECK, COMPLETE_LARGE, COMPLETE_SMALL,
                                                  DEADLINE, FATAL, GRACEFUL_STOP, HELD, LARGE_METADATA,
                                                  MANY_STREAMS, UNIMPLEMENTED, Row)
from callstate.client import AsyncCall, AsyncClient, CallError, Script
from callstate.lifecycle import CAN, CANCEL_SEEN, CANCEL_SENT, D, NON_ABORTIVE
from callstate.statelog import Entry
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from callstate.wire import CALL_ID_KEY, DEADLINE_DETAIL, new_call_id

# gRPC's default largest message is 4 MiB; the echo request and its reply both cross it.
DEFAULT_MAX_BYTES = 4 * 1024 * 1024 - 4096
PAD_KEY = "callstate-pad"
_DEADLINE_STATUS = grpc.StatusCode.DEADLINE_EXCEEDED.name


@dataclass
class BatteryConfig:
    calls: int = 10                 # per scenario and mode (sequential, then concurrent)
    concurrency: int = 10
    small_bytes: int = 64
    max_bytes: int = DEFAULT_MAX_BYTES
    large_calls: int = 3            # the near-maximum echo is costly: fewer calls
    hold_seconds: float = 10.0
    cancel_bound_ms: float = 250.0
    deadline: float = 0.2
    streams: int = 100
    metadata_bytes: int = 4096
    wait: float = 5.0               # the bound on any one wait


def open_client(target: str, log: Any, timeout: float | None = None) -> AsyncClient:
    """Every client the battery uses is made here (the one place to add channel credentials).
    A local subchannel pool: each client gets its own connection."""
    return AsyncClient(target, log=log, timeout=timeout, channel_options=[("grpc.use_local_subchannel_pool", 1)])


def open_channel(target: str) -> grpc.aio.Channel:
    """A raw channel, for the calls the client library does not make (unknown method, metadata)."""
    return grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


class Recorder:
    """The client's state log, kept in memory and indexed by call id (on the event loop)."""

    enabled = True

    def __init__(self) -> None:
        self.all: list[Entry] = []
        self.by_id: dict[str, list[Entry]] = defaultdict(list)
        self._changed = asyncio.Event()

    def append(self, e: Entry) -> None:
        self.all.append(e)
        self.by_id[e.call_id].append(e)
        self._changed.set()

    async def event(self, call_id: str, event: str, timeout: float) -> Entry | None:
        """The call's first `event` entry, waiting for it up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (found := next((e for e in self.by_id.get(call_id, ()) if e.event == event), None)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return found

    def cancel_at(self, call_id: str) -> float | None:
        return next((e.t for e in self.by_id.get(call_id, ()) if e.state == CAN), None)


@dataclass
class Result:
    call_id: str
    code: int | None                   # None: no notification within the bound (hung)
    status: str = ""
    details: str = ""
    reply: pb.CallReply | None = None
    ms: float = 0.0

    @property
    def hung(self) -> bool:
        return self.code is None

    def describe(self) -> str:
        if self.hung:
            return f"no answer within the bound ({self.ms / 1000:.1f} s)"
        return codes.describe(self.code or 0) + (f" ({self.status})" if self.status else "")


def _ms(values: list[float]) -> str:
    p = percentiles(values)
    return f"p50 {p['p50']:.1f} ms" if p["count"] else ""


def _examples(bad: list[str], n: int = 2) -> str:
    shown = Counter(bad).most_common(n)
    return "; ".join(f"{text} x{count}" for text, count in shown)


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

    async def finish(self, call: AsyncCall, bound: float) -> Result:
        """The call's outcome, or `hung` when no notification came within `bound` (then the
        call is cancelled abortively, so it still ends)."""
        t0 = time.perf_counter()
        try:
            reply = await call.result(timeout=bound)
            return Result(call.call_id, codes.RPC_S_OK, "OK", reply=reply, ms=(time.perf_counter() - t0) * 1000)
        except CallError as err:
            if call.done():
                return Result(call.call_id, err.code, err.grpc_status, err.details,
                              ms=(time.perf_counter() - t0) * 1000)
        call.cancel()
        try:
            await call.result(timeout=self.cfg.wait)
        except CallError:
            pass
        return Result(call.call_id, None, ms=(time.perf_counter() - t0) * 1000)

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
    async def rows(self) -> list[Row]:
        return [await self.complete(COMPLETE_SMALL, self.cfg.small_bytes, self.cfg.calls),
                await self.complete(COMPLETE_LARGE, self.cfg.max_bytes, self.cfg.large_calls),
                await self.abort(ABORT_TRAILERS_ONLY, headers_first=False),
                await self.abort(ABORT_AFTER_HEADERS, headers_first=True),
                await self.fatal(), await self.unimplemented(), await self.cancel_abortive(),
                await self.cancel_non_abortive(), await self.deadline(), await self.many_streams(),
                await self.large_metadata()]

    async def complete(self, prop: str, size: int, n: int) -> Row:
        async def one(i: int) -> tuple[Result, bool]:
            payload = os.urandom(size)
            r = await self.finish(self.prepare(prop, self.client, Script("complete", echo=True), payload).start(),
                                  self.cfg.wait + size / 1e6)
            return r, r.code == codes.RPC_S_OK and r.reply is not None and r.reply.payload == payload
        results = await self.twice(one, n)
        bad = [r.describe() if r.code else "reply bytes differ" for r, ok in results if not ok]
        return Row(prop, not bad, f"{len(results) - len(bad)}/{len(results)} intact, {size} B, "
                   + _ms([r.ms for r, _ in results]), _examples(bad), {"calls": len(results), "failed": len(bad)})

    async def abort(self, prop: str, headers_first: bool) -> Row:
        async def one(i: int) -> tuple[Result, int]:
            code = 5000 + i   # a different code per call: a code that reaches the wrong call shows
            script = Script("abort", abort_code=code, headers_first=headers_first)
            return await self.finish(self.prepare(prop, self.client, script).start(), self.cfg.wait), code
        results = await self.twice(one)
        bad = [f"{r.describe()} instead of {code}" for r, code in results if r.code != code]
        return Row(prop, not bad, f"{len(results) - len(bad)}/{len(results)} exact code", _examples(bad),
                   {"calls": len(results), "failed": len(bad)})

    async def fatal(self) -> Row:
        async def one(i: int) -> Result:
            return await self.finish(self.prepare(FATAL, self.client, Script("fatal")).start(), self.cfg.wait)
        results = await self.twice(one)
        bad = [r.describe() for r in results if r.code != codes.RPC_S_CALL_FAILED]
        return Row(FATAL, not bad, f"{len(results) - len(bad)}/{len(results)} 1726", _examples(bad),
                   {"calls": len(results), "failed": len(bad)})

    async def unimplemented(self) -> Row:
        method = self.channel.unary_unary("/callstate.v1.Emulator/NoSuchMethod",
                                          request_serializer=pb.CallRequest.SerializeToString,
                                          response_deserializer=pb.CallReply.FromString)

        async def one(i: int) -> str:
            try:
                await method(pb.CallRequest(call_id=new_call_id()), timeout=self.cfg.wait)
                return "OK"
            except grpc.aio.AioRpcError as err:
                return err.code().name
        results = await self.twice(one)
        bad = [s for s in results if s != grpc.StatusCode.UNIMPLEMENTED.name]
        return Row(UNIMPLEMENTED, not bad, f"{len(results) - len(bad)}/{len(results)} UNIMPLEMENTED",
                   _examples(bad), {"calls": len(results), "failed": len(bad)})

    async def cancel_abortive(self) -> Row:
        bound = self.cfg.cancel_bound_ms / 1000
        dropped: list[str] = []

        async def one(i: int) -> Result | None:
            call = self.prepare(CANCEL_ABORTIVE, self.client, Script("hold")).start()
            if not await self.until_dispatched(call):
                dropped.append(call.call_id)
                await self.finish(call, 0)
                return None
            call.cancel()
            r = await self.finish(call, self.cfg.wait)
            # sequential: wait a little for the server (a late cancel is still measured below)
            await self.journal.wait((call.call_id,), lambda es: cancel_seen_at(es) is not None, 2 * bound)
            return r
        results = [r for r in await self.twice(one) if r is not None]
        ids = [r.call_id for r in results]
        await self.journal.wait(ids, ended, self.cfg.wait)
        lat = []
        for call_id in ids:
            seen, cancelled = cancel_seen_at(self.journal.entries(call_id)), self.recorder.cancel_at(call_id)
            if seen is not None and cancelled is not None:
                lat.append((seen - cancelled) * 1000)
        in_flight = sum(not ended(self.journal.entries(i)) for i in ids)
        p = percentiles(lat)
        share = len(lat) / len(ids) if ids else 0.0
        wrong = [r.describe() for r in results if r.code != codes.RPC_S_CALL_CANCELLED]
        notes = []
        if dropped:
            notes.append(f"{len(dropped)} calls never reached the server")
        if len(lat) < len(ids):
            notes.append(f"{len(ids) - len(lat)} cancels never reached the server within {self.cfg.wait:g} s")
        if p["count"] and p["p99"] > self.cfg.cancel_bound_ms:
            notes.append(f"p99 {p['p99']:.1f} ms over the bound {self.cfg.cancel_bound_ms:g} ms")
        if in_flight:
            notes.append(f"{in_flight} left in flight on the server")
        if wrong:
            notes.append("client: " + _examples(wrong))
        figures = f"{share:.0%} reached the server"
        if p["count"]:
            figures += f"; p50 {p['p50']:.1f} / p99 {p['p99']:.1f} / max {p['max']:.1f} ms"
        figures += f"; {in_flight} in flight"
        return Row(CANCEL_ABORTIVE, not notes, figures, "; ".join(notes),
                   {"calls": len(ids) + len(dropped), "propagated_share": round(share, 3), "in_flight": in_flight,
                    "latency_ms": {k: round(v, 3) if isinstance(v, float) else v for k, v in p.items()},
                    "bound_ms": self.cfg.cancel_bound_ms})

    async def cancel_non_abortive(self) -> Row:
        async def one(i: int) -> str:
            payload = os.urandom(16)
            script = Script("hold", on_cancel="complete", echo=True)
            call = self.prepare(CANCEL_NON_ABORTIVE, self.client, script, payload).start()
            if not await self.until_dispatched(call):
                await self.finish(call, 0)
                return "never reached the server"
            call.cancel(abortive=False, timeout=self.cfg.wait)   # unanswered: escalates, and the row fails
            r = await self.finish(call, 2 * self.cfg.wait)
            notice = await self.recorder.event(call.call_id, CANCEL_SENT, self.cfg.wait)   # may trail the reply
            sent = notice.detail or "" if notice is not None else ""
            await self.journal.wait((call.call_id,), ended, self.cfg.wait)   # the journal may trail the reply
            seen = first(self.journal.entries(call.call_id), CANCEL_SEEN)
            if r.code != codes.RPC_S_OK or r.reply is None or r.reply.payload != payload:
                return f"answer lost: {r.describe()}"
            if not r.reply.cancel_seen or not sent.startswith("delivered") or seen is None:
                return f"notice not delivered ({sent or 'no answer to the notice'})"
            if seen.get("cancel") != NON_ABORTIVE:
                return f"the server saw a {seen.get('cancel')} cancel"
            return ""
        results = await self.twice(one)
        bad = [r for r in results if r]
        return Row(CANCEL_NON_ABORTIVE, not bad, f"{len(results) - len(bad)}/{len(results)} delivered and answered",
                   _examples(bad), {"calls": len(results), "failed": len(bad)})

    async def deadline(self) -> Row:
        client = open_client(self.target, self.recorder, timeout=self.cfg.deadline)
        try:
            results = await self.twice(lambda i: self.finish(self.prepare(DEADLINE, client, Script("hold")).start(),
                                                             self.cfg.deadline + self.cfg.wait))
        finally:
            await client.close()
        ids = [r.call_id for r in results]
        await self.journal.wait(ids, ended, self.cfg.wait)
        bad = []
        for r in results:
            entries = self.journal.entries(r.call_id)
            dispatch = first(entries, state=D)
            if r.code != codes.RPC_S_CALL_CANCELLED or r.status != _DEADLINE_STATUS:
                bad.append(f"client {r.describe()}")
            elif dispatch is None:
                pass   # the deadline expired before the call reached the server: nothing to propagate
            elif DEADLINE_DETAIL not in (dispatch.get("detail") or ""):
                bad.append("no grpc-timeout at the server")
            elif cancel_seen_at(entries) is None or not ended(entries):
                bad.append(f"server did not end the call ({(final(entries) or dispatch)['state']})")
        reached = sum(first(self.journal.entries(i), state=D) is not None for i in ids)
        if not reached:
            bad.append("no call reached the server before its deadline")
        return Row(DEADLINE, not bad, f"{len(results) - len(bad)}/{len(results)} ended on both sides, "
                   f"{reached} seen by the server", _examples(bad),
                   {"calls": len(results), "failed": len(bad), "deadline_s": self.cfg.deadline})

    async def many_streams(self) -> Row:
        n = self.cfg.streams
        hold = Script("complete", outcome_delay=0.5)
        t0 = time.perf_counter()
        results = await asyncio.gather(*(self.finish(self.prepare(MANY_STREAMS, self.client, hold).start(),
                                                     self.cfg.wait + 0.5) for _ in range(n)))
        elapsed = time.perf_counter() - t0
        bad = [r.describe() for r in results if r.code != codes.RPC_S_OK]
        return Row(MANY_STREAMS, not bad, f"{n - len(bad)}/{n} on one connection in {elapsed:.2f} s",
                   _examples(bad), {"calls": n, "failed": len(bad), "seconds": round(elapsed, 3)})

    async def large_metadata(self) -> Row:
        stub = pb_grpc.EmulatorStub(self.channel)
        size = self.cfg.metadata_bytes

        async def one(i: int) -> str:
            call_id, code = new_call_id(), 6000 + i
            message = os.urandom(size // 2).hex()[:size]   # printable: no percent-encoding on the wire
            self.journal.watch(call_id)
            self.judged[call_id] = LARGE_METADATA
            script = pb.Script(outcome=pb.OUTCOME_ABORT, abort_code=code, abort_message=message)
            try:
                await stub.Call(pb.CallRequest(call_id=call_id, script=script), timeout=self.cfg.wait,
                                metadata=((CALL_ID_KEY, call_id), (PAD_KEY, "p" * size)))
                return "completed instead of aborting"
            except grpc.aio.AioRpcError as err:
                got = codes.from_grpc(err.code(), err.trailing_metadata())
                if got != code:
                    return f"{codes.describe(got)} ({err.code().name}) instead of {code}"
                if err.details() != message:
                    return f"abort message of {len(err.details() or '')} bytes, not {size}"
                return ""
        results = await self.twice(one)
        bad = [r for r in results if r]
        return Row(LARGE_METADATA, not bad, f"{len(results) - len(bad)}/{len(results)} intact, {size} B each way",
                   _examples(bad), {"calls": len(results), "failed": len(bad), "bytes": size})

    # -- held calls run in the background while the other rows run -------------------------------
    def start_held(self) -> None:
        self._held = asyncio.ensure_future(self._held_row())

    async def held_row(self) -> Row:
        assert self._held is not None
        return await self._held

    async def _held_row(self) -> Row:
        seconds = self.cfg.hold_seconds
        client = open_client(self.target, self.recorder)   # its own connection, idle but for these calls

        async def one() -> tuple[Result, bool]:
            payload = os.urandom(32)
            r = await self.finish(self.prepare(HELD, client, Script("complete", outcome_delay=seconds, echo=True),
                                               payload).start(), seconds + self.cfg.wait)
            return r, r.code == codes.RPC_S_OK and r.reply is not None and r.reply.payload == payload
        try:
            results = await asyncio.gather(*(one() for _ in range(self.cfg.concurrency)))
        finally:
            await client.close()
        bad = [f"{r.describe()} after {r.ms / 1000:.1f} s" if r.code else "reply bytes differ"
               for r, ok in results if not ok]
        return Row(HELD, not bad, f"{len(results) - len(bad)}/{len(results)} held {seconds:g} s", _examples(bad),
                   {"calls": len(results), "failed": len(bad), "hold_seconds": seconds})

    # -- both sides' logs ------------------------------------------------------------------------
    async def check_row(self) -> Row:
        # the journal may trail the replies: wait (bounded) until every call the server took has ended
        await self.journal.wait(self.judged, lambda es: not es or ended(es), self.cfg.wait)
        checker = Checker()
        for e in self.recorder.all:
            if e.call_id in self.judged:
                checker.add_entry(e)
        for call_id in self.judged:
            for d in self.journal.entries(call_id):
                checker.add(d)
        report = checker.finish(server_lost=self.journal.lost)
        kinds = {k: len(v) for k, v in report.by_kind().items()}
        examples = "; ".join(f"{kind} x{len(vs)}: {self.judged.get(vs[0].call_id, '')} call {vs[0].call_id}: "
                             f"{vs[0].message}" for kind, vs in report.by_kind().items())
        return Row(CHECK, report.ok, f"{report.calls} calls, {len(report.violations)} violations", examples,
                   {"calls": report.calls, "entries": report.entries, "violations_by_kind": kinds,
                    "violations_by_property": dict(Counter(self.judged.get(v.call_id, "") for v in report.violations))})

    # -- graceful stop (only when conformance runs the server) -------------------------------------
    async def graceful_stop(self, stop_server: Callable[[], Awaitable[None]] | None) -> Row:
        if stop_server is None:
            return Row(GRACEFUL_STOP, None, "", "skipped: only with --serve-port (conformance must stop the server)")
        recorder = Recorder()
        client = open_client(self.target, recorder)
        try:
            calls = [client.prepare(Script("hold")) for _ in range(self.cfg.concurrency)]
            for call in calls:   # judged here, not by the check row (which runs before the stop)
                self.journal.watch(call.call_id)
                call.start()
            reached = await self.journal.wait([c.call_id for c in calls], dispatched, self.cfg.wait)
            await stop_server()
            results = await asyncio.gather(*(self.finish(c, self.cfg.wait) for c in calls))
        finally:
            await client.close()
        checker = Checker()
        for e in recorder.all:
            checker.add_entry(e)
        for c in calls:
            for d in self.journal.entries(c.call_id):
                checker.add(d)
        report = checker.finish()
        bad = [r.describe() for r in results if r.code != codes.RPC_S_SERVER_UNAVAILABLE]
        notes = [_examples(bad)] if bad else []
        if not reached:
            notes.append("not every call reached the server before the stop")
        if not report.ok:
            notes.append("check: " + ", ".join(f"{k} x{len(v)}" for k, v in report.by_kind().items()))
        hung = sum(r.hung for r in results)
        return Row(GRACEFUL_STOP, not notes, f"{len(results) - len(bad)}/{len(results)} ended 1722, {hung} hung",
                   "; ".join(notes), {"calls": len(results), "failed": len(bad), "hung": hung})
