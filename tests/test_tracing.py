"""OpenTelemetry: an abortively cancelled call's client and server spans, in-process (in-memory
exporter), with the asyncio and the sync client; and `--otel` end to end with the console exporter."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from callstate.client import AsyncClient, CallError, Client, PipeScript, Script
from callstate.lifecycle import ABORTIVE, CANCEL_SEEN, D, ENTER, NON_ABORTIVE
from callstate.observe.tracing import CANCEL_KIND, CANCELLED, CODE, CODE_NAME, exporter_names
from callstate.server import EmulatorServer
from tests.conftest import cli, start_server
from tests.documentation import documentation


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def finished(exporter: InMemorySpanExporter, n: int, timeout: float = 5.0) -> list[ReadableSpan]:
    deadline = time.monotonic() + timeout
    while len(got := exporter.get_finished_spans()) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return list(got)


async def dispatched(srv: EmulatorServer, call_id: str) -> None:
    """Wait until the server's handler is in D for `call_id`."""
    deadline = time.monotonic() + 20
    while (rec := srv.journal.get(call_id)) is None or rec.state != D:   # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the call never reached the server"
        await asyncio.sleep(0.01)


def event_names(entries: list[Any]) -> list[str]:
    """The span event names a side's entries should give: the state entered, or the event."""
    return [e.state if e.event == ENTER else e.event for e in entries]


def check_pair(spans: list[ReadableSpan], call_id: str, client_events: list[str], server_events: list[str],
               kind: str) -> None:
    assert len(spans) == 2, spans
    client = next(s for s in spans if s.kind == SpanKind.CLIENT)
    server = next(s for s in spans if s.kind == SpanKind.SERVER)
    # one trace: the server's span is the child of the client's (context from the metadata)
    assert client.context.trace_id == server.context.trace_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert client.parent is None
    for span, events in ((client, client_events), (server, server_events)):
        assert span.attributes["callstate.call_id"] == call_id
        assert [e.name for e in span.events] == events
        assert span.attributes[CODE] == 1818 and span.attributes[CODE_NAME] == "RPC_S_CALL_CANCELLED"
        assert span.attributes[CANCELLED] is True
        assert span.status.status_code == StatusCode.ERROR and "1818" in (span.status.description or "")
        assert span.start_time <= span.events[0].timestamp <= span.events[-1].timestamp == span.end_time
    assert client.attributes[CANCEL_KIND] == kind
    assert server.attributes[CANCEL_KIND] == kind
    assert CANCEL_SEEN in server_events


def test_asyncio_client_and_server_spans_of_an_abortive_cancel(spans: Any, tmp_path: Path) -> None:
    asyncio.run(_asyncio_abortive(*spans, tmp_path))


async def _asyncio_abortive(provider: TracerProvider, exporter: InMemorySpanExporter, tmp_path: Path) -> None:
    async with EmulatorServer(port=0, tracing=provider) as srv:
        async with AsyncClient(srv.target, tracing=provider, log=tmp_path / "client.jsonl") as client:
            call = client.start(Script("hold", on_cancel="abort"))
            await dispatched(srv, call.call_id)
            call.cancel()
            with pytest.raises(CallError) as err:
                await call
            assert err.value.code == 1818
        got = await finished(exporter, 2)
        server_entries = srv.journal.get(call.call_id).history()   # type: ignore[union-attr]
    client_events = call.history   # the client recorded no event: its events are its states
    check_pair(got, call.call_id, client_events, event_names(server_entries), ABORTIVE)
    assert client_events == ["C", "WComp", "Can", "WComp", "Comp", "End"]


def test_a_pipe_cancelled_mid_stream_is_one_trace_of_two_spans(spans: Any) -> None:
    asyncio.run(_pipe_abortive(*spans))


async def _pipe_abortive(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    async with EmulatorServer(port=0, tracing=provider) as srv:
        async with AsyncClient(srv.target, tracing=provider) as client:
            pipe = client.pipe("out", PipeScript(outcome="hold", interval=0.005)).start()
            for _ in range(2):
                assert await pipe.pull() is not None
            pipe.cancel()
            with pytest.raises(CallError) as err:
                await pipe.result(timeout=10)
            assert err.value.code == 1818
        got = await finished(exporter, 2)
        server_entries = srv.journal.get(pipe.call_id).history()   # type: ignore[union-attr]
    check_pair(got, pipe.call_id, pipe.history, event_names(server_entries), ABORTIVE)


def test_sync_client_spans_of_a_non_abortive_cancel(spans: Any) -> None:
    asyncio.run(_sync_non_abortive(*spans))


async def _sync_non_abortive(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    async with EmulatorServer(port=0, tracing=provider) as srv:
        client = Client(srv.target, tracing=provider)
        try:
            call = client.start(Script("hold", on_cancel="abort"))
            await dispatched(srv, call.call_id)
            call.cancel(abortive=False)
            with pytest.raises(CallError) as err:
                await asyncio.to_thread(call.result, 10)
            assert err.value.code == 1818
        finally:
            client.close()
        got = await finished(exporter, 2)
        server_entries = srv.journal.get(call.call_id).history()   # type: ignore[union-attr]
    client_span = next(s for s in got if s.kind == SpanKind.CLIENT)
    # the notice's reply (cancel_sent) may arrive before or after the server's answer
    client_states = [e.name for e in client_span.events if e.name in call.history]
    assert client_states == call.history
    check_pair(got, call.call_id, [e.name for e in client_span.events], event_names(server_entries), NON_ABORTIVE)


def test_untraced_calls_carry_no_trace_context(spans: Any) -> None:
    asyncio.run(_untraced(*spans))


async def _untraced(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    async with EmulatorServer(port=0, tracing=provider) as srv:
        async with AsyncClient(srv.target) as client:   # tracing off on the client
            await client.start(Script("complete"))
        got = await finished(exporter, 1)
    assert len(got) == 1 and got[0].kind == SpanKind.SERVER and got[0].parent is None
    assert got[0].status.status_code == StatusCode.UNSET and got[0].attributes[CODE] == 0
    assert CANCELLED not in got[0].attributes


def test_exporter_names_follow_the_otel_variables() -> None:
    assert exporter_names({}) == ["otlp_proto_http"]
    assert exporter_names({"OTEL_TRACES_EXPORTER": "none"}) == []
    assert exporter_names({"OTEL_TRACES_EXPORTER": "console,otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == [
        "console", "otlp_proto_grpc"]
    assert exporter_names({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                           "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}) == ["otlp_proto_http"]


def test_otel_flag_joins_the_cli_call_and_the_server_in_one_trace(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    srv = start_server(tmp_path, "--otel")
    try:
        # a non-abortive cancel: the client waits for the server's answer, so the server has its span
        # however late it dispatches (an abortive cancel 0.3 s in could beat the dispatch on a busy
        # machine: the server never saw the call and had no span to join)
        result = cli("call", "--target", srv.target, "--outcome", "hold", "--cancel-after", "0.3", "--non-abortive",
                     "--otel")
        assert result.returncode == 1 and "1818" in result.stderr
        client_traces = set(re.findall(r'"trace_id": "(0x[0-9a-f]+)"', result.stderr))
        assert len(client_traces) == 1
        assert '"callstate.side": "client"' in result.stderr and '"callstate.cancelled": true' in result.stderr
        assert '"trace_id"' not in result.stdout   # spans go to stderr: stdout is the call's output
    finally:
        assert srv.stop() == 0   # shutting down flushes the server's spans
    server_err = srv.stderr.read_text()
    assert client_traces == set(re.findall(r'"trace_id": "(0x[0-9a-f]+)"', server_err)), server_err[-2000:]
    assert '"callstate.side": "server"' in server_err and '"kind": "SpanKind.SERVER"' in server_err


def test_bad_otel_settings_are_one_line(monkeypatch: pytest.MonkeyPatch, refused_target: str) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "bogus")
    result = cli("call", "--target", refused_target, "--otel")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "no exporter 'bogus'" in result.stderr and "console" in result.stderr
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
    result = cli("serve", "--otel", "--port", "0")
    assert result.returncode == 1 and "carrier-pigeon" in result.stderr and "Traceback" not in result.stderr


def test_readme_tracing_example_runs_as_shown(tmp_path: Path) -> None:
    readme = documentation()
    block = readme.split("<!-- tests/test_tracing.py runs this block -->\n```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "example.py"
    script.write_text(block)
    import subprocess
    import sys
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    shown = [line[2:] for line in block.splitlines() if line.startswith("# ")]
    assert out.stdout.splitlines() == shown


def test_load_otel_traces_every_call(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    result = cli("load", "--target", server.target, "--calls", "20", "--cancel", "abortive=50", "--seed", "1",
                 "--otel", timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    call_ids = re.findall(r'"callstate.call_id": "(\w+)"', result.stderr)
    assert len(call_ids) == len(set(call_ids)) == 20   # one client span per call, all exported at exit
    assert result.stderr.count('"kind": "SpanKind.CLIENT"') == 20


def test_each_kind_of_call_is_traced_under_its_own_method(spans: Any) -> None:
    """Unary calls ride Emulator/Call, pipes PipeIn, PipeOut and PipeBoth: the spans of both
    sides are named by the method and carry it as rpc.method (pipes were all '.../Call')."""
    from callstate.client.pipe_drive import drive_pipe
    provider, exporter = spans

    async def go() -> dict[str, str]:
        kinds: dict[str, str] = {}
        async with EmulatorServer(port=0, tracing=provider) as srv:
            async with AsyncClient(srv.target, tracing=provider) as client:
                call = client.start(Script("complete"))
                await call
                kinds[call.call_id] = "Call"
                for kind, method in (("in", "PipeIn"), ("out", "PipeOut"), ("both", "PipeBoth")):
                    pipe = client.pipe(kind, PipeScript(outcome="complete", messages=1))
                    await drive_pipe(pipe, messages=1)
                    kinds[pipe.call_id] = method
            await finished(exporter, 8)
        return kinds

    kinds = asyncio.run(go())
    got = exporter.get_finished_spans()
    assert len(got) == 8
    for span in got:
        method = kinds[span.attributes["callstate.call_id"]]
        assert span.name == f"callstate.v1.Emulator/{method}" and span.attributes["rpc.method"] == method, span.name
        assert span.attributes["rpc.service"] == "callstate.v1.Emulator"


def test_call_pipe_otel_traces_the_pipe_and_sends_the_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`call --pipe ... --otel` emitted no client span, and the pipe path ignored --token."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    srv = start_server(tmp_path, "--token", "s3cret")
    try:
        result = cli("call", "--target", srv.target, "--pipe", "out", "--otel", "--token", "s3cret")
        assert result.returncode == 0, result.stderr[-2000:]
        assert '"name": "callstate.v1.Emulator/PipeOut"' in result.stderr
        assert '"callstate.side": "client"' in result.stderr and '"rpc.method": "PipeOut"' in result.stderr
    finally:
        srv.stop()


def test_export_at_exit_is_bounded_with_one_warning_line(capsys: pytest.CaptureFixture[str]) -> None:
    """An exporter that never gets through (no collector, a black-holed address) cannot hold
    the exit: `shutdown` gives up after its grace with one line saying where spans were going."""
    import threading
    from callstate.observe.tracing import shutdown

    release = threading.Event()

    class Stuck:
        def shutdown(self) -> None:
            release.wait(120)

    try:
        assert shutdown(Stuck(), "callstate call", grace=0.2) is False
    finally:
        release.set()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("callstate call: warning: OpenTelemetry spans not exported to ")
    assert "no answer within 0.2s" in err[0]


def test_an_export_that_already_failed_is_not_waited_for_at_exit(capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """No collector: the exporter's first attempt failed during the run, and its retries would
    fail on; the exit does not sit out the grace for them (it took 7.3 s), it says why at once."""
    import threading
    import time
    from callstate.observe import tracing

    trouble = tracing.ExportTrouble()
    trouble.first = "Failed to export span batch: [Errno 111] Connection refused"
    monkeypatch.setattr(tracing, "_TROUBLE", trouble)
    release = threading.Event()

    class Retrying:
        def shutdown(self) -> None:
            release.wait(120)

    t0 = time.monotonic()
    try:
        assert tracing.shutdown(Retrying(), "callstate call", grace=60) is False
    finally:
        release.set()
    assert time.monotonic() - t0 < 30, "waited for an export that had already failed"   # not the 60 s grace
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "([Errno 111] Connection refused)" in line, line


def test_no_collector_gives_one_warning_line_not_retry_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = s.getsockname()[1]   # closed again: nothing listens there
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{nobody}")
    srv = start_server(tmp_path)
    try:
        result = cli("call", "--target", srv.target, "--otel")
    finally:
        srv.stop()
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("final: 0 ") and len(lines) == 2, lines
    assert lines[1].startswith(f"callstate call: warning: OpenTelemetry spans not exported to http://127.0.0.1:{nobody}")
    assert "Transient error" not in result.stderr and "retry" not in result.stderr
