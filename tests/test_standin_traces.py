"""A call on a user's method is named by that method wherever callstate names a call: the
client's state log entries (as the stand-in's are) and both sides' OpenTelemetry spans (they
said `callstate.v1.Emulator/Call` and `.../PipeOut` for `shop.v1.Shop/Charge` and `Track`);
and a pipe on a method takes its script first, as `start(Script(...), method=...)` does."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from callstate.client import AsyncClient, CallError, PipeScript, Script
from callstate.schema import from_protos
from callstate.server import EmulatorServer
from tests.conftest import read_entries

PROTOS = Path(__file__).parent / "protos"
CHARGE, TRACK = "shop.v1.Shop/Charge", "shop.v1.Shop/Track"
WAIT = 20.0   # generous: a busy 2-core machine


async def finished(exporter: InMemorySpanExporter, n: int) -> list[ReadableSpan]:
    deadline = time.monotonic() + WAIT
    while len(got := exporter.get_finished_spans()) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return list(got)


async def drive(target: str, schema: Any, provider: Any, log: Path) -> dict[str, str]:
    """A completed Charge, a held Track cancelled after one message, an Emulator/Call: call id -> method."""
    async with AsyncClient(target, schema=schema, tracing=provider, log=log) as client:
        charge = client.start(Script("complete"), method=CHARGE, request={"order_id": "t-1"})
        await charge
        track = client.pipe(PipeScript("hold", interval=0.005), method=TRACK, request={"order_id": "t-2"}).start()
        assert await track.pull() is not None
        track.cancel()
        with pytest.raises(CallError) as err:
            await track.result(WAIT)
        assert err.value.code == 1818
        own = client.start(Script("complete"))
        await own
    return {charge.call_id: CHARGE, track.call_id: TRACK, own.call_id: "callstate.v1.Emulator/Call"}


def test_spans_and_client_entries_of_a_user_method_are_named_by_it(tmp_path: Path) -> None:
    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    schema = from_protos([PROTOS / "shop" / "v1" / "shop.proto"], [PROTOS])
    log = tmp_path / "client.jsonl"

    async def go() -> tuple[dict[str, str], list[ReadableSpan]]:
        async with EmulatorServer(port=0, schema=schema, tracing=provider) as srv:
            methods = await drive(srv.target, schema, provider, log)
            return methods, await finished(exporter, 6)

    methods, spans = asyncio.run(go())
    assert len(spans) == 6
    for call_id, method in methods.items():
        pair = [s for s in spans if s.attributes["callstate.call_id"] == call_id]
        assert sorted(str(s.kind) for s in pair) == [str(SpanKind.CLIENT), str(SpanKind.SERVER)]
        client, server = sorted(pair, key=lambda s: s.kind != SpanKind.CLIENT)
        assert server.context.trace_id == client.context.trace_id   # still one trace
        service, _, name = method.rpartition("/")
        for span in pair:
            assert span.name == method, span.name
            assert (span.attributes["rpc.service"], span.attributes["rpc.method"]) == (service, name)
    # the client's log names the user's method on every entry of its calls, as the stand-in's does
    entries = read_entries(log)
    for call_id, method in methods.items():
        named = {e.get("method") for e in entries if e["call_id"] == call_id}
        assert named == ({method} if method.startswith("shop.") else {None}), (call_id, named)
