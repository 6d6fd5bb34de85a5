"""Calls and pipes on any method of a user's schema, through the same caller's lifecycle.

Only three things differ from `callstate.v1.Emulator`'s own calls, and they live here:

* the messages: the user's request type (given as a message or as its proto JSON form, a
  dict or text), the response type as the reply;
* where the call's script, id and cancel key travel: metadata (`callstate-script` as JSON,
  `callstate-call-id`, `callstate-cancel-key`), since a user's messages cannot carry them;
* how the RPC is made: a multicallable on the method's path, of the method's shape.

The cancel notice is the same `callstate.v1.Emulator/Cancel` with the call id and key: a
callstate stand-in serving the user's proto answers it; a server that is not callstate answers
UNIMPLEMENTED, and the cancel then escalates to abortive at once (notice.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from google.protobuf.message import Message

from callstate.lifecycle import PIPE_BOTH, PIPE_IN, PIPE_OUT, UNARY
from callstate.script import Script, validate, validate_request
from callstate.script_header import SCRIPT_HEADER, encode
from callstate.v1 import callstate_pb2 as pb
from callstate.wire import CANCEL_KEY_KEY

if TYPE_CHECKING:   # callstate.schema (protobuf's pools, json_format) loads on a user's first method call
    from callstate.schema import Method, Schema

RequestLike = Message | Mapping[str, Any] | str | None


def request_message(method: Method, request: RequestLike, where: str = "") -> Message:
    """The method's request from a message, a dict or JSON text (None: the empty message).

    A message of another type (by full name), JSON that does not fit or a request that leaves
    a proto2 required field unset is a SchemaError naming `where` (default: the method) and the field."""
    from callstate.schema import SchemaError, message_from_json
    from callstate.schema.model import require_initialized

    where = where or method.name
    if request is None:
        return method.request()
    if isinstance(request, Message):
        have, want = request.DESCRIPTOR.full_name, method.request.DESCRIPTOR.full_name
        if have != want:
            raise SchemaError(f"{where}: the request must be a {want}, got a {have}")
        require_initialized(request, where)
        return request   # a message of generated code serializes the same as the schema's own
    return message_from_json(method.request, request, where=where)


def resolve(schema: Schema | None, method: str | Method, load: Callable[[], Schema]) -> tuple[Schema | None, Method]:
    """The Method by name from `schema`, loading it first (`load`: from reflection) when there is none."""
    if not isinstance(method, str):   # a Method already
        return schema, method
    if schema is None:
        schema = load()
    return schema, schema.method(method)


def multicallable(channel: Any, method: Method) -> Any:
    """The RPC of the method's shape on a sync or grpc.aio channel."""
    factory = {UNARY: channel.unary_unary, PIPE_OUT: channel.unary_stream, PIPE_IN: channel.stream_unary,
               PIPE_BOTH: channel.stream_stream}[method.kind]
    # registered once with the channel, as generated stubs do: grpc then skips a per-call lookup of the path
    return factory(method.path, request_serializer=_serialize, response_deserializer=method.response.FromString,
                   _registered_method=True)


def _serialize(msg: Message) -> bytes:
    return msg.SerializeToString()


def script_metadata(script: pb.Script | pb.PipeScript | None, cancel_key: str) -> tuple[tuple[str, str], ...]:
    """The metadata a call on a user's method carries beyond its id and the token."""
    extra: tuple[tuple[str, str], ...] = ((CANCEL_KEY_KEY, cancel_key),)
    return extra + ((SCRIPT_HEADER, _header(script)),) if script is not None else extra


_HEADERS: dict[tuple[str, bytes], str] = {}   # a load run sends a few scripts many times: encode each once


def _header(script: pb.Script | pb.PipeScript) -> str:
    key = (script.DESCRIPTOR.name, script.SerializeToString(deterministic=True))
    text = _HEADERS.get(key)
    if text is None:
        if len(_HEADERS) >= 1024:
            _HEADERS.clear()
        text = _HEADERS[key] = encode(script)
    return text


@dataclass(frozen=True)
class MethodRequest:
    """A unary call on a user's method: what `AsyncCall` / `Call` send in place of a CallRequest."""

    method: Method
    message: Message
    call_id: str
    cancel_key: str
    script: pb.Script | None = None

    @classmethod
    def make(cls, method: Method, request: RequestLike, script: Script | pb.Script | None, call_id: str,
             cancel_key: str) -> "MethodRequest":
        from callstate.schema import SchemaError

        if method.kind != UNARY:
            raise SchemaError(f"{method.name} is a {_SHAPES[method.kind]} method: make it with pipe(method=...)")
        from callstate.schema.model import require_initialized

        proto = script.to_proto() if isinstance(script, Script) else script
        message = request_message(method, request)   # checked whole, when given
        if request is None:   # the empty message it stands for: a proto2 type's required fields may not do
            require_initialized(message, method.name)
        return cls(method, message, call_id, cancel_key, proto)

    def validate(self) -> None:
        """The script's checks, as the server makes them (RequestError naming the field)."""
        if self.script is not None:
            validate(self.script)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return script_metadata(self.script, self.cancel_key)


def method_name(request: "pb.CallRequest | MethodRequest") -> str | None:
    """The user's method a unary call rides ("pkg.Svc/Method"), None for `Emulator/Call`'s own."""
    return request.method.name if isinstance(request, MethodRequest) else None


_SHAPES = {PIPE_OUT: "server-streaming", PIPE_IN: "client-streaming", PIPE_BOTH: "bidi-streaming", UNARY: "unary"}


def shape(kind: str) -> str:
    """A call kind in gRPC's words (server-streaming, ...)."""
    return _SHAPES[kind]


def check_request(request: pb.CallRequest | MethodRequest) -> None:
    """What the server would refuse, checked before the call goes out (RequestError naming the field)."""
    if isinstance(request, MethodRequest):
        request.validate()
    else:
        validate_request(request)


def pipe_kind_of(method: Method, kind: str | None) -> str:
    """The pipe kind of a streaming method (its shape); a kind given that differs is a SchemaError."""
    from callstate.schema import SchemaError

    if method.kind == UNARY:
        raise SchemaError(f"{method.name} is a unary method: make it with prepare(method=...) or start(method=...)")
    if kind is not None and kind != method.kind:
        raise SchemaError(f"{method.name} is {shape(method.kind)} (a {method.kind!r} pipe), not {kind!r}")
    return method.kind
