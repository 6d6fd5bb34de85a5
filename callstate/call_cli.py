"""`callstate call` and `callstate watch`: one call, or the server's journal, on a terminal."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TextIO

import grpc
import orjson

from callstate import codes
from callstate.errors import CallError
from callstate.lifecycle import END
from callstate.script import Script
from callstate.statelog import Entry, StateLog, to_dict


class PrintSink:
    """A state-log sink that prints each entry as it is recorded (and can tee to a file)."""

    enabled = True

    def __init__(self, out: TextIO, as_json: bool, tee: StateLog | None = None) -> None:
        self.out, self.as_json, self.tee = out, as_json, tee

    def append(self, e: Entry) -> None:
        if self.tee is not None:
            self.tee.append(e)
        print(orjson.dumps(to_dict(e)).decode() if self.as_json else human(to_dict(e)), file=self.out, flush=True)

    def close(self) -> None:
        if self.tee is not None:
            self.tee.close()


def human(d: dict) -> str:  # type: ignore[type-arg]
    """One state entry as a terminal line."""
    ts = d["ts"][11:]  # time of day is enough on a terminal
    if d["event"] != "enter":
        text = f"{ts}  {d['side']:<6}  {d['state']:<5}  . {d['event']}"
    else:
        via = f"{d.get('prev') or '-'} --{d.get('move', '')}-->"
        text = f"{ts}  {d['side']:<6}  {d['state']:<5}  {via}"
    if d["state"] == END and d["event"] == "enter" and d.get("code") is not None:
        text += f"  {codes.describe(d['code'])}" + (f" (gRPC {d['grpc_status']})" if d.get("grpc_status") else "")
    if d.get("detail"):
        text += f"  [{d['detail']}]"
    return text


async def run_call(opts: argparse.Namespace) -> int:
    from callstate.client import AsyncClient

    script = Script(outcome=opts.outcome, dispatch_delay=opts.dispatch_delay, outcome_delay=opts.delay,
                    reply_bytes=opts.reply_bytes, echo=opts.echo, abort_code=opts.code, abort_status=opts.grpc_status,
                    abort_message=opts.message if opts.outcome == "abort" else "",
                    fatal_message=opts.message if opts.outcome == "fatal" else "", on_cancel=opts.on_cancel)
    sink = PrintSink(sys.stdout, opts.json, StateLog(opts.log_file) if opts.log_file else None)
    client = AsyncClient(opts.target, log=sink, timeout=opts.timeout)  # type: ignore[arg-type]
    try:
        call = client.prepare(script, payload=opts.payload.encode())
        abortive = not opts.non_abortive
        if opts.cancel_before_start:
            call.cancel(abortive=abortive)
        else:
            try:
                call.start()
            except CallError as err:
                print(f"call not made: {err}", file=sys.stderr)
                return 1
            # Ctrl-C / SIGTERM: an abortive cancel; the call is still waited for and completed
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, _cancel_if_pending, call, True, None)
            if opts.cancel_after is not None and not await call.wait(opts.cancel_after):
                _cancel_if_pending(call, abortive, opts.escalate_after if opts.non_abortive else None)
        try:
            reply = await call
        except CallError as err:
            _final(err.code, err.details)
            return 1
        _final(codes.RPC_S_OK, f"reply of {len(reply.payload)} bytes" + (", cancel seen by the server" if reply.cancel_seen else ""))
        return 0
    finally:
        await client.close()
        sink.close()


def _cancel_if_pending(call, abortive: bool, timeout: float | None) -> None:  # type: ignore[no-untyped-def]
    """Cancel unless the call is already notified or cancelled (by a signal, say)."""
    if not call.done() and call.state == "WComp":
        call.cancel(abortive=abortive, timeout=timeout)


def _final(code: int, details: str) -> None:
    print(f"final: {codes.describe(code)}" + (f": {details}" if details else ""), file=sys.stderr)


async def run_watch(opts: argparse.Namespace) -> int:
    from callstate.v1 import callstate_pb2 as pb
    from callstate.v1 import callstate_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(opts.target) as channel:
        stub = pb_grpc.JournalStub(channel)
        try:
            if opts.counters:
                c = await stub.GetCounters(pb.CountersRequest(), timeout=opts.timeout or 5.0)
                print(orjson.dumps({"in_flight": c.in_flight, "dispatched": c.dispatched, "ended": c.ended,
                                    "cancels_seen": c.cancels_seen, "by_state": dict(c.by_state),
                                    "by_code": {str(k): v for k, v in c.by_code.items()},
                                    "journal_calls": c.journal_calls, "watch_dropped": c.watch_dropped},
                                   option=orjson.OPT_INDENT_2).decode())
                return 0
            seen = 0
            print(f"watching {opts.target} (Ctrl-C to stop)", file=sys.stderr, flush=True)
            async for e in stub.Watch(pb.WatchRequest(call_id=opts.call_id), timeout=opts.timeout):
                d = {"ts": e.ts, "side": e.side, "call_id": e.call_id, "state": e.state, "prev": e.prev or None,
                     "event": e.event}
                if e.move:
                    d["move"] = e.move
                if e.HasField("code"):
                    d["code"], d["grpc_status"] = e.code, e.grpc_status
                if e.detail:
                    d["detail"] = e.detail
                print(orjson.dumps(d).decode() if opts.json else f"{e.call_id[:12]}  {human(d)}", flush=True)
                seen += 1
                if opts.count and seen >= opts.count:
                    return 0
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and not opts.counters:
                return 0
            print(f"callstate watch: {opts.target}: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    return 0



