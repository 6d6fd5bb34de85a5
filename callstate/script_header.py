"""A script carried in metadata, for calls whose own messages cannot hold one (any user proto).

`callstate-script` holds JSON with the fields of `Script` (unary) or `PipeScript` (pipes): the
names the CLI writes (`{"outcome": "abort", "abort_code": 4321, "on_cancel": "ignore",
"at": "after-out"}`), or the proto JSON form (`"OUTCOME_ABORT"`, `"abortCode"`).
`callstate-script-bin` holds the serialized message. Both sides use this one codec: the
client encodes, the server decodes and refuses a bad header before dispatch (87, naming the
field).
"""

from __future__ import annotations

from typing import Any, Final, Mapping

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from callstate.lifecycle import UNARY
from callstate.pipe_script import BREACH_NAMES, BREACHES, POINT_NAMES, POINTS
from callstate.script import ON_CANCEL, ON_CANCEL_NAMES, OUTCOME_NAMES, OUTCOMES, ScriptError
from callstate.v1 import callstate_pb2 as pb

SCRIPT_HEADER: Final = "callstate-script"
SCRIPT_HEADER_BIN: Final = "callstate-script-bin"
MAX_HEADER_BYTES: Final = 8 * 1024   # a script is a few fields; anything longer is refused

# field -> (CLI name -> enum value) for the enum fields the CLI spells its own way
_ENUM_FIELDS: Final[Mapping[str, Mapping[str, int]]] = {"outcome": OUTCOMES, "on_cancel": ON_CANCEL, "at": POINTS,
                                                       "breach": BREACHES}
_ENUM_NAMES: Final[Mapping[str, Mapping[int, str]]] = {"outcome": OUTCOME_NAMES, "on_cancel": ON_CANCEL_NAMES,
                                                       "at": POINT_NAMES, "breach": BREACH_NAMES}


def script_type(kind: str) -> type[pb.Script] | type[pb.PipeScript]:
    return pb.Script if kind == UNARY else pb.PipeScript


def decode(metadata: Mapping[str, str | bytes], kind: str) -> pb.Script | pb.PipeScript | None:
    """The script a call's metadata carries, or None; ScriptError naming the field when bad.

    The caller still validates the script's values (`validate`, `validate_pipe`); this only
    turns the header into the message.
    """
    raw_bin = metadata.get(SCRIPT_HEADER_BIN)
    raw = metadata.get(SCRIPT_HEADER)
    if raw_bin is not None and raw is not None:
        raise ScriptError(SCRIPT_HEADER, f"send {SCRIPT_HEADER} or {SCRIPT_HEADER_BIN}, not both")
    if raw_bin is not None:
        data = raw_bin if isinstance(raw_bin, bytes) else raw_bin.encode()
        if len(data) > MAX_HEADER_BYTES:
            raise ScriptError(SCRIPT_HEADER_BIN, f"{len(data)} bytes, more than {MAX_HEADER_BYTES}")
        msg = script_type(kind)()
        try:
            msg.ParseFromString(data)
        except DecodeError:
            raise ScriptError(SCRIPT_HEADER_BIN, f"not a serialized {msg.DESCRIPTOR.name}") from None
        return msg
    if raw is None:
        return None
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    if len(text) > MAX_HEADER_BYTES:
        raise ScriptError(SCRIPT_HEADER, f"{len(text)} bytes, more than {MAX_HEADER_BYTES}")
    try:
        fields = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ScriptError(SCRIPT_HEADER, f"not JSON ({exc})") from None
    if not isinstance(fields, dict):
        raise ScriptError(SCRIPT_HEADER, "must be a JSON object of script fields")
    return from_fields(fields, kind)


def from_fields(fields: Mapping[str, Any], kind: str) -> pb.Script | pb.PipeScript:
    """A script message from a dict of its fields, CLI names or proto JSON names alike."""
    msg = script_type(kind)()
    known = {f.name for f in msg.DESCRIPTOR.fields} | {f.json_name for f in msg.DESCRIPTOR.fields}
    plain: dict[str, Any] = {}
    for key, value in fields.items():
        if key not in known:
            raise ScriptError(str(key), f"not a field of {msg.DESCRIPTOR.name}; expected one of "
                                        f"{', '.join(f.name for f in msg.DESCRIPTOR.fields)}")
        names = _ENUM_FIELDS.get(_snake(key, msg))
        if names is not None and isinstance(value, str) and value in names:
            value = names[value]
        plain[key] = value
    try:
        json_format.ParseDict(plain, msg)
    except json_format.ParseError as exc:
        field = next((k for k in plain if k in str(exc)), SCRIPT_HEADER)
        raise ScriptError(field, " ".join(str(exc).split())) from None
    return msg


def encode(script: pb.Script | pb.PipeScript) -> str:
    """The header value for a script: compact JSON with the CLI's names (readable in a proxy's log)."""
    fields = json_format.MessageToDict(script, preserving_proto_field_name=True, use_integers_for_enums=True)
    for name, names in _ENUM_NAMES.items():
        if name in fields:
            fields[name] = names.get(fields[name], fields[name])
    return orjson.dumps(fields).decode()


def _snake(key: str, msg: pb.Script | pb.PipeScript) -> str:
    for f in msg.DESCRIPTOR.fields:
        if key in (f.name, f.json_name):
            return f.name
    return key
