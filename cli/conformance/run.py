"""Run the conformance battery straight to the server (the baseline) and through the proxy.

Order matters: the held calls of both paths start first and run in the background while
the other rows run (so a long hold does not add to the run twice); the check rows are
judged before any graceful stop, which ends the server's journal stream.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Final

import grpc

from callstate.cli.conformance.battery import Battery, BatteryConfig, open_channel, open_client
from callstate.cli.conformance.calls import Recorder, auth_metadata, explain
from callstate.cli.conformance.journal import ServerJournal, dispatched
from callstate.cli.conformance.properties import CHECK, GRACEFUL_STOP, HELD, RUNNING_EVERY, Row
from callstate.cli.conformance.report import DIRECT, PROXY
from callstate.cli.conformance.server import ServerProcess
from callstate import codes
from callstate.client import CallError, Script
from callstate.lifecycle import COMPLETE

CONNECT_TIMEOUT = 5.0


Progress = Callable[[str, Row], None]
Running = Callable[[str, str, float, int], None]   # path, property, seconds so far, its calls ended so far


@dataclass
class Setup:
    proxy: str
    server: str = ""                        # empty with own_server
    own_server: ServerProcess | None = None
    gateway: str = ""                       # what the proxy calls itself in its answers (`server`, `via`), if it does
    progress: Progress | None = None        # told of each row as it is judged
    running: Running | None = None          # told every RUNNING_EVERY s while a row is being judged
    # the rows judged so far, per path: what an interrupted run still reports
    rows: dict[str, list[Row]] = field(default_factory=lambda: {DIRECT: [], PROXY: []})

    async def judge(self, label: str, make: Awaitable[Row], prop: str, recorder: Recorder | None = None) -> Row:
        """Judge one row (`prop`), timed; keep it and report progress, also while it runs
        (`recorder`: the client's log its calls end in, to count them)."""
        t0 = time.perf_counter()
        ticker = asyncio.ensure_future(self._tick(label, prop, t0, recorder)) if self.running is not None else None
        try:
            row = await make
        finally:
            if ticker is not None:
                ticker.cancel()
        row.seconds = row.seconds or time.perf_counter() - t0
        self.rows[label].append(row)
        if self.progress is not None:
            self.progress(label, row)
        return row

    async def _tick(self, label: str, prop: str, t0: float, recorder: Recorder | None) -> None:
        before = recorder.ended if recorder is not None else 0
        while self.running is not None:
            await asyncio.sleep(RUNNING_EVERY)   # a clock for a person watching, not a wait for an event
            self.running(label, prop, time.perf_counter() - t0, (recorder.ended - before) if recorder else 0)


async def _reachable(target: str, what: str) -> None:
    channel = open_channel(target)
    try:
        await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT)
    except asyncio.TimeoutError:
        why = await _why_unreachable(channel, target)
        raise ConnectionError(f"cannot reach the {what} at {target} (no connection within {CONNECT_TIMEOUT:g} s"
                              + (f": {why})" if why else ")")) from None
    finally:
        await channel.close()


async def _why_unreachable(channel: grpc.aio.Channel, target: str) -> str:
    """The channel's last connection error (refused, a TLS mismatch...), which only a call
    reports: one that does not wait for the connection fails at once with it."""
    check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=bytes,
                                response_deserializer=bytes)
    try:
        await check(b"", timeout=CONNECT_TIMEOUT / 2)
    except grpc.aio.AioRpcError as err:
        return explain(err, target) if err.code() == grpc.StatusCode.UNAVAILABLE else ""
    return ""


SERVER_HEADER: Final = "server"   # the HTTP response header naming the software that answered
GATEWAY_HEADERS = (SERVER_HEADER, "via")   # response headers a proxy adds; the callstate server sends neither


async def _identify(target: str) -> str:
    """What the proxy says it is: its `server` and `via` response headers ("nginx/1.22.1"), '' when
    it adds none. A health check through it: the headers come with an error status as well."""
    channel = open_channel(target)
    check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=bytes,
                                response_deserializer=bytes)
    try:
        call = check(b"", timeout=CONNECT_TIMEOUT / 2)
        try:
            await call
        except grpc.aio.AioRpcError:
            pass
        metadata = [*(await call.initial_metadata() or ()), *(await call.trailing_metadata() or ())]
    except grpc.aio.AioRpcError:
        return ""
    finally:
        await channel.close()
    found = {k: str(v) for k, v in metadata if k in GATEWAY_HEADERS}
    return ", ".join(f"{k}: {v}" if k != SERVER_HEADER else v for k, v in found.items())


async def _probe(target: str, journal: ServerJournal) -> None:
    """One plain call through the proxy, seen by the server's journal: without it nothing can be
    measured, and a proxy that forwards elsewhere would fail every row that asks the server."""
    client = open_client(target, None, timeout=CONNECT_TIMEOUT)
    try:
        call = client.prepare(Script(COMPLETE))
        journal.watch(call.call_id)
        await call.start()
    except CallError as err:
        if err.code == codes.ERROR_ACCESS_DENIED:   # the journal, straight to the server, took the same access
            raise ConnectionError(f"a call through the proxy at {target} fails ({err}), while the server at "
                                  f"{journal.target} let this client in straight: "
                                  + ("the proxy does not pass its token on (does it drop or rewrite the "
                                     "authorization header?)" if auth_metadata(target) else
                                     "the proxy asks for an access of its own")) from None
        raise ConnectionError(f"a call through the proxy at {target} fails ({err}): "
                              "does it forward to the server?") from None
    finally:
        await client.close()
    if not await journal.wait((call.call_id,), dispatched, CONNECT_TIMEOUT):
        raise ConnectionError(f"a call through the proxy at {target} was answered, but the server at "
                              f"{journal.target} never saw it (its journal, within {CONNECT_TIMEOUT:g} s): the proxy "
                              "does not forward to it; give the server it forwards to as --server")


async def run_battery(setup: Setup, cfg: BatteryConfig) -> dict[str, list[Row]]:
    own = setup.own_server
    channel = journal = None
    batteries: list[Battery] = []
    try:
        if own is not None:
            await own.start()
            setup.server = own.target
        await _reachable(setup.server, "callstate server")
        await _reachable(setup.proxy, "proxy")
        channel = open_channel(setup.server)
        journal = ServerJournal(channel, setup.server)
        await journal.start(CONNECT_TIMEOUT)
        await _probe(setup.proxy, journal)
        setup.gateway = await _identify(setup.proxy)
        direct = Battery(DIRECT, setup.server, journal, cfg)
        proxied = Battery(PROXY, setup.proxy, journal, cfg)
        batteries = [direct, proxied]
        await _judge_all(setup, cfg, batteries, own, journal)
        return setup.rows
    finally:
        for battery in batteries:
            await battery.close()
        if journal is not None:
            await journal.close()
        if channel is not None:
            await channel.close()
        if own is not None:
            await own.stop()


async def _judge_all(setup: Setup, cfg: BatteryConfig, batteries: list[Battery], own: ServerProcess | None,
                     journal: ServerJournal) -> None:
    """Every row --only asks for (all by default), in the battery's order on each path."""
    if cfg.wanted(HELD):
        for battery in batteries:
            battery.start_held()
    for battery in batteries:
        for prop, row in battery.steps():
            if cfg.wanted(prop):
                await setup.judge(battery.label, row(), prop, battery.recorder)
    if cfg.wanted(HELD):
        for battery in batteries:
            await setup.judge(battery.label, battery.held_row(), HELD, battery.recorder)
    if cfg.wanted(CHECK):
        for battery in batteries:
            await setup.judge(battery.label, battery.check_row(), CHECK)
    if cfg.wanted(GRACEFUL_STOP):
        for i, battery in enumerate(batteries):
            restart = i < len(batteries) - 1
            await setup.judge(battery.label, battery.graceful_stop(_stopper(own, journal, restart) if own else None),
                              GRACEFUL_STOP)


def _stopper(own: ServerProcess, journal: ServerJournal, restart: bool) -> Callable[[], Awaitable[None]]:
    """Stop the server gracefully; for the next path, start it again on the same port (where
    the proxy finds it) and follow its new journal."""
    async def stop() -> None:
        await own.stop()
        if restart:
            await own.start()
            await journal.start(CONNECT_TIMEOUT)
    return stop
