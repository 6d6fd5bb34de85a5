"""Rows about what crosses the proxy intact: replies, abort codes, fatal failures, unknown
methods, many streams on one connection, large metadata."""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

import grpc

from callstate import codes
from callstate.cli.conformance.calls import Result, auth_metadata, code_failure, examples, median_ms, reply_failure
from callstate.cli.conformance.journal import ended
from callstate.cli.conformance.properties import FATAL, LARGE_METADATA, MANY_STREAMS, UNIMPLEMENTED, Row
from callstate.client import Script
from callstate.lifecycle import ABORT, COMPLETE, FATAL as FATAL_OUTCOME
from callstate.script import Limits
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from callstate.wire import CALL_ID_KEY, new_call_id

if TYPE_CHECKING:
    from callstate.cli.conformance.battery import Battery

PAD_KEY = "callstate-pad"   # the large request header


async def complete(b: Battery, prop: str, size: int, n: int) -> Row:
    """Echo calls: the reply must be the request's random bytes. Past the largest request the
    server takes, a scripted reply of `size` bytes instead (the reply may be larger)."""
    echo = size <= Limits().max_payload_bytes

    async def one(i: int) -> tuple[Result, str]:
        payload = os.urandom(size) if echo else b""
        script = Script(COMPLETE, echo=True) if echo else Script(COMPLETE, reply_bytes=size)
        r = await b.finish(b.prepare(prop, b.client, script, payload).start(), b.cfg.wait + size / 1e6, ends=True)
        return r, reply_failure(r, payload if echo else bytes(size))
    results = await b.twice(one, n)
    bad = [why for _, why in results if why]
    return Row(prop, not bad, f"{len(results) - len(bad)}/{len(results)} intact, {size} B, "
               + median_ms([r.ms for r, _ in results]), examples(bad), {"calls": len(results), "failed": len(bad)})


async def abort(b: Battery, prop: str, headers_first: bool) -> Row:
    """Aborts with a different code per call: that exact code must reach the client."""
    async def one(i: int) -> tuple[Result, int]:
        code = 5000 + i % 1000   # a different code per call: a code that reaches the wrong call shows
        script = Script(ABORT, abort_code=code, headers_first=headers_first)
        return await b.finish(b.prepare(prop, b.client, script).start(), b.cfg.wait, ends=True), code
    results = await b.twice(one)
    bad = [why for r, code in results if (why := code_failure(r, code, 5000))]
    return Row(prop, not bad, f"{len(results) - len(bad)}/{len(results)} exact code", examples(bad),
               {"calls": len(results), "failed": len(bad)})


async def fatal(b: Battery) -> Row:
    """Fatal failures: 1726 at the client."""
    async def one(i: int) -> Result:
        return await b.finish(b.prepare(FATAL, b.client, Script(FATAL_OUTCOME)).start(), b.cfg.wait, ends=True)
    results = await b.twice(one)
    bad = [r.describe() for r in results if r.code != codes.RPC_S_CALL_FAILED]
    return Row(FATAL, not bad, f"{len(results) - len(bad)}/{len(results)} 1726", examples(bad),
               {"calls": len(results), "failed": len(bad)})


async def unimplemented(b: Battery) -> Row:
    """A method the server does not have: UNIMPLEMENTED, not a proxy's own status."""
    method = b.channel.unary_unary("/callstate.v1.Emulator/NoSuchMethod",
                                   request_serializer=pb.CallRequest.SerializeToString,
                                      response_deserializer=pb.CallReply.FromString)

    async def one(i: int) -> str:
        try:
            await method(pb.CallRequest(call_id=new_call_id()), metadata=auth_metadata(b.target), timeout=b.cfg.wait)
            return "OK"
        except grpc.aio.AioRpcError as err:
            return err.code().name
    results = await b.twice(one)
    bad = [s for s in results if s != grpc.StatusCode.UNIMPLEMENTED.name]
    return Row(UNIMPLEMENTED, not bad, f"{len(results) - len(bad)}/{len(results)} UNIMPLEMENTED",
               examples(bad), {"calls": len(results), "failed": len(bad)})


async def many_streams(b: Battery) -> Row:
    """Overlapping calls on the battery's one connection: all complete."""
    n = b.cfg.streams
    hold = Script(COMPLETE, outcome_delay=0.5)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(b.finish(b.prepare(MANY_STREAMS, b.client, hold).start(),
                                              b.cfg.wait + 0.5, ends=True) for _ in range(n)))
    elapsed = time.perf_counter() - t0
    bad = [r.describe() for r in results if r.code != codes.RPC_S_OK]
    return Row(MANY_STREAMS, not bad, f"{n - len(bad)}/{n} on one connection in {elapsed:.2f} s",
               examples(bad), {"calls": n, "failed": len(bad), "seconds": round(elapsed, 3)})


async def large_metadata(b: Battery) -> Row:
    """A large request header in, an abort message as large out (in the trailers)."""
    stub = pb_grpc.EmulatorStub(b.channel)
    size = b.cfg.metadata_bytes
    message_size = min(size, Limits().max_message_bytes)   # the server refuses longer abort messages

    async def one(i: int) -> str:
        call_id, code = new_call_id(), 6000 + i % 1000
        message = os.urandom(message_size).hex()[:message_size]   # printable: no percent-encoding on the wire
        b.journal.watch(call_id)
        b.judged[call_id] = LARGE_METADATA
        script = pb.Script(outcome=pb.OUTCOME_ABORT, abort_code=code, abort_message=message)
        try:
            await stub.Call(pb.CallRequest(call_id=call_id, script=script), timeout=b.cfg.wait,
                            metadata=((CALL_ID_KEY, call_id), (PAD_KEY, "p" * size)) + auth_metadata(b.target))
            return "completed instead of aborting"
        except grpc.aio.AioRpcError as err:
            got = codes.from_grpc(err.code(), err.trailing_metadata())
            if got != code:
                return ("another call's code" if 6000 <= got < 7000 else
                        f"{codes.describe(got)} ({err.code().name}) instead of the call's own code (6000+)")
            if err.details() != message:
                return f"abort message of {len(err.details() or '')} bytes, not {message_size}"
            # no client log for these raw calls: the server's End must be in before the check row
            if not await b.journal.wait((call_id,), ended, b.cfg.wait):
                return "not ended in the server's journal"
            return ""
    results = await b.twice(one)
    bad = [r for r in results if r]
    return Row(LARGE_METADATA, not bad,
               f"{len(results) - len(bad)}/{len(results)} intact, {size} B header, {message_size} B message",
               examples(bad), {"calls": len(results), "failed": len(bad), "bytes": size})
