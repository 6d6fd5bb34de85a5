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

# A pipe call's script (a serialized callstate.v1.PipeScript) for the streaming methods whose
# first client message comes too late to carry it (PipeIn, PipeBoth); PipeOut takes it here too.
PIPE_SCRIPT_KEY: Final = "callstate-pipe-script-bin"
