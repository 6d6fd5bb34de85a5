"""What a stand-in decided about one call of a user's method before its dispatch.

The emulator's handlers take it in place of what `callstate.v1` messages carry (call id,
cancel key, script), and answer with its reply instead of a CallReply or PipeMessage: the
lifecycle itself is the one `Emulator/Call` and the pipes follow.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from callstate.script import Mix
from callstate.v1 import callstate_pb2 as pb


@dataclass(slots=True)
class Answer:
    call_id: str
    cancel_key: str
    script: pb.Script | pb.PipeScript | None   # the header's or the rule's, validated; None: draw from a mix
    reply: Message          # the response for complete; a server stream's every message
    method: str             # "pkg.Svc/Method": named in each state-log entry
    rule: str | None = None   # the rule that answered (its name or "rules[N]")
    mix: Mix | None = None    # the rule's own mix, drawn from when the script has no outcome
    oversize: str | None = None   # the request is over the server's payload limit: why the call ends 87


class BadPush(ValueError):
    """A streamed request the stand-in cannot decode as its method's request type (the caller's
    .proto differs from the served one): raised by the request stream, the call ends 87 with
    this line, as a push over the payload limit does (not as a cancel, and not left hanging)."""
