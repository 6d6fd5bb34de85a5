"""Rows judged at the end: calls held through the proxy's idle timeouts, `callstate check`
over both sides' entries, and a graceful server stop."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from typing import TYPE_CHECKING, Awaitable, Callable

from callstate import codes
from callstate.check import Checker, counted
from callstate.cli.conformance.calls import Recorder, examples, open_client, reply_failure
from callstate.cli.conformance.journal import dispatched, ended
from callstate.cli.conformance.properties import CHECK, GRACEFUL_STOP, HELD, Row
from callstate.cli.proxy_answer import http_status
from callstate.client import Script
from callstate.lifecycle import COMPLETE
from callstate.script import HOLD

if TYPE_CHECKING:
    from callstate.cli.conformance.battery import Battery


async def held(b: Battery) -> Row:
    """Calls that complete after --hold-seconds on their own, otherwise idle, connection."""
    seconds = b.cfg.hold_seconds
    client = open_client(b.target, b.recorder)   # its own connection, idle but for these calls

    async def one() -> str:
        payload = os.urandom(32)
        r = await b.finish(b.prepare(HELD, client, Script(COMPLETE, outcome_delay=seconds, echo=True),
                                           payload).start(), seconds + b.cfg.wait, ends=True)
        why = reply_failure(r, payload)
        if r.code == codes.RPC_S_TIMEOUT and "max hold" in r.details:   # the server's own limit, not the proxy
            return f"{why}: the server's --max-hold ended it; it must be over --hold-seconds {seconds:g}"
        return cut_short(why, r.ms, r.details, seconds) if why and r.ms < seconds * 1000 else why
    try:
        results = await asyncio.gather(*(one() for _ in range(b.cfg.concurrency)))
    finally:
        await client.close()
    bad = [why for why in results if why]
    return Row(HELD, not bad, f"{len(results) - len(bad)}/{len(results)} held {seconds:g} s", examples(bad),
               {"calls": len(results), "failed": len(bad), "hold_seconds": seconds})


def cut_short(why: str, ms: float, details: str, seconds: float) -> str:
    """A held call ended before its hold: after how long (the timeout to raise), and the HTTP
    status a proxy answered with in the server's place (nginx's grpc_read_timeout: 504)."""
    status = http_status(details)
    answered = f" (HTTP {status} in the server's place)" if status else ""
    after = round(ms / 1000, 1)
    return (f"{why}{answered}, after {after:g} s, before the {seconds:g} s hold ended: "
            f"a timeout of {after:g} s on the path?")


async def check_row(b: Battery) -> Row:
    """Both sides' entries of every call the rows made, through the checker."""
    if not b.judged:   # --only check: zero calls would "pass" and prove nothing
        return Row(CHECK, None, "", "skipped: no other row ran (--only), so there is no call to check")
    # the journal may trail the replies: wait (bounded) until every call the server took has ended
    await b.journal.wait(b.judged, lambda es: not es or ended(es), b.cfg.wait)
    checker = Checker()
    for e in b.recorder.all:
        if e.call_id in b.judged:
            checker.add_entry(e)
    for call_id in b.judged:
        for d in b.journal.entries(call_id):
            checker.add(d)
    report = checker.finish(server_lost=b.journal.lost)
    kinds = {k: len(v) for k, v in report.by_kind().items()}
    examples = "; ".join(f"{kind} x{len(vs)}: {b.judged.get(vs[0].call_id, '')} call {vs[0].call_id}: "
                         f"{vs[0].message}" for kind, vs in report.by_kind().items())
    return Row(CHECK, report.ok, f"{counted(report.calls, 'call')}, {counted(len(report.violations), 'violation')}", examples,
               {"calls": report.calls, "entries": report.entries, "violations_by_kind": kinds,
                "violations_by_property": dict(Counter(b.judged.get(v.call_id, "") for v in report.violations))})


async def graceful_stop(b: Battery, stop_server: Callable[[], Awaitable[None]] | None) -> Row:
    """Held calls, then the server stops gracefully: 1722 at the client, none hang."""
    if stop_server is None:
        return Row(GRACEFUL_STOP, None, "", "skipped: only with --serve-port (conformance must stop the server)")
    recorder = Recorder()
    client = open_client(b.target, recorder)
    try:
        calls = [client.prepare(Script(HOLD)) for _ in range(b.cfg.concurrency)]
        for call in calls:   # judged here, not by the check row (which runs before the stop)
            b.journal.watch(call.call_id)
            call.start()
        reached = await b.journal.wait([c.call_id for c in calls], dispatched, b.cfg.wait)
        await stop_server()
        results = await asyncio.gather(*(b.finish(c, b.cfg.wait) for c in calls))
    finally:
        await client.close()
    checker = Checker()
    for e in recorder.all:
        checker.add_entry(e)
    for c in calls:
        for d in b.journal.entries(c.call_id):
            checker.add(d)
    report = checker.finish()
    bad = [r.describe() for r in results if r.code != codes.RPC_S_SERVER_UNAVAILABLE]
    notes = [examples(bad)] if bad else []
    if not reached:
        notes.append("not every call reached the server before the stop")
    if not report.ok:
        notes.append("check: " + ", ".join(f"{k} x{len(v)}" for k, v in report.by_kind().items()))
    hung = sum(r.hung for r in results)
    return Row(GRACEFUL_STOP, not notes, f"{len(results) - len(bad)}/{len(results)} ended 1722, {hung} hung",
               "; ".join(notes), {"calls": len(results), "failed": len(bad), "hung": hung})
