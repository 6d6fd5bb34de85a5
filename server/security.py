"""Access control of the server: TLS credentials, the bearer-token check, keepalive options.

The token guards the `callstate.v1` services (Emulator and Journal) as a server interceptor,
installed only when a token is set; health and reflection stay open (see docs/security.md). A call's ownership (its cancel key) is checked by the Emulator itself.
"""

from __future__ import annotations

import errno
import hmac
import re
import socket
import ssl
from typing import Any, Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from callstate.wire import AUTH_KEY, MIN_KEEPALIVE, bearer_credentials

GUARDED_PREFIX = "/callstate.v1."

# Clients may ping this often (every 0.4 s at their smallest keepalive, 1 s); more often
# than this floor counts as a ping strike and the connection is closed (too_many_pings).
MIN_CLIENT_PING_MS = int(MIN_KEEPALIVE * 400) // 2


def server_credentials(cert: bytes, key: bytes, client_ca: bytes | None) -> grpc.ServerCredentials:
    """TLS with `cert`/`key`; with `client_ca`, mutual TLS: a client certificate signed by it is required."""
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def check_client_ca(pem: bytes, source: object) -> None:
    """ValueError naming the file unless the client CA holds a certificate: grpc would refuse it
    only by failing to bind, with no word of the CA."""
    # only the certificate blocks: text around them (openssl's "Bag Attributes", a subject in UTF-8) is no concern
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.DOTALL)
    try:
        if not blocks:
            raise ssl.SSLError("no certificate")
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cadata=b"\n".join(blocks).decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError):
        name = repr(str(source)) if not isinstance(source, bytes) else "(given as bytes)"
        raise ValueError(f"the TLS client CA {name} holds no usable certificate (a CA certificate in PEM: "
                         f"-----BEGIN CERTIFICATE-----)") from None


def why_not_bound(host: str, port: int) -> str:
    """Why grpc could not listen on host:port (it says only "Failed to bind"): the operating
    system's own answer to the same bind, or the name that does not resolve."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"{host!r} does not resolve to an address of this host ({exc.strerror})"
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as grpc's listener does
            try:
                probe.bind(address)
            except OSError as exc:
                hint = " (another process listens there; --port 0 picks a free port)" \
                    if exc.errno == errno.EADDRINUSE else ""
                return f"{exc.strerror}{hint}"
    return "grpc refused the address"


def keepalive_options(keepalive: float | None) -> list[tuple[str, Any]]:
    """The server pings its clients too, so a caller that vanished without closing its
    connection (host down, process stopped) has its calls cancelled within `keepalive` s;
    and it lets clients ping it while their calls are held with no data moving."""
    permit = [("grpc.keepalive_permit_without_calls", 1),
              ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_MS)]   # grpc's name for the
    # minimum interval between pings it *receives* (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS)
    if not keepalive:
        return permit
    period = int(max(keepalive, MIN_KEEPALIVE) * 400)   # as the clients do (client/channel.py)
    return [("grpc.keepalive_time_ms", period), ("grpc.keepalive_timeout_ms", period),
            ("grpc.http2.ping_timeout_ms", period),   # grpc core also times pings out by this (60 s default)
            ("grpc.http2.max_pings_without_data", 0)] + permit


_LOOPBACK = ("ipv4:127.", "ipv6:[::1]", "ipv6:[::ffff:127.", "unix:")


def caller_of(context: grpc.aio.ServicerContext) -> str:
    """Who a request comes from, for the bounds a caller must share across its connections: its
    client certificate's subject (mutual TLS), else its host. On the server's own host every
    process shares the address, so there each connection counts as a caller of its own."""
    try:
        auth = context.auth_context() or {}
    except Exception:  # noqa: BLE001 - a context torn down far enough to refuse the question
        auth = {}
    subject = auth.get("x509_subject") or auth.get("x509_common_name")
    if subject:
        return "cert:" + b",".join(subject).decode(errors="replace")
    peer = context.peer() or ""
    if peer.startswith(_LOOPBACK):
        return peer
    host, _, _port = peer.rpartition(":")
    return host or peer


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses callstate.v1 RPCs without `authorization: Bearer <token>`: UNAUTHENTICATED when
    missing, PERMISSION_DENIED when wrong (both reach a callstate client as 5
    ERROR_ACCESS_DENIED). The comparison takes constant time."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()
        self._missing = _refusal(grpc.StatusCode.UNAUTHENTICATED, "this server requires a bearer token")
        self._wrong = _refusal(grpc.StatusCode.PERMISSION_DENIED, "wrong bearer token")

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        if not details.method.startswith(GUARDED_PREFIX):
            return await continuation(details)
        for key, value in details.invocation_metadata or ():
            if key == AUTH_KEY:
                given = bearer_credentials(value if isinstance(value, bytes) else value.encode())
                if given and hmac.compare_digest(given, self._expected):
                    return await continuation(details)
                return self._wrong
        return self._missing


def _refusal(status: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def refuse(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(status, message)
    return grpc.unary_unary_rpc_method_handler(refuse)


MAX_HEALTH_WATCHES = 1024   # health Watch streams at once (open to anyone: no token guards health)
MAX_SERVICE_NAME = 256      # longer names are no service of ours, and each watched name costs a condition


class BoundedHealth(HealthServicer):
    """grpc's health service with its Watch streams bounded in number and in name length: health
    is open to all (the container check needs no token), so a stranger's streams must not grow
    the server without bound."""

    def __init__(self, max_watches: int = MAX_HEALTH_WATCHES) -> None:
        super().__init__()
        self.max_watches = max_watches
        self.watches = 0

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        if len(request.service) > MAX_SERVICE_NAME:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"service: at most {MAX_SERVICE_NAME} characters, got {len(request.service)}")
        if self.watches >= self.max_watches:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{self.watches} health watches already (the server's bound); use Check")
        self.watches += 1
        try:
            await super().Watch(request, context)
        finally:
            self.watches -= 1
