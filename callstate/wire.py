"""Names of the wire contract beyond the proto: metadata keys and call ids."""

from __future__ import annotations

import os
from typing import Final, Iterator

# The client's call id travels in the request and in this metadata key; an abort's exact
# MS-RPC code travels in this trailer, so a client in any language can read it.
CALL_ID_KEY: Final = "callstate-call-id"
CODE_KEY: Final = "callstate-code"
# Journal.Watch's response headers carry this once the stream is subscribed: headers without it
# are someone else's (a proxy answering for a server it cannot reach, before its error status).
WATCHING_KEY: Final = "callstate-watching"

# The channel options of a Follow reader that may fall behind (a Locust worker's, on a starved
# gevent hub): a small stream window, not one grown by bandwidth probing. A reader behind then holds
# back the server's writes, the watcher's queue fills meanwhile, and the reader catches up in
# batches of up to the server's FOLLOW_BATCH entries, not by reading, a wake-up each, the thousands
# of 10 ms batches a grown window had let through. A Locust follower at 48 users on a machine
# loaded 20-29 times over its 2 cores: 0.23-0.29 s behind with 16 KiB (64 KiB: 0.6-0.8 s; probed: 1.4 s).
FOLLOWER_WINDOW = (("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16 * 1024))


# Call ids and cancel keys are 128 bits from the OS's random source, drawn for 256 at a time:
# os.urandom is a system call that lets go of the GIL, and a hot path that made one per call
# handed the GIL to the state-log writer thread and waited for it back at every call.
_SECRETS_PER_DRAW: Final = 256
_secrets: Iterator[str] = iter(())


def _draw() -> Iterator[str]:
    raw = os.urandom(16 * _SECRETS_PER_DRAW).hex()
    # a list's iterator, not a generator: next() on it is one step under the GIL, so threads
    # sharing it never get the same secret (two that find it empty each draw afresh)
    return iter([raw[i:i + 32] for i in range(0, len(raw), 32)])


def _secret() -> str:
    global _secrets
    try:
        return next(_secrets)
    except StopIteration:
        _secrets = fresh = _draw()
        return next(fresh)


def _forget_secrets() -> None:
    """A forked child must not hand out the secrets its parent holds next."""
    global _secrets
    _secrets = iter(())


os.register_at_fork(after_in_child=_forget_secrets)


def new_call_id() -> str:
    """Unguessable: 128 random bits, as hex (each drawn once)."""
    return _secret()

# A bearer token travels in this metadata key as "Bearer <token>" (servers started with
# --token require it on the Emulator and Journal services); CLI commands read it from
# this environment variable when --token is not given.
AUTH_KEY: Final = "authorization"
TOKEN_ENV: Final = "CALLSTATE_TOKEN"
METRICS_TOKEN_ENV: Final = "CALLSTATE_METRICS_TOKEN"   # serve --metrics-token, kept off the command line (ps)

# Keepalive: a peer that stops answering is given up on within this many seconds.
DEFAULT_KEEPALIVE: Final = 30.0
MIN_KEEPALIVE: Final = 1.0


def bearer(token: str) -> str:
    return f"Bearer {token}"


def bearer_credentials(value: bytes) -> bytes:
    """The token of an `authorization` value sent as `Bearer <token>` (b"" if it is not one).
    The scheme's name is case-insensitive and may be followed by several spaces (RFC 7235 2.1:
    `bearer x` is the same credential); the token itself is compared as sent."""
    scheme, _, token = value.strip().partition(b" ")
    return token.lstrip(b" ") if scheme.lower() == b"bearer" else b""


# Longest cancel key a server accepts (new_cancel_key makes 32 characters).
MAX_CANCEL_KEY: Final = 128


# A pipe call's cancel key travels in this metadata key (a stream has no request message to
# carry it, as CallRequest.cancel_key does for unary calls).
CANCEL_KEY_KEY: Final = "callstate-cancel-key"


def new_cancel_key() -> str:
    """A call's secret: a cancel notice must repeat it to reach the call."""
    return _secret()

# A pipe call's script (a serialized callstate.v1.PipeScript) for the streaming methods whose
# first client message comes too late to carry it (PipeIn, PipeBoth); PipeOut takes it here too.
PIPE_SCRIPT_KEY: Final = "callstate-pipe-script-bin"

# Services a callstate server runs itself: a stand-in never serves them from a user's schema
# (a schema read from another callstate server, or a vendored health.proto, holds them too),
# so no rule can answer their methods.
OWN_SERVICE_PREFIXES: Final = ("callstate.v1.", "grpc.health.v1.", "grpc.reflection.")
