"""Rows about cancels crossing the proxy: abortive (RST_STREAM) with its propagation time,
non-abortive (the cancel notice) and the client's deadline (grpc-timeout)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import grpc

from callstate import codes
from callstate.check import percentiles
from callstate.cli.conformance.calls import Result, examples, open_client
from callstate.cli.conformance.journal import cancel_seen_at, ended, final, first
from callstate.cli.conformance.properties import CANCEL_ABORTIVE, CANCEL_NON_ABORTIVE, DEADLINE, Row
from callstate.client import Script
from callstate.lifecycle import CANCEL_ESCALATED, CANCEL_SEEN, CANCEL_SENT, COMPLETE, D, NON_ABORTIVE
from callstate.script import HOLD

if TYPE_CHECKING:
    from callstate.cli.conformance.battery import Battery

_DEADLINE_STATUS = grpc.StatusCode.DEADLINE_EXCEEDED.name


async def cancel_abortive(b: Battery) -> Row:
    """Held calls, cancelled once the server has them: did each cancel reach it, how fast?"""
    bound = b.cfg.cancel_bound_ms / 1000
    dropped: list[str] = []

    async def one(i: int) -> Result | None:
        call = b.prepare(CANCEL_ABORTIVE, b.client, Script(HOLD)).start()
        if not await b.until_dispatched(call):
            dropped.append(call.call_id)
            await b.finish(call, 0)
            return None
        call.cancel()
        r = await b.finish(call, b.cfg.wait)
        # sequential: wait a little for the server (a late cancel is still measured below)
        await b.journal.wait((call.call_id,), lambda es: cancel_seen_at(es) is not None, min(2 * bound, b.cfg.wait))
        return r
    results = [r for r in await b.twice(one) if r is not None]
    return await judge_propagation(b, CANCEL_ABORTIVE, results, len(dropped))


async def judge_propagation(b: Battery, prop: str, results: list[Result], dropped: int,
                            notes: list[str] | None = None) -> Row:
    """The row of abortive cancels already made (`results`, each cancelled by the client; `dropped`
    calls never reached the server): the share the server saw, how fast, what is still in flight."""
    ids = [r.call_id for r in results]
    await b.journal.wait(ids, ended, b.cfg.wait)
    lat = []
    for call_id in ids:
        seen, cancelled = cancel_seen_at(b.journal.entries(call_id)), b.recorder.cancel_at(call_id)
        if seen is not None and cancelled is not None:
            lat.append((seen - cancelled) * 1000)
    in_flight = sum(not ended(b.journal.entries(i)) for i in ids)
    p = percentiles(lat)
    sent = len(ids) + dropped   # every share is over all the calls sent, arrived or not
    share = len(lat) / sent if sent else 0.0
    wrong = [r.describe() for r in results if r.code != codes.RPC_S_CALL_CANCELLED]
    notes = list(notes or [])
    if dropped:
        notes.append(f"{dropped} of {sent} calls never reached the server (no dispatch within {b.cfg.wait:g} s)")
    if len(lat) < len(ids):
        notes.append(f"{len(ids) - len(lat)} of {sent} cancels never reached the server within {b.cfg.wait:g} s")
    if p["count"] and p["p99"] > b.cfg.cancel_bound_ms:
        slow = sum(ms > b.cfg.cancel_bound_ms for ms in lat)
        notes.append(f"p99 {p['p99']:.1f} ms over the bound {b.cfg.cancel_bound_ms:g} ms "
                     f"({slow} of {sent} cancels slower)")
    if in_flight:
        notes.append(f"{in_flight} of {sent} left in flight on the server")
    if wrong:
        notes.append("client: " + examples(wrong))
    figures = f"{len(lat)}/{sent} ({percent(len(lat), sent)}) reached the server"
    if p["count"]:
        figures += f"; p50 {p['p50']:.1f} / p99 {p['p99']:.1f} / max {p['max']:.1f} ms"
    figures += f"; {in_flight} in flight"
    return Row(prop, not notes, figures, "; ".join(notes),
               {"calls": sent, "never_dispatched": dropped, "propagated_share": round(share, 3), "in_flight": in_flight,
                "latency_ms": {k: round(v, 3) if isinstance(v, float) else v for k, v in p.items()},
                "bound_ms": b.cfg.cancel_bound_ms})


async def cancel_non_abortive(b: Battery) -> Row:
    """Held calls that complete when they see a cancel notice: notice delivered, reply back."""
    async def one(i: int) -> str:
        payload = os.urandom(16)
        script = Script(HOLD, on_cancel=COMPLETE, echo=True)
        call = b.prepare(CANCEL_NON_ABORTIVE, b.client, script, payload).start()
        if not await b.until_dispatched(call):
            await b.finish(call, 0)
            return "never reached the server"
        call.cancel(abortive=False, timeout=b.cfg.wait)   # unanswered: escalates, and the row fails
        r = await b.finish(call, 2 * b.cfg.wait)
        # the notice's answer may trail the reply, and a call that ended records nothing more:
        # the server's cancel_seen and the reply's cancel_seen are the evidence; the answer, if in, agrees
        notice = await b.recorder.event(call.call_id, CANCEL_SENT, min(1.0, b.cfg.wait))
        sent = (notice.detail or "") if notice is not None else ""
        await b.journal.wait((call.call_id,), ended, b.cfg.wait)   # the journal may trail the reply
        seen = first(b.journal.entries(call.call_id), CANCEL_SEEN)
        if r.code != codes.RPC_S_OK or r.reply is None or r.reply.payload != payload:
            if await b.recorder.event(call.call_id, CANCEL_ESCALATED, 0) is not None:   # not a reset on the way
                return (f"no answer within {b.cfg.wait:g} s of the cancel notice: the caller escalated to an "
                        "abortive cancel")
            return f"answer lost: {r.describe()}"
        if not r.reply.cancel_seen or seen is None or (notice is not None and not sent.startswith("delivered")):
            return f"notice not delivered ({sent or 'the server did not see it'})"
        if seen.get("cancel") != NON_ABORTIVE:
            return f"the server saw a {seen.get('cancel')} cancel"
        return ""
    results = await b.twice(one)
    bad = [r for r in results if r]
    return Row(CANCEL_NON_ABORTIVE, not bad, f"{len(results) - len(bad)}/{len(results)} delivered and answered",
               examples(bad), {"calls": len(results), "failed": len(bad)})


async def deadline(b: Battery) -> Row:
    """Held calls with a client deadline: the server must see it (grpc-timeout) and end too."""
    client = open_client(b.target, b.recorder, timeout=b.cfg.deadline)
    try:
        results = await b.twice(lambda i: b.finish(b.prepare(DEADLINE, client, Script(HOLD)).start(),
                                                   b.cfg.deadline + b.cfg.wait))
    finally:
        await client.close()
    ids = [r.call_id for r in results]
    await b.journal.wait(ids, ended, b.cfg.wait)
    bad = []
    for r in results:
        entries = b.journal.entries(r.call_id)
        dispatch = first(entries, state=D)
        if r.code != codes.RPC_S_CALL_CANCELLED or r.status != _DEADLINE_STATUS:
            bad.append(f"client {r.describe()}")
        elif dispatch is None:
            pass   # the deadline expired before the call reached the server: nothing to propagate
        elif await b.journal.deadline_ms(r.call_id, b.cfg.wait) is None:
            bad.append("no grpc-timeout at the server")
        elif cancel_seen_at(entries) is None or not ended(entries):
            bad.append(f"server did not end the call ({(final(entries) or dispatch)['state']})")
    reached = sum(first(b.journal.entries(i), state=D) is not None for i in ids)
    failed = len(bad)   # the calls that failed; what follows is about the row, not about one call
    if not reached:
        bad.append("no call reached the server before its deadline")
    return Row(DEADLINE, not bad, f"{len(results) - failed}/{len(results)} ended on both sides, "
               f"{reached} seen by the server", examples(bad),
               {"calls": len(results), "failed": failed, "deadline_s": b.cfg.deadline})


def percent(part: int, whole: int) -> str:
    """`part` of `whole` in whole percent; 100% and 0% only when exact: one cancel lost in 200
    reads >99%, not a rounded-up 100%."""
    if not whole:
        return "-"
    share = 100 * part / whole
    if 0 < share < 1:
        return "<1%"
    if 99 < share < 100:
        return ">99%"
    return f"{round(share)}%"
