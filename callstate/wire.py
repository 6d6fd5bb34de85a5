"""Names of the wire contract beyond the proto: metadata keys and call ids."""

from __future__ import annotations

import os
from typing import Final

# The client's call id travels in the request and in this metadata key; an abort's exact
# MS-RPC code travels in this trailer, so a client in any language can read it.
CALL_ID_KEY: Final = "callstate-call-id"
CODE_KEY: Final = "callstate-code"


def new_call_id() -> str:
    """Unguessable: 128 random bits, as hex."""
    return os.urandom(16).hex()

# A bearer token travels in this metadata key as "Bearer <token>" (servers started with
# --token require it on the Emulator and Journal services); CLI commands read it from
# this environment variable when --token is not given.
AUTH_KEY: Final = "authorization"
TOKEN_ENV: Final = "CALLSTATE_TOKEN"

# Keepalive: a peer that stops answering is given up on within this many seconds.
DEFAULT_KEEPALIVE: Final = 30.0
MIN_KEEPALIVE: Final = 1.0


def bearer(token: str) -> str:
    return f"Bearer {token}"


# Longest cancel key a server accepts (new_cancel_key makes 32 characters).
MAX_CANCEL_KEY: Final = 128


# A pipe call's cancel key travels in this metadata key (a stream has no request message to
# carry it, as CallRequest.cancel_key does for unary calls).
CANCEL_KEY_KEY: Final = "callstate-cancel-key"


def new_cancel_key() -> str:
    """A call's secret: a cancel notice must repeat it to reach the call."""
    return os.urandom(16).hex()
# A pipe call's script (a serialized callstate.v1.PipeScript) for the streaming methods whose
# first client message comes too late to carry it (PipeIn, PipeBoth); PipeOut takes it here too.
PIPE_SCRIPT_KEY: Final = "callstate-pipe-script-bin"
