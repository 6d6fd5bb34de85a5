"""How every callstate client reaches a server: TLS, the bearer token and keepalive, in one place.

The sync `Client`, the asyncio `AsyncClient` and the CLI commands (`call`, `load`, `watch`,
`health`) all build their channels here:

    settings = ChannelSettings(tls_ca="ca.pem", token="s3cret", keepalive=30)
    channel = settings.aio_channel("server.example:50051")
    stub.Call(request, metadata=settings.metadata)   # the token goes with every RPC

The token is sent as call metadata (not as gRPC call credentials) so that it also works
over plaintext, e.g. a server bound to 127.0.0.1 with only a token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc

from callstate.files import PemSource, check_key_pair, check_validity, read_pem
from callstate.wire import AUTH_KEY, CODE_KEY, DEFAULT_KEEPALIVE, MIN_KEEPALIVE, bearer

# What a server's token check answers a call it turns away (no token, or the wrong one).
ACCESS_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def keepalive_options(keepalive: float | None) -> list[tuple[str, Any]]:
    """Client channel options so that a call to a server that stops answering fails (1722)
    within `keepalive` seconds: a ping every 0.4 x keepalive, which must be answered within
    0.4 x keepalive (the rest is slack for grpc's timers). Pings also go out while calls are
    held with no data moving (grpc's defaults would send at most two such pings, then none
    for five minutes). None or 0: grpc's defaults."""
    if not keepalive:
        return []
    period = int(max(keepalive, MIN_KEEPALIVE) * 400)
    return [("grpc.keepalive_time_ms", period), ("grpc.keepalive_timeout_ms", period),
            ("grpc.http2.ping_timeout_ms", period),   # grpc core also times pings out by this (60 s default)
            ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_time_between_pings_ms", period // 2)]


@dataclass(frozen=True)
class ChannelSettings:
    """TLS material, bearer token and keepalive of a client's channels.

    `tls_ca`: the CA that signed the server's certificate (turns TLS on; with `tls_cert`
    alone the system roots are used). `tls_cert` + `tls_key`: the client certificate, for a
    server that requires one (mutual TLS). `token`: sent as `authorization: Bearer <token>`.
    `keepalive`: seconds within which a silent server is given up on (None: no keepalive).
    `tls_server_name`: the name to check the server's certificate against, when the target
    address is not in it (e.g. an IP address).
    """

    tls_ca: PemSource = None
    tls_cert: PemSource = None
    tls_key: PemSource = None
    token: str | None = None
    keepalive: float | None = DEFAULT_KEEPALIVE
    tls: bool = False   # TLS with the system's root CAs and no client certificate
    tls_server_name: str | None = None
    metadata: tuple[tuple[str, str], ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("a client certificate needs both tls_cert and tls_key")
        if self.tls_server_name and not self.secure:   # else silently plaintext, token and all
            raise ValueError("tls_server_name checks the server's TLS certificate: it needs TLS (tls_ca, tls_cert "
                             "or tls=True)")
        if self.keepalive is not None and self.keepalive and self.keepalive < MIN_KEEPALIVE:
            raise ValueError(f"keepalive must be >= {MIN_KEEPALIVE:g} s (or 0/None for none)")
        if self.token is not None and (not self.token or not self.token.isprintable() or not self.token.isascii()):
            raise ValueError("the token must be non-empty printable ASCII")
        object.__setattr__(self, "metadata", ((AUTH_KEY, bearer(self.token)),) if self.token else ())

    @property
    def secure(self) -> bool:
        return self.tls or self.tls_ca is not None or self.tls_cert is not None

    def credentials(self) -> grpc.ChannelCredentials | None:
        """The channel's TLS credentials (None: plaintext). Reads the PEM files now, so a
        missing file fails here, at construction, rather than on the first call."""
        if not self.secure:
            return None
        check_key_pair(self.tls_cert, self.tls_key, "TLS client certificate")
        check_validity(self.tls_cert, "TLS client certificate")   # expired: the server would only close the connection
        return grpc.ssl_channel_credentials(root_certificates=read_pem(self.tls_ca, "TLS CA certificate"),
                                            private_key=read_pem(self.tls_key, "TLS client key"),
                                            certificate_chain=read_pem(self.tls_cert, "TLS client certificate"))

    def options(self, extra: list[tuple[str, Any]] | None = None) -> list[tuple[str, Any]]:
        opts = keepalive_options(self.keepalive)
        if self.tls_server_name and self.secure:
            opts.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return opts + list(extra or ())

    def aio_channel(self, target: str, options: list[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
        creds = self.credentials()
        try:
            if creds is None:
                return grpc.aio.insecure_channel(target, options=self.options(options))
            return grpc.aio.secure_channel(target, creds, options=self.options(options))
        except RuntimeError as exc:   # no loop running, and the thread's default one already used up
            raise RuntimeError(f"an AsyncClient belongs to an event loop: make it inside the loop that uses it "
                               f"(in a coroutine run by asyncio.run(), say) [{exc}]") from exc

    def sync_channel(self, target: str, options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
        creds = self.credentials()
        if creds is None:
            return grpc.insecure_channel(target, options=self.options(options))
        return grpc.secure_channel(target, creds, options=self.options(options))

    def explain(self, status: grpc.StatusCode | None, details: str | None, trailers: Any = None, *,
                tls_remedy: str = "pass --tls-ca") -> str:
        """`details` of a failed RPC, with what most likely went wrong when the connection
        itself failed (plaintext against TLS or the reverse, a certificate not trusted) or
        the server asked for a token. `trailers`: the RPC's trailing metadata; a status whose
        exact code the server's handler sent there (a scripted abort) gets no hint.
        `tls_remedy`: what to do when a plaintext connection meets a TLS server (a command
        without TLS options says so)."""
        text = " ".join((details or "").split())
        hint = ""
        if any(key == CODE_KEY for key, _ in trailers or ()):
            pass   # the handler chose it (an abort with code 5 is PERMISSION_DENIED): no access problem
        elif status == grpc.StatusCode.UNAVAILABLE:
            hint = self._connection_hint(text, tls_remedy)
        elif status in ACCESS_REFUSED and not self.token:
            hint = "pass --token or set CALLSTATE_TOKEN"
        elif status == grpc.StatusCode.UNIMPLEMENTED:
            hint = ("the server does not serve this method; a callstate server serves a user's methods only as "
                    "a stand-in, started with the schema: serve --proto, --descriptor-set or --reflect-from")
        return f"{text} ({hint})" if text and hint else text or hint

    def _connection_hint(self, text: str, tls_remedy: str) -> str:
        """What most likely went wrong when a call was UNAVAILABLE with these details ("" if unknown)."""
        if "error code 7)" in text or "REFUSED_STREAM" in text:
            return ("the server refused the call before taking it (HTTP/2 REFUSED_STREAM): more calls at once "
                    "on one connection than it allows (callstate serve --max-concurrent-streams, default 4096); "
                    "spread them over more connections (load --channels)")
        if "ping timeout" in text and self.keepalive:   # the TCP connection was made: no refusal, no TLS
            return (f"the server took the connection but answered nothing, not even keepalive pings, within "
                    f"{self.keepalive:g} s (--keepalive): is it stopped (SIGSTOP) or hung?")
        if "before receiving SETTINGS frame" in text:   # the TCP connection was made, and stayed silent
            return ("the server took the connection but sent nothing, not even HTTP/2's first frame: is it "
                    "stopped (SIGSTOP) or hung, or is something else listening there?")
        if "WRONG_VERSION_NUMBER" in text:
            return "the server does not speak TLS: drop the --tls-* options"
        if "Hostname Verification Check failed" in text:
            named = f"--tls-server-name {self.tls_server_name}" if self.tls_server_name else "the target's host"
            return (f"the server's certificate does not name {named}: connect by a name it holds, or pass "
                    f"--tls-server-name with one")
        if "certificate has expired" in text:
            return "the server's certificate has expired (or a CA certificate of its chain has): renew it"
        if "unsupported certificate purpose" in text:
            return ("the server's certificate is not one for a server (its extended key usage lacks serverAuth): "
                    "was it started with a client certificate as --tls-cert?")
        if "certificate is not yet valid" in text:
            return "the server's certificate is not valid yet: is this host's or the server's clock right?"
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return "the server's certificate is not signed by the CA given as --tls-ca"
        if "certificate signature failure" in text:   # a CA of the issuer's name, with another key
            return ("the server's certificate is not signed by the CA given as --tls-ca (a CA of the same name "
                    "but another key: were the certificates made again while the server kept the old ones?)")
        if "handshake" in text.lower() or "certificate" in text.lower():
            return "TLS handshake failed: check the certificates, or whether the server speaks TLS"
        if "Socket closed" in text or "Connection reset" in text:
            return ("the server closed the TLS connection: does it require a client certificate "
                    "(--tls-cert, --tls-key) signed by a CA it trusts?" if self.secure else
                    f"the server closed a plaintext connection: if it uses TLS, {tls_remedy}")
        return ""
