"""Middleboxes for the conformance tests: real proxies (nginx, HAProxy) each run as their own
process from a config the test writes, and deliberately broken TCP relays run in a thread."""

from __future__ import annotations

import asyncio
import functools
import shlex
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, NoReturn

from callstate.wire import CODE_KEY

# The http block around a server block (the README's, under "Test your gateway"): every
# path nginx writes is in the test's folder, and it stays in the foreground.
NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{server}
}}
"""
README_PORTS = (8080, 50051)   # the proxy's and the server's port in the README's examples


def readme_nginx_server() -> str:
    """The nginx server block the README shows."""
    from tests.documentation import blocks, section
    return blocks(section("Test your gateway"), "nginx")[0]


def readme_conformance_args(proxy_port: int, server_port: int) -> list[str]:
    """The README's `callstate conformance --serve-port ...` command, on the test's ports."""
    from tests.documentation import section
    line = next(line for line in section("Test your gateway").splitlines()
                if line.startswith("callstate conformance --serve-port"))
    line = line.replace(f":{README_PORTS[0]}", f":{proxy_port}").replace(f" {README_PORTS[1]} ", f" {server_port} ")
    return shlex.split(line)[2:]


HAPROXY_CONF = """\
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend grpc_in
    bind 127.0.0.1:{port} proto h2
    default_backend callstate
backend callstate
    server emulator 127.0.0.1:{upstream} proto h2
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")
            time.sleep(0.05)


class ProxyProcess:
    """nginx or HAProxy in the foreground as a child process, stopped by its PID."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.port, self.log = port, log
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
        try:
            wait_listening(port, self.proc)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"{argv[0]} did not start: {log.read_text(errors='replace')[-2000:]}") from None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def nginx_conf(tmp: Path, port: int, upstream: int, server_block: str | None = None) -> Path:
    """nginx.conf for the README's server block (or `server_block`), on `port` to `upstream`."""
    block = server_block if server_block is not None else readme_nginx_server()
    block = block.replace(f":{README_PORTS[0]} ", f":{port} ").replace(f":{README_PORTS[1]};", f":{upstream};")
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / name).mkdir(exist_ok=True)
        (tmp / name).chmod(0o777)   # workers run as nobody when nginx starts as root
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, server=block))
    return conf


def start_nginx(tmp: Path, port: int, upstream: int, server_block: str | None = None) -> ProxyProcess:
    conf = nginx_conf(tmp, port, upstream, server_block)
    return ProxyProcess([shutil.which("nginx") or "nginx", "-c", str(conf), "-p", str(tmp), "-e",
                         str(tmp / "nginx-error.log")], port, tmp / "nginx-stderr.log")


def start_haproxy(tmp: Path, port: int, upstream: int) -> ProxyProcess:
    conf = tmp / "haproxy.cfg"
    conf.write_text(HAPROXY_CONF.format(port=port, upstream=upstream))
    return ProxyProcess([shutil.which("haproxy") or "haproxy", "-db", "-f", str(conf)], port, tmp / "haproxy.log")


# Traefik (file provider): an h2c entry point to an h2c service, every timeout off so held
# calls are judged by the row, not cut by a default.
TRAEFIK_STATIC = """\
entryPoints:
  grpc:
    address: "127.0.0.1:{port}"
    transport:
      respondingTimeouts: {{readTimeout: 0, writeTimeout: 0, idleTimeout: 0}}
providers:
  file: {{filename: "{dynamic}"}}
log: {{level: ERROR}}
"""
TRAEFIK_DYNAMIC = """\
http:
  routers:
    callstate: {{rule: "PathPrefix(`/`)", service: callstate, entryPoints: [grpc]}}
  services:
    callstate:
      loadBalancer:
        servers: [{{url: "h2c://127.0.0.1:{upstream}"}}]
"""
# Caddy: h2c in front, h2c to the server; flush_interval -1 streams responses as they come.
CADDYFILE = """\
{{
    admin off
    auto_https off
    servers {{
        protocols h1 h2c
    }}
}}
http://127.0.0.1:{port} {{
    reverse_proxy h2c://127.0.0.1:{upstream} {{
        flush_interval -1
        transport http {{
            versions h2c
        }}
    }}
}}
"""
# Apache httpd with mod_proxy_http2, h2c in front (Protocols h2c), h2c to the server.
APACHE_CONF = """\
ServerRoot "/etc/apache2"
PidFile {tmp}/apache.pid
Listen 127.0.0.1:{port}
ErrorLog {tmp}/apache-error.log
LogLevel warn
{user}
LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
LoadModule http2_module /usr/lib/apache2/modules/mod_http2.so
LoadModule proxy_module /usr/lib/apache2/modules/mod_proxy.so
LoadModule proxy_http2_module /usr/lib/apache2/modules/mod_proxy_http2.so
Protocols h2c http/1.1
H2Direct on
Timeout 600
ProxyTimeout 600
LimitRequestBody 0
ProxyPass / h2c://127.0.0.1:{upstream}/
ProxyPassReverse / h2c://127.0.0.1:{upstream}/
"""


def start_traefik(tmp: Path, port: int, upstream: int, binary: str = "traefik") -> ProxyProcess:
    dynamic, static = tmp / "traefik-dynamic.yml", tmp / "traefik.yml"
    dynamic.write_text(TRAEFIK_DYNAMIC.format(upstream=upstream))
    static.write_text(TRAEFIK_STATIC.format(port=port, dynamic=dynamic))
    return ProxyProcess([shutil.which(binary) or binary, f"--configFile={static}"], port, tmp / "traefik.log")


def start_caddy(tmp: Path, port: int, upstream: int, binary: str = "caddy") -> ProxyProcess:
    conf = tmp / "Caddyfile"
    conf.write_text(CADDYFILE.format(port=port, upstream=upstream))
    return ProxyProcess([shutil.which(binary) or binary, "run", "--config", str(conf), "--adapter", "caddyfile"],
                        port, tmp / "caddy.log")


def start_apache(tmp: Path, port: int, upstream: int, binary: str = "apache2") -> ProxyProcess:
    import os
    user = "User nobody\nGroup nogroup" if os.geteuid() == 0 else ""
    conf = tmp / "apache.conf"
    conf.write_text(APACHE_CONF.format(tmp=tmp, port=port, upstream=upstream, user=user))
    return ProxyProcess([shutil.which(binary) or binary, "-f", str(conf), "-DFOREGROUND"], port, tmp / "apache.log")


RST_STREAM = 0x3   # the HTTP/2 frame type of a stream's cancel


class BrokenRelay:
    """A TCP relay to 127.0.0.1:`upstream` that misbehaves on purpose: `cut_after` closes every
    connection that many seconds after it opened; `delay` holds every chunk that long, each
    way (order kept); `drop_rst` drops every HTTP/2 RST_STREAM frame the client sends, so no
    abortive cancel reaches the server; `stall_idle` goes silent on a connection once it has been
    idle that many seconds: it stays open, and nothing more crosses it either way (a middlebox
    that forgot the connection), so its calls hang with no code."""

    def __init__(self, upstream: int, *, cut_after: float | None = None, delay: float = 0.0,
                 drop_rst: bool = False, stall_idle: float | None = None) -> None:
        self.upstream, self.cut_after, self.delay, self.drop_rst = upstream, cut_after, delay, drop_rst
        self.stall_idle = stall_idle
        self.port = 0
        self.cuts = 0
        self.dropped = 0
        self.stalls = 0   # connections gone silent
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the relay did not start")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        tasks = asyncio.all_tasks(self._loop)   # the connections' pumps: end them before the loop
        for task in tasks:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return
        idle = _Idle(self) if self.stall_idle is not None else None
        upward = (self._drop_rst_frames(reader, up_writer) if self.drop_rst
                  else self._pump(reader, up_writer, idle))
        pumps = [asyncio.ensure_future(upward),
                 asyncio.ensure_future(self._pump(up_reader, writer, idle))]
        _, pending = await asyncio.wait(pumps, timeout=self.cut_after, return_when=asyncio.FIRST_COMPLETED)
        if self.cut_after is not None and len(pending) == 2:
            self.cuts += 1
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    idle: _Idle | None = None) -> None:
        if not self.delay:
            while data := await reader.read(65536):
                if idle is not None and idle.silent():
                    continue   # read and dropped: the connection stays open, silent
                writer.write(data)
                await writer.drain()
            return
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def later() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    return
                writer.write(data)
                await writer.drain()
        sender = asyncio.ensure_future(later())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((loop.time() + self.delay, data))
            queue.put_nowait((loop.time() + self.delay, b""))   # EOF, after what is still delayed
            await sender
        finally:
            sender.cancel()

    async def _drop_rst_frames(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Client to server, frame by frame: the 24-byte preface, then 9-byte headers (length,
        type, flags, stream) and payloads; RST_STREAM (type 3) goes nowhere."""
        try:
            writer.write(await reader.readexactly(24))
            while True:
                header = await reader.readexactly(9)
                payload = await reader.readexactly(int.from_bytes(header[:3], "big"))
                if header[3] == RST_STREAM:
                    self.dropped += 1
                    continue
                writer.write(header + payload)
                await writer.drain()
        except asyncio.IncompleteReadError:
            return

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class _Idle:
    """One relayed connection's activity, for BrokenRelay's `stall_idle`."""

    def __init__(self, relay: BrokenRelay) -> None:
        self.relay, self.last, self.stalled = relay, time.monotonic(), False

    def silent(self) -> bool:
        """True once the connection has been idle `stall_idle` seconds (for good); else marks activity."""
        now = time.monotonic()
        if not self.stalled and now - self.last > (self.relay.stall_idle or 0):
            self.stalled = True
            self.relay.stalls += 1
        self.last = now
        return self.stalled


def method_shape(method: str) -> tuple[bool, bool]:
    """(client-streaming, server-streaming) of a gRPC method path, from callstate's descriptors;
    an unknown method as unary (the server answers it UNIMPLEMENTED)."""
    from google.protobuf import descriptor_pool

    import callstate.v1.callstate_pb2  # noqa: F401 - registers the service descriptors
    try:
        found = descriptor_pool.Default().FindMethodByName(method.lstrip("/").replace("/", "."))
    except KeyError:
        return False, False
    return found.client_streaming, found.server_streaming


class RewritingGrpcProxy:
    """A gRPC proxy (grpc.aio, every call shape, in a thread) that forwards every call to
    127.0.0.1:`upstream`, records the initial metadata each unary answer came with (none for a
    trailers-only response), and breaks what crosses it on purpose:

    * `drop_code_trailer` removes the `callstate-code` trailer; `max_message` truncates status
      messages (any call shape);
    * `buffer_responses` holds a response stream until it ends and sends it whole only when
      it ends OK: an error status goes out alone, its messages lost;
    * `swap_responses` delivers each response stream's first two messages the other way round;
    * `half_duplex` reads the whole request stream before it opens the call upstream;
    * `hold_answer` forwards a request stream as it comes, but holds a client-streaming call's
      answer until the caller half-closes (as Traefik 3 was seen to);
    * `max_request_messages` forwards that many messages of a request stream, then half-closes
      it upstream (the rest go nowhere);
    * `hold_notices` never forwards nor answers a cancel notice (Emulator/Cancel): it stays
      unanswered until its caller gives up (a proxy stalled for the notice, the call forwarded)."""

    def __init__(self, upstream: int, *, drop_code_trailer: bool = False, max_message: int | None = None,
                 buffer_responses: bool = False, half_duplex: bool = False,
                 max_request_messages: int | None = None, swap_responses: bool = False,
                 hold_answer: bool = False, hold_notices: bool = False) -> None:
        self.upstream, self.drop_code_trailer, self.max_message = upstream, drop_code_trailer, max_message
        self.buffer_responses, self.half_duplex = buffer_responses, half_duplex
        self.max_request_messages, self.swap_responses = max_request_messages, swap_responses
        self.hold_answer, self.hold_notices = hold_answer, hold_notices
        self.held_notices = 0   # cancel notices hold_notices kept unanswered
        self.held_answers = 0   # answers hold_answer kept until the caller's half-close
        self.port = 0
        self.rewritten = 0
        self.streams = 0      # streaming calls forwarded (any of the three streaming shapes)
        self.truncated = 0    # request streams max_request_messages cut short
        self.initial_metadata: list[tuple[tuple[str, str | bytes], ...]] = []   # per unary call, as the server sent it
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the gRPC proxy did not start")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _serve(self) -> None:
        import grpc

        self._stop = asyncio.Event()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.upstream}")
        proxy = self

        def upstream_args(context: grpc.aio.ServicerContext) -> dict[str, Any]:
            metadata = tuple((k, v) for k, v in context.invocation_metadata() or () if k.startswith("callstate-"))
            return {"metadata": metadata, "timeout": context.time_remaining()}

        async def fail(err: grpc.aio.AioRpcError, context: grpc.aio.ServicerContext) -> NoReturn:
            trailers = tuple(err.trailing_metadata() or ())
            details = err.details() or ""
            if proxy.drop_code_trailer:
                trailers = tuple((k, v) for k, v in trailers if k != CODE_KEY)
            if proxy.max_message is not None:
                details = details[:proxy.max_message]
            proxy.rewritten += 1
            await context.abort(err.code(), details, trailers)
            raise AssertionError("context.abort returned")

        async def requests_of(requests: AsyncIterator[bytes]) -> Any:
            if proxy.half_duplex:   # the whole request stream first
                return [m async for m in requests]
            if proxy.max_request_messages is None:
                return requests
            return truncated(requests, proxy.max_request_messages)

        async def truncated(requests: AsyncIterator[bytes], n: int) -> AsyncIterator[bytes]:
            forwarded = 0
            async for m in requests:
                if forwarded == n:
                    proxy.truncated += 1
                    return
                forwarded += 1
                yield m

        async def responses_of(call: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            held: list[bytes] = []
            first: bytes | None = None   # swap_responses: the first message, until the second is out
            try:
                async for n, m in aiter_numbered(call):
                    if proxy.buffer_responses:
                        held.append(m)
                    elif proxy.swap_responses and n == 1:
                        first = m
                    else:
                        yield m
                        if first is not None:
                            yield first
                            first = None
            except grpc.aio.AioRpcError as err:
                await fail(err, context)   # what buffer_responses held is lost with it
            finally:
                call.cancel()   # the caller cancelled (or it is over): so does the proxy, upstream
            for m in held + ([first] if first is not None else []):
                yield m

        def relayed(requests: AsyncIterator[bytes], half_closed: asyncio.Event) -> AsyncIterator[bytes]:
            """The caller's messages, read as they come by a task of their own (so the proxy sees the
            half-close even once the upstream call has ended), for the upstream call."""
            queue: asyncio.Queue[bytes | None] = asyncio.Queue()

            async def read() -> None:
                try:
                    async for m in requests:
                        queue.put_nowait(m)
                finally:
                    half_closed.set()
                    queue.put_nowait(None)
            reader = asyncio.ensure_future(read())

            async def forward() -> AsyncIterator[bytes]:
                while (m := await queue.get()) is not None:
                    yield m
                await reader
            return forward()

        async def aiter_numbered(call: Any) -> AsyncIterator[tuple[int, bytes]]:
            n = 0
            async for m in call:
                n += 1
                yield n, m

        async def unary_unary(request: bytes, context: grpc.aio.ServicerContext, *, method: str) -> bytes:
            if proxy.hold_notices and method == "/callstate.v1.Emulator/Cancel":
                proxy.held_notices += 1
                await asyncio.Event().wait()   # until the caller cancels it (or the proxy stops)
            call = channel.unary_unary(method)(request, **upstream_args(context))
            try:
                proxy.initial_metadata.append(tuple(await call.initial_metadata() or ()))
                return await call
            except grpc.aio.AioRpcError as err:
                await fail(err, context)
            finally:
                call.cancel()

        async def unary_stream(request: bytes, context: grpc.aio.ServicerContext, *,
                               method: str) -> AsyncIterator[bytes]:
            proxy.streams += 1
            async for m in responses_of(channel.unary_stream(method)(request, **upstream_args(context)), context):
                yield m

        async def stream_unary(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext, *,
                               method: str) -> bytes:
            proxy.streams += 1
            half_closed = asyncio.Event()
            if proxy.hold_answer:
                requests = relayed(requests, half_closed)
            call = channel.stream_unary(method)(await requests_of(requests), **upstream_args(context))
            try:
                answer = await call
                if proxy.hold_answer and not half_closed.is_set():
                    proxy.held_answers += 1
                    await half_closed.wait()
                return answer
            except grpc.aio.AioRpcError as err:
                await fail(err, context)
            finally:
                call.cancel()

        async def stream_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext, *,
                                method: str) -> AsyncIterator[bytes]:
            proxy.streams += 1
            call = channel.stream_stream(method)(await requests_of(requests), **upstream_args(context))
            async for m in responses_of(call, context):
                yield m

        handlers = {(False, False): (grpc.unary_unary_rpc_method_handler, unary_unary),
                    (False, True): (grpc.unary_stream_rpc_method_handler, unary_stream),
                    (True, False): (grpc.stream_unary_rpc_method_handler, stream_unary),
                    (True, True): (grpc.stream_stream_rpc_method_handler, stream_stream)}

        class Forward(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
                make, behaviour = handlers[method_shape(details.method)]
                # a partial of a coroutine (or async generator) function is one too: grpc.aio runs it on its loop
                return make(functools.partial(behaviour, method=details.method))

        server = grpc.aio.server()
        server.add_generic_rpc_handlers((Forward(),))
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._ready.set()
        await self._stop.wait()
        await server.stop(1)
        await channel.close()

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
