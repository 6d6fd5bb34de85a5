"""A caller that sends no call id (k6, grpcurl, a raw client) learns the one the server made, over
real gRPC: with the reply (its call_id and the trailers) when the call completes at once, in the
response headers before the outcome when the call waits, so that it can be cancelled by id.

The calls read the response as a stream, as Go's and grpcurl's clients do: grpc.aio's unary call
makes one batch of the whole exchange, so its headers would only show with the outcome."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from callstate.v1 import callstate_pb2 as pb
from callstate.wire import CALL_ID_KEY
from tests.conftest import ServerProcess, states, wait_entries


async def _call(target: str, script: pb.Script) -> dict[str, Any]:
    """The call's headers, how long after them its reply ended (`early_s`), its replies and trailers."""
    async with grpc.aio.insecure_channel(target) as channel:
        rpc = channel.unary_stream("/callstate.v1.Emulator/Call", request_serializer=pb.CallRequest.SerializeToString,
                                   response_deserializer=pb.CallReply.FromString)
        call = rpc(pb.CallRequest(script=script), timeout=20)
        headers = dict(await call.initial_metadata())
        t_headers = time.monotonic()
        replies = [reply async for reply in call]
        return {"headers": headers, "early_s": time.monotonic() - t_headers, "replies": replies,
                "trailers": dict(await call.trailing_metadata())}


def test_a_call_that_completes_at_once_returns_the_made_id_with_its_reply(shared_server: ServerProcess) -> None:
    got = asyncio.run(_call(shared_server.target, pb.Script(outcome=pb.OUTCOME_COMPLETE)))
    made = got["replies"][0].call_id
    assert made and got["trailers"][CALL_ID_KEY] == made
    assert CALL_ID_KEY not in got["headers"]   # no headers of its own before the reply
    assert states(wait_entries(shared_server.log, made)) == ["D", "Comp", "End"]


def test_a_call_that_waits_sends_the_made_id_in_its_headers_first(shared_server: ServerProcess) -> None:
    """The headers name the call while its outcome is still held back by the script's delay
    (the reply comes a good part of that delay later)."""
    got = asyncio.run(_call(shared_server.target, pb.Script(outcome=pb.OUTCOME_COMPLETE, outcome_delay_ms=1500)))
    made = got["headers"][CALL_ID_KEY]
    assert got["replies"][0].call_id == made and CALL_ID_KEY not in got["trailers"]
    assert got["early_s"] > 0.5, got["early_s"]
    assert states(wait_entries(shared_server.log, made)) == ["D", "Comp", "End"]
