"""Assemble and run the emulator: Emulator + Journal + health + reflection.

`EmulatorServer` is also the hook for test harnesses that want a server in
their own event loop:

    async with EmulatorServer(port=0) as srv:
        target = srv.target   # "127.0.0.1:<port>"
"""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection   # its service name; served by server/reflection.py

from callstate import in_process
from callstate.lifecycle import SERVER
from callstate.files import check_key_pair, check_validity, read_pem, write_atomically
from callstate.script import REQUEST_FRAMING, Limits
from callstate.statelog import Entry
from callstate.logfile import StateLog
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from callstate.server.emulator import EmulatorConfig, EmulatorServicer
from callstate.server.journal import Journal
from callstate.server.journal_service import JournalServicer
from callstate.server.security import (MAX_HEALTH_WATCHES, BoundedHealth, TokenInterceptor, check_client_ca,
                                       keepalive_options, server_credentials, why_not_bound)
from callstate.wire import DEFAULT_KEEPALIVE

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["Emulator"].full_name,
    pb.DESCRIPTOR.services_by_name["Journal"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


# Stopping a watched server: how long the calls that stop_all ended get to log their End (whatever
# --grace), and the watchers' streams to send what they hold, before gRPC cancels them all.
STOP_SETTLE = 1.0
PENDING_FLOOR = 3000   # grpc core's own hard limit of calls waiting for the application
WATCH_DRAIN = 2.0


@dataclass
class ServerOptions:
    bind: str = "127.0.0.1"
    port: int = 50051
    log: str | Path | IO[bytes] | None = None   # "-" = stdout, a path, or None for no state log
    journal_size: int = 10_000
    emulator: EmulatorConfig = field(default_factory=EmulatorConfig)
    grace: float = 2.0
    journal_bytes: int = 64 * 1024 * 1024      # ended calls' histories kept, in bytes
    journal_events_per_call: int = 64          # events (cancel notices...) stored per call; more are counted
    max_watchers: int = 64                     # Journal Watch/Follow streams at once
    watch_buffer: int = 100_000                # entries queued per watcher before it drops (and is told)
    max_concurrent_streams: int = 4096         # HTTP/2 streams per connection (0: unbounded, gRPC's default)
    max_health_watches: int = MAX_HEALTH_WATCHES   # grpc.health.v1 Watch streams at once
    metrics_port: int | None = None   # serve Prometheus /metrics on this port (0 picks one); needs callstate[metrics]
    metrics_bind: str = "127.0.0.1"
    metrics_token: str | None = None   # /metrics then needs Authorization: Bearer <metrics_token>
    metrics_idle_timeout: float = 10.0   # a /metrics connection without a request this long is closed
    tracing: Any = False   # True (the global provider) or an OpenTelemetry TracerProvider: a span per call
    # A stand-in (server/standin.py): every method of this callstate.schema.Schema served by the
    # emulator's lifecycle, scripted by the rules file at `rules` (reloaded when it changes).
    schema: Any = None
    rules: str | Path | None = None

    # Access control (README, "Security"). TLS: PEM paths or bytes; tls_client_ca requires
    # client certificates signed by it (mutual TLS). token: callstate.v1 RPCs must carry
    # `authorization: Bearer <token>`. keepalive: seconds within which a silent client's
    # calls are cancelled (None: grpc's defaults).
    tls_cert: str | Path | bytes | None = None
    tls_key: str | Path | bytes | None = None
    tls_client_ca: str | Path | bytes | None = None
    token: str | None = None
    keepalive: float | None = DEFAULT_KEEPALIVE

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


class EmulatorServer:
    def __init__(self, options: ServerOptions | None = None, **overrides: object) -> None:
        self.options = options or ServerOptions()
        for key, value in overrides.items():
            setattr(self.options, key, value)
        self.journal: Journal | None = None
        self.log: StateLog | None = None
        self.emulator: EmulatorServicer | None = None
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._health: HealthServicer | None = None
        self.metrics: Any = None   # the /metrics endpoint, when metrics are on (its .port, .url)
        self._on_dispatch: Callable[[str, Any], None] | None = None   # tracing: the caller's trace context
        self.standin: Any = None      # the user's services, when options.schema is set
        self.rules_file: Any = None   # their rules file, watched for changes

    @property
    def target(self) -> str:
        host = self.options.bind
        return f"{'127.0.0.1' if host in ('0.0.0.0', '') else '[::1]' if host == '::' else host}:{self.port}"

    async def start(self) -> int:
        opts = self.options
        self.journal = journal = Journal(opts.journal_size, opts.watch_buffer, max_bytes=opts.journal_bytes,
                                         max_events_per_call=opts.journal_events_per_call,
                                         max_watchers=opts.max_watchers, id_retention=opts.emulator.id_retention,
                                         max_ended_ids=opts.emulator.max_retained_ids)
        try:
            self.log = log = StateLog(opts.log)
        except OSError as exc:   # its own words ("[Errno 22] Invalid argument") name neither the file nor the log
            raise OSError(f"cannot open the state log {str(opts.log)!r}: {exc.strerror or exc}") from None
        try:
            credentials = _credentials(opts)
        except (OSError, ValueError):
            log.close()
            raise
        self.emulator = EmulatorServicer(opts.emulator, journal, self._entry_sink(journal, log))
        self.emulator.on_dispatch = self._on_dispatch
        # no request larger than the largest valid one is even read into Python
        # gRPC refuses a larger message before any handler sees it, which a pipe's handler cannot tell
        # from its caller's cancel: below the default payload limit the server refuses it itself
        # (a request's validation, each push), so both sides log the same refusal
        max_request = max(opts.emulator.limits.max_payload_bytes, Limits().max_payload_bytes) + REQUEST_FRAMING
        server_options: list[tuple[str, int]] = [("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", max_request)]
        if opts.max_concurrent_streams:
            server_options.append(("grpc.max_concurrent_streams", opts.max_concurrent_streams))
        # Calls grpc core holds until the event loop takes them: past its default (1000, some
        # refused at random up to 3000) a burst had calls ended CANCELLED by core, never dispatched,
        # which their callers took for a cancel (1818). Up to --max-in-flight they are taken, and
        # beyond it refused by the emulator with 1723.
        pending = max(PENDING_FLOOR, opts.emulator.max_in_flight)
        server_options += [("grpc.server.max_pending_requests", pending),
                           ("grpc.server.max_pending_requests_hard_limit", pending)]
        server = grpc.aio.server(options=server_options + keepalive_options(opts.keepalive),
                                 interceptors=[TokenInterceptor(opts.token)] if opts.token else None)
        pb_grpc.add_EmulatorServicer_to_server(self.emulator, server)
        pb_grpc.add_JournalServicer_to_server(JournalServicer(journal), server)
        self._health = BoundedHealth(opts.max_health_watches)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        try:
            served = SERVICE_NAMES + self._add_standin(server)
        except ValueError:
            log.close()
            self._close_metrics()
            raise
        address = host_port(opts.bind, opts.port)
        try:
            self.port = (server.add_secure_port(address, credentials) if credentials is not None
                         else server.add_insecure_port(address))
        except RuntimeError:
            log.close()
            self._close_metrics()
            raise OSError(f"cannot bind {address}: {why_not_bound(opts.bind, opts.port)}") from None
        try:
            await server.start()
        except BaseException:
            self._close_metrics()
            raise
        for name in SERVICE_NAMES[:2] + served[len(SERVICE_NAMES):] + ("",):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        in_process.serving(self.port, asyncio.get_running_loop(), opts.bind)   # a client on this loop must not block on it
        if self.rules_file is not None:
            self.rules_file.start()
        return self.port

    def _add_standin(self, server: grpc.aio.Server) -> tuple[str, ...]:
        """Reflection (v1 and v1alpha), and the user's services when a schema is given: their names."""
        from callstate.server.reflection import serve_reflection, server_pool

        schema = self.options.schema
        if schema is None:
            if self.options.rules is not None:
                raise ValueError("a rules file needs a schema to stand in for (ServerOptions.schema)")
            serve_reflection(server, SERVICE_NAMES[:-1], server_pool())
            return ()
        from callstate.files import load_rules
        from callstate.server.standin import RulesFile, Standin

        assert self.emulator is not None
        rules = None if self.options.rules is None else load_rules(self.options.rules, schema,
                                                                   self.options.emulator.limits)
        self.standin = standin = Standin(schema, self.emulator, rules)
        standin.register(server)
        if self.options.rules is not None:
            self.rules_file = RulesFile(self.options.rules, standin)
        serve_reflection(server, SERVICE_NAMES[:-1] + tuple(standin.service_names), server_pool(schema))
        return tuple(standin.service_names)

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving; every call in flight ends (and is logged) before the log closes."""
        if self._server is None:
            return
        server, self._server = self._server, None
        in_process.stopped(self.port, asyncio.get_running_loop())
        assert self._health is not None and self.emulator is not None and self.journal is not None
        if self.rules_file is not None:
            await self.rules_file.stop()
        loop = asyncio.get_running_loop()
        grace = self.options.grace if grace is None else grace
        deadline = loop.time() + grace
        await self._health.enter_graceful_shutdown()
        self.emulator.stop_all()   # held calls end now (1722) instead of at the grace deadline
        if self.journal.streams:
            # gRPC's stop cancels the Watch/Follow streams with the calls when the grace ends (at once
            # with --grace 0, their queued entries lost): they first get the End of every call ending
            # now, then their streams end whole
            await self.journal.wait_idle(timeout=max(grace, STOP_SETTLE))
            self.journal.close_watchers()
            await self.journal.wait_streams_done(timeout=WATCH_DRAIN)
        stopping = asyncio.ensure_future(server.stop(max(deadline - loop.time(), 0.0)))
        await self.journal.wait_idle(timeout=2.0)
        self.journal.close_watchers()   # watchers have seen every End; their streams would hold up the grace
        await stopping
        await self.journal.wait_idle(timeout=2.0)
        if self.log is not None:
            self.log.close()
        self._close_metrics()

    def _entry_sink(self, journal: Journal, log: StateLog) -> Callable[[Entry], None]:
        """Where the server's entries go: the state log, fanned out to metrics and tracing
        only when they are on (off, the hot path is the log's own append)."""
        opts = self.options
        if opts.metrics_port is None and not opts.tracing:
            return log.sink
        from callstate.observe import fan_out

        observers = []
        if opts.tracing:
            from callstate.observe.tracing import CallTracer
            tracer = CallTracer(SERVER, None if opts.tracing is True else opts.tracing)
            self._on_dispatch = tracer.dispatched
            observers.append(tracer.observe)
        if opts.metrics_port is not None:
            from callstate.observe.metrics import AsyncMetricsEndpoint, Metrics
            metrics = Metrics(journal)
            observers.append(metrics.side(SERVER).observe)
            self.metrics = AsyncMetricsEndpoint(metrics.registry, opts.metrics_bind, opts.metrics_port,
                                                opts.metrics_token, opts.metrics_idle_timeout)
        return fan_out(log.sink if log.enabled else None, observers)

    def _close_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def __aenter__(self) -> "EmulatorServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def write_port_file(path: str, port: int) -> None:
    """The bound port, for a harness that waits for the file: written whole (`write_atomically`),
    so the file never exists empty."""
    write_atomically(path, f"{port}\n".encode())


def stop_signals() -> tuple[int, ...]:
    """The signals that stop the server gracefully: SIGINT, SIGTERM, and SIGHUP (its terminal went
    away), which would otherwise kill it with the last entries unwritten and its calls never
    ended in the log; unless it is ignored (nohup), so that such a server keeps running."""
    hangup = getattr(signal, "SIGHUP", None)
    keep = hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN
    return (signal.SIGINT, signal.SIGTERM) + ((hangup,) if keep else ())


async def serve(options: ServerOptions, *, port_file: str | None = None, ready: IO[str] = sys.stderr,
                early: list[int] | None = None) -> int | None:
    """Run until SIGINT/SIGTERM/SIGHUP (`stop_signals`), then stop gracefully and flush the state log.
    `early`: stop signals the caller noted while the server started (its own handler's list, which
    it fills until the handlers here replace it): one there stops the server before it serves (no
    port file), and is returned; None when it served."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    srv = EmulatorServer(options)
    await srv.start()
    for sig in stop_signals():
        loop.add_signal_handler(sig, stop.set)
    if early:
        await srv.stop()
        return early[0]
    if srv.metrics is not None:
        print(f"callstate: metrics on {srv.metrics.url}", file=ready, flush=True)
    if port_file:
        try:
            write_port_file(port_file, srv.port)
        except OSError as exc:
            await srv.stop()
            raise OSError(f"--port-file {port_file}: {exc.strerror or exc}") from None
    access = ("mutual TLS" if options.tls_client_ca is not None else "TLS") if options.tls else "plaintext"
    print(f"callstate: serving callstate.v1.Emulator and callstate.v1.Journal on {host_port(options.bind, srv.port)} "
          f"({access}{', token required' if options.token else ''}; "
          f"state log: {_describe_log(options.log)}, default mix: {options.emulator.mix}{_describe_loop(loop)})",
          file=ready, flush=True)
    if srv.standin is not None:
        from callstate.rules import describe
        print(f"callstate: standing in for {', '.join(srv.standin.service_names)} ({srv.standin.describe_methods()}; "
              f"rules: {describe(srv.standin.rules) + ' from ' + str(options.rules) if options.rules else 'none'})",
              file=ready, flush=True)
    await stop.wait()
    print("callstate: stopping; ending calls in flight", file=ready, flush=True)
    await srv.stop()
    assert srv.journal is not None
    dispatched = srv.journal.dispatched
    print(f"callstate: stopped after {dispatched} call{'' if dispatched == 1 else 's'} "
          f"({srv.journal.in_flight} left in flight)", file=ready, flush=True)
    return None


def host_port(host: str, port: int) -> str:
    """host:port as a target names it: an IPv6 address in brackets ([::1]:50051)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _credentials(opts: ServerOptions) -> grpc.ServerCredentials | None:
    """TLS server credentials from the options (None: plaintext); OSError/ValueError naming
    what is wrong."""
    if opts.tls_cert is None and opts.tls_key is None:
        if opts.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if opts.tls_cert is None or opts.tls_key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    check_key_pair(opts.tls_cert, opts.tls_key, "TLS certificate")
    check_validity(opts.tls_cert, "TLS certificate")
    cert = read_pem(opts.tls_cert, "TLS certificate")
    key = read_pem(opts.tls_key, "TLS key")
    client_ca = read_pem(opts.tls_client_ca, "TLS client CA")
    if client_ca is not None:
        check_client_ca(client_ca, opts.tls_client_ca)
    assert cert is not None and key is not None
    return server_credentials(cert, key, client_ca)


def check_tls(opts: ServerOptions) -> None:
    """The checks of the TLS material that serve() makes, for the command line to refuse bad
    files as a usage error (exit 2) before it starts anything: OSError/ValueError naming the file."""
    _credentials(opts)


def _describe_loop(loop: asyncio.AbstractEventLoop) -> str:
    """The loop serve --loop auto took (uvloop, or asyncio where uvloop is not installed)."""
    return f", event loop: {type(loop).__module__.split('.')[0]}"


def _describe_log(target: object) -> str:
    return "off" if target is None else "stdout" if target == "-" else str(target)
