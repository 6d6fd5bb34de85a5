"""Run the conformance battery straight to the server (the baseline) and through the proxy.

Order matters: the held calls of both paths start first and run in the background while
the other rows run (so a long hold does not add to the run twice); the check rows are
judged before any graceful stop, which ends the server's journal stream.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable

from callstate.cli.conformance_battery import Battery, BatteryConfig, open_channel, open_client
from callstate.cli.conformance_journal import ServerJournal
from callstate.cli.conformance_properties import Row
from callstate.cli.conformance_report import DIRECT, PROXY
from callstate.cli.conformance_server import ServerProcess
from callstate.client import CallError, Script

CONNECT_TIMEOUT = 5.0


@dataclass
class Setup:
    proxy: str
    server: str = ""                        # empty with own_server
    own_server: ServerProcess | None = None


async def _reachable(target: str, what: str) -> None:
    channel = open_channel(target)
    try:
        await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT)
    except asyncio.TimeoutError:
        raise ConnectionError(f"cannot reach the {what} at {target} (no connection within {CONNECT_TIMEOUT:g} s)")
    finally:
        await channel.close()


async def _probe(target: str) -> None:
    """One plain call through the proxy: without it nothing can be measured."""
    client = open_client(target, None, timeout=CONNECT_TIMEOUT)
    try:
        await client.start(Script("complete"))
    except CallError as err:
        raise ConnectionError(f"a call through the proxy at {target} fails ({err}): "
                              "does it forward to the server?") from None
    finally:
        await client.close()


async def run_battery(setup: Setup, cfg: BatteryConfig) -> dict[str, list[Row]]:
    own = setup.own_server
    if own is not None:
        await own.start()
        setup.server = own.target
    await _reachable(setup.server, "callstate server")
    await _reachable(setup.proxy, "proxy")
    channel = open_channel(setup.server)
    journal = ServerJournal(channel, setup.server)
    batteries: list[Battery] = []
    try:
        await journal.start(CONNECT_TIMEOUT)
        await _probe(setup.proxy)
        direct = Battery(DIRECT, setup.server, journal, cfg)
        proxied = Battery(PROXY, setup.proxy, journal, cfg)
        batteries = [direct, proxied]
        for battery in batteries:
            battery.start_held()
        rows = {DIRECT: await direct.rows(), PROXY: await proxied.rows()}
        for battery in batteries:
            rows[battery.label].append(await battery.held_row())
        for battery in batteries:
            rows[battery.label].append(await battery.check_row())
        for i, battery in enumerate(batteries):
            restart = i < len(batteries) - 1
            rows[battery.label].append(await battery.graceful_stop(_stopper(own, journal, restart) if own else None))
        return rows
    finally:
        for battery in batteries:
            await battery.close()
        await journal.close()
        await channel.close()
        if own is not None:
            await own.stop()


def _stopper(own: ServerProcess, journal: ServerJournal, restart: bool) -> Callable[[], Awaitable[None]]:
    """Stop the server gracefully; for the next path, start it again on the same port (where
    the proxy finds it) and follow its new journal."""
    async def stop() -> None:
        await own.stop()
        if restart:
            await own.start()
            await journal.start(CONNECT_TIMEOUT)
    return stop
