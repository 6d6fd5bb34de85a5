"""`callstate watch`: follow the server's journal live, or print its counters."""

from __future__ import annotations

import argparse
import asyncio
import sys

from callstate.cli.options import add_target, channel_settings, non_negative_int

COUNTERS_TIMEOUT = 5.0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("watch", help="follow the server's journal live",
                       description="Follow the server's state log live through callstate.v1.Journal/Watch. "
                                   "Stop with Ctrl-C.")
    add_target(p)
    p.add_argument("--call-id", default="", help="only this call")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.add_argument("--counters", action="store_true", help="print the server's counters once and exit")
    p.add_argument("--count", type=non_negative_int, default=0, metavar="N", help="stop after N entries")
    return p


def run(opts: argparse.Namespace) -> int:
    opts.settings = channel_settings(opts)
    try:
        return asyncio.run(_watch(opts))
    except KeyboardInterrupt:
        return 0


def counters_dict(c) -> dict:  # type: ignore[no-untyped-def, type-arg]
    """The Journal's counters as printed by `watch --counters`."""
    return {"in_flight": c.in_flight, "dispatched": c.dispatched, "ended": c.ended,
            "cancels_seen": c.cancels_seen, "by_state": dict(c.by_state),
            "by_code": {str(k): v for k, v in c.by_code.items()},
            "journal_calls": c.journal_calls, "watch_dropped": c.watch_dropped}


async def _watch(opts: argparse.Namespace) -> int:
    import grpc
    import orjson

    from callstate.cli.terminal import line
    from callstate.statelog import proto_to_dict
    from callstate.v1 import callstate_pb2 as pb
    from callstate.v1 import callstate_pb2_grpc as pb_grpc

    settings = opts.settings
    async with settings.aio_channel(opts.target) as channel:
        stub = pb_grpc.JournalStub(channel)
        try:
            if opts.counters:
                c = await stub.GetCounters(pb.CountersRequest(), metadata=settings.metadata,
                                        timeout=opts.timeout or COUNTERS_TIMEOUT)
                print(orjson.dumps(counters_dict(c), option=orjson.OPT_INDENT_2).decode())
                return 0
            seen = 0
            print(f"watching {opts.target} (Ctrl-C to stop)", file=sys.stderr, flush=True)
            async for e in stub.Watch(pb.WatchRequest(call_id=opts.call_id), metadata=settings.metadata,
                                         timeout=opts.timeout):
                d = proto_to_dict(e)
                print(line(d, True) if opts.json else f"{e.call_id[:12]}  {line(d, False)}", flush=True)
                seen += 1
                if opts.count and seen >= opts.count:
                    return 0
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and not opts.counters:
                return 0
            print(f"callstate watch: {opts.target}: {err.code().name}: {settings.explain(err.code(), err.details())}",
                  file=sys.stderr)
            return 1
    return 0
