"""OpenTelemetry spans from state entries: one span per call on each side.

A call's span starts at its first state (client C, server D) and ends at End, with every
state entered and every event as a span event at the entry's own time; the final MS-RPC
code and name are attributes, a non-zero code sets the status to ERROR, and a cancel (the
client's Can, the server's cancel_seen) marks the span `callstate.cancelled` with its kind.
The client injects the W3C trace context (OTel's configured propagator) into the call's
gRPC metadata and the server extracts it, so both spans join one trace. This is done in
callstate's own code rather than by opentelemetry-instrumentation-grpc, whose asyncio
client interceptor keeps an abortive cancel from reaching the server.

`provider_from_env()` builds an SDK tracer provider from the standard OTEL_* variables.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from importlib.metadata import entry_points
from typing import Any, Iterable

import grpc

from callstate import __version__, codes
from callstate.lifecycle import CLIENT, ENTER, END, PIPE_BOTH, PIPE_IN, PIPE_OUT, UNARY, kind_of_initial_move
from callstate.observe import ObserveError
from callstate.statelog import Entry
from callstate.v1 import callstate_pb2 as pb

try:
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
except ImportError as exc:   # pragma: no cover - exercised by installs without the extra
    raise ObserveError("tracing needs OpenTelemetry: pip install 'callstate[otel]'") from exc

SERVICE = pb.DESCRIPTOR.services_by_name["Emulator"].full_name
# each kind of call on its own method: a span is named and attributed by the method it rode
METHOD_BY_KIND = {UNARY: "Call", PIPE_IN: "PipeIn", PIPE_OUT: "PipeOut", PIPE_BOTH: "PipeBoth"}
SPAN_NAME = f"{SERVICE}/{METHOD_BY_KIND[UNARY]}"
# attribute names (rpc.* from the OTel semantic conventions, callstate.* our own)
CALL_ID = "callstate.call_id"
SIDE = "callstate.side"
CODE = "callstate.code"
CODE_NAME = "callstate.code_name"
CANCELLED = "callstate.cancelled"
CANCEL_KIND = "callstate.cancel_kind"
STATE, PREV, MOVE, DETAIL = "callstate.state", "callstate.prev", "callstate.move", "callstate.detail"
GRPC_STATUS = "rpc.grpc.status_code"

METHOD = "rpc.method"
RPC_SERVICE = "rpc.service"
_BASE_ATTRIBUTES = {"rpc.system": "grpc", RPC_SERVICE: SERVICE}


def span_name(kind: str) -> str:
    """The span (and `rpc.method`) of a call of `kind` (unary or a pipe kind)."""
    return f"{SERVICE}/{METHOD_BY_KIND.get(kind, METHOD_BY_KIND[UNARY])}"


def rpc_names(kind: str, method: str | None) -> tuple[str, str, str]:
    """A call's span name, `rpc.service` and `rpc.method`: a stand-in's call or a call on any
    method rides the user's method ("pkg.Svc/Method", named in its entries), the others the
    Emulator's method of their kind."""
    if method is not None:
        service, _, name = method.rpartition("/")
        return method, service, name
    return span_name(kind), SERVICE, METHOD_BY_KIND.get(kind, METHOD_BY_KIND[UNARY])


class CallTracer:
    """The entry observer of one side: `observe(entry)`; plus `headers(call_id)` (client:
    the trace context its request carries) and `dispatched(call_id, metadata)` (server:
    the caller's context, before the call's first entry)."""

    def __init__(self, side: str, provider: Any = None) -> None:
        self.side = side
        self._tracer = (provider if provider is not None else trace.get_tracer_provider()).get_tracer(
            "callstate", __version__)
        self._kind = SpanKind.CLIENT if side == CLIENT else SpanKind.SERVER
        self._spans: dict[str, Span] = {}
        self._parents: dict[str, Context] = {}
        self._cancelled: set[str] = set()

    def dispatched(self, call_id: str, metadata: Iterable[tuple[str, Any]] | None) -> None:
        carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
        self._parents[call_id] = propagate.extract(carrier)

    def headers(self, call_id: str) -> tuple[tuple[str, str], ...]:
        span = self._spans.get(call_id)
        if span is None:
            return ()
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        return tuple(carrier.items())

    def observe(self, e: Entry) -> None:
        ns = int(e.t * 1e9)
        if e.event == ENTER and e.prev is None:
            name, service, method = rpc_names(kind_of_initial_move(e.move) or UNARY, e.method)
            span = self._spans[e.call_id] = self._tracer.start_span(
                name, context=self._parents.pop(e.call_id, None), kind=self._kind, start_time=ns,
                attributes={**_BASE_ATTRIBUTES, RPC_SERVICE: service, METHOD: method, CALL_ID: e.call_id,
                            SIDE: self.side})
        else:
            span = self._spans.get(e.call_id)
            if span is None:   # began before tracing was on
                return
        attributes: dict[str, Any] = {STATE: e.state}
        if e.prev is not None:
            attributes[PREV] = e.prev
        if e.move is not None:
            attributes[MOVE] = e.move
        if e.detail:
            attributes[DETAIL] = e.detail
        if e.cancel is not None:
            attributes[CANCEL_KIND] = e.cancel
            if e.call_id not in self._cancelled:   # the span keeps the first cancel's kind
                self._cancelled.add(e.call_id)
                span.set_attributes({CANCELLED: True, CANCEL_KIND: e.cancel})
        final = e.event == ENTER and e.state == END
        if final and e.code is not None:
            attributes[CODE] = e.code
        span.add_event(e.state if e.event == ENTER else e.event, attributes, timestamp=ns)
        if final:
            del self._spans[e.call_id]
            self._cancelled.discard(e.call_id)
            self._end(span, e, ns)

    @staticmethod
    def _end(span: Span, e: Entry, ns: int) -> None:
        if e.code is not None:
            span.set_attributes({CODE: e.code, CODE_NAME: codes.name(e.code)})
            if e.code != codes.RPC_S_OK:
                span.set_status(Status(StatusCode.ERROR, codes.describe(e.code)))
        if e.grpc_status:
            status = getattr(grpc.StatusCode, e.grpc_status, None)
            if status is not None:
                span.set_attribute(GRPC_STATUS, status.value[0])
        span.end(end_time=ns)


# -- the exporter, from the standard environment variables -------------------------------------

EXPORTER_GROUP = "opentelemetry_traces_exporter"
_OTLP_BY_PROTOCOL = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
_PACKAGE = {"otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc",
            "otlp_proto_http": "opentelemetry-exporter-otlp-proto-http (pip install 'callstate[otlp]')"}


def exporter_names(environ: dict[str, str] | os._Environ[str] = os.environ) -> list[str]:
    """OTEL_TRACES_EXPORTER (default otlp), with otlp resolved by OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL
    (default http/protobuf); none means no exporter."""
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()]
    out = []
    for name in names:
        if name == "none":
            continue
        if name == "otlp":
            protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                        or "http/protobuf").strip()
            if protocol not in _OTLP_BY_PROTOCOL:
                raise ObserveError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not one of "
                                   f"{', '.join(_OTLP_BY_PROTOCOL)}")
            name = _OTLP_BY_PROTOCOL[protocol]
        out.append(name)
    return out


def _exporter(name: str) -> Any:
    if name == "console":   # stderr: stdout may be the state log, or a command's own output
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter
        return ConsoleSpanExporter(out=sys.stderr)
    found = [ep for ep in entry_points(group=EXPORTER_GROUP) if ep.name == name]
    if not found:
        known = sorted({ep.name for ep in entry_points(group=EXPORTER_GROUP)} | {"none", "otlp"})
        hint = f"; install {_PACKAGE[name]}" if name in _PACKAGE else ""
        raise ObserveError(f"OTEL_TRACES_EXPORTER: no exporter {name!r} is installed (installed: "
                           f"{', '.join(known)}){hint}")
    return found[0].load()()


# -- exit: a bounded flush, and one line when spans were not exported ---------------------------

EXPORT_GRACE = 3.0   # seconds `shutdown()` waits for the last spans to go out
# where the exporters and the batch processor log their retries and failures
_EXPORT_LOGGERS = ("opentelemetry.exporter", "opentelemetry.sdk._shared_internal", "opentelemetry.sdk.trace.export")


class ExportTrouble(logging.Handler):
    """Keeps the exporters' retry and failure messages (one per attempt, for as long as no
    collector answers) off the terminal; `shutdown()` turns them into one warning line."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.first: str | None = None
        self.say_at_once: str | None = None   # a long-running command's name: warn at the first failure
        self.said = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.first is None:
            self.first = record.getMessage()
            if self.say_at_once is not None:   # a server runs for hours: do not wait for its exit to say so
                print(_warning(self.say_at_once, _reason(self.first)), file=sys.stderr, flush=True)
                self.said = True

    def install(self) -> "ExportTrouble":
        for name in _EXPORT_LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(self)
            logger.propagate = False
        return self


_TROUBLE: ExportTrouble | None = None


def _reason(message: str) -> str:
    """The gist of an exporter's failure message (they quote whole exception chains)."""
    found = re.search(r"\[Errno -?\d+\] [^\"')(]+", message)
    return found.group(0).strip() if found else (message if len(message) <= 120 else message[:117] + "...")


def _endpoint() -> str:
    names = exporter_names()
    if any(n.startswith("otlp") for n in names):
        grpc_ = "otlp_proto_grpc" in names
        return (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or ("http://localhost:4317" if grpc_ else "http://localhost:4318"))
    return ", ".join(names) or "none"


def shutdown(provider: Any, prog: str, grace: float = EXPORT_GRACE) -> bool:
    """Flush and shut down `provider` within `grace` seconds (an exporter retrying a collector
    that is not there would hold the exit for many seconds). When spans could not be exported,
    one warning line on stderr naming where they were going. True when all went out."""
    closer = threading.Thread(target=provider.shutdown, name="callstate-otel-shutdown", daemon=True)
    closer.start()
    deadline = time.monotonic() + grace
    # an export that already failed is not waited for again: its retries would only fail on
    while closer.is_alive() and time.monotonic() < deadline and (_TROUBLE is None or _TROUBLE.first is None):
        closer.join(0.05)
    trouble = _TROUBLE.first if _TROUBLE is not None else None
    if not closer.is_alive() and trouble is None:
        return True
    if trouble and _TROUBLE is not None and _TROUBLE.said:
        return False   # said when it happened: one line in all
    why = _reason(trouble) if trouble else f"no answer within {grace:g}s"
    print(_warning(prog, why), file=sys.stderr)
    return False


def _warning(prog: str, why: str) -> str:
    return (f"{prog}: warning: OpenTelemetry spans not exported to {_endpoint()} ({why}); "
            "start a collector there, set OTEL_EXPORTER_OTLP_ENDPOINT, or OTEL_TRACES_EXPORTER=none")


def provider_from_env(service_name: str, warn_at_once: str | None = None) -> Any:
    """An SDK TracerProvider: resource from OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES (service
    name `service_name` when unset), sampler from OTEL_TRACES_SAMPLER, one batch processor
    (OTEL_BSP_*) per exporter of OTEL_TRACES_EXPORTER. At exit pass it to `shutdown()` (a bounded flush).
    With `warn_at_once` (a long-running command's name) the warning line comes at the first failed
    export rather than at exit."""
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ObserveError("tracing needs the OpenTelemetry SDK: pip install 'callstate[otel]'") from exc
    exporters = [_exporter(name) for name in exporter_names()]
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    global _TROUBLE
    if _TROUBLE is None:
        _TROUBLE = ExportTrouble().install()
    _TROUBLE.say_at_once = warn_at_once
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)   # `shutdown()` bounds the exit
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
