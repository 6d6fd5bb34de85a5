"""A user's gRPC schema as data: a FileDescriptorSet made into a pool, its methods and messages.

Pure: bytes in, descriptors and message classes out. Where the set comes from (.proto files,
a descriptor-set file, a running server's reflection) is `callstate.schema.sources`' job.
"""

from __future__ import annotations

import difflib
import importlib
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from google.protobuf import descriptor_pb2, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FileDescriptor, MethodDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import DecodeError, Message

from callstate.bytes_json import NotABool, NotBase64, base64_bytes
from callstate.lifecycle import PIPE_BOTH, PIPE_IN, PIPE_OUT, UNARY
from callstate.wire import OWN_SERVICE_PREFIXES


class SchemaError(ValueError):
    """A schema that cannot be used: one line naming the file, method or field at fault."""


def kind_of_shape(client_streaming: bool, server_streaming: bool) -> str:
    """The callstate call kind a gRPC method shape maps onto (the call and the three pipes)."""
    if client_streaming and server_streaming:
        return PIPE_BOTH
    if client_streaming:
        return PIPE_IN
    if server_streaming:
        return PIPE_OUT
    return UNARY


SHAPE_NAMES = {UNARY: "unary", PIPE_OUT: "server-streaming", PIPE_IN: "client-streaming", PIPE_BOTH: "bidi-streaming"}


@dataclass(frozen=True)
class Method:
    """One RPC of the schema, with what a server or a client needs to serve or call it."""

    name: str                 # "pkg.Svc/Method", as grpcurl and the rules file write it
    descriptor: MethodDescriptor
    request: type[Message]
    response: type[Message]

    @property
    def path(self) -> str:
        """The HTTP/2 :path of the method, "/pkg.Svc/Method"."""
        return "/" + self.name

    @property
    def service(self) -> str:
        return self.descriptor.containing_service.full_name

    @property
    def kind(self) -> str:
        return kind_of_shape(self.descriptor.client_streaming, self.descriptor.server_streaming)


LISTED = 20   # the methods an error line lists: a schema of hundreds made it tens of kilobytes long


def listed(names: Sequence[str]) -> str:
    """The names for an error line: the first LISTED of them, and how many more there are."""
    more = len(names) - LISTED
    return ", ".join(names[:LISTED]) + (f", ... ({more} more)" if more > 0 else "") if names else "none"


def did_you_mean(wanted: str, names: Sequence[str]) -> str:
    """The hint for a method name spelt nearly as one of `names` (in another case, with a typo, without
    its package): ` (did you mean pkg.Svc/Method?)`; empty when none is near."""
    folded = {n.lower(): n for n in names}
    tail = [n for n in names if n.lower().endswith(("/" + wanted.lower(), "." + wanted.lower()))]
    close = tail or [folded[n] for n in difflib.get_close_matches(wanted.lower(), list(folded), n=1, cutoff=0.8)]
    return f" (did you mean {' or '.join(close[:3])}?)" if close else ""


def method_name(service: str, method: str) -> str:
    return f"{service}/{method}"


def normalise_method_name(name: str) -> str:
    """Accept "/pkg.Svc/Method", "pkg.Svc/Method" and "pkg.Svc.Method" (as grpcurl does)."""
    name = name.strip().lstrip("/")
    if "/" not in name and name.count(".") >= 1:
        service, _, method = name.rpartition(".")
        return method_name(service, method)
    return name


class Schema:
    """The services and messages of a FileDescriptorSet, in a pool of their own.

    A separate pool keeps a user's `foo.v1` from clashing with anything callstate or another
    schema registered in protobuf's default pool.
    """

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.files = files
        self.pool = DescriptorPool()
        added: dict[str, FileDescriptor] = {}
        for file in _in_dependency_order(files.file):
            try:   # each file's descriptor as added: upb's FindFileByName misses a name that is not ASCII
                added[file.name] = self.pool.AddSerializedFile(file.SerializeToString())
            except (TypeError, ValueError) as exc:
                raise SchemaError(f"{file.name}: {exc}") from None
        for name in WELL_KNOWN_FILES:   # what an Any may carry beyond the user's own types
            if _absent(self.pool, name) and (proto := _well_known(name)) is not None:
                try:
                    self.pool.Add(proto)
                except (TypeError, ValueError):   # the schema has these types under another file name
                    pass
        self.file_descriptors = [added[file.name] for file in files.file]   # the set's own, in its order
        self.methods: dict[str, Method] = {}
        for fd in self.file_descriptors:
            for service in fd.services_by_name.values():
                for m in service.methods:
                    name = method_name(service.full_name, m.name)
                    self.methods[name] = Method(
                        name=name, descriptor=m,
                        request=message_factory.GetMessageClass(m.input_type),
                        response=message_factory.GetMessageClass(m.output_type))

    @classmethod
    def from_bytes(cls, data: bytes, origin: str = "descriptor set") -> "Schema":
        files = descriptor_pb2.FileDescriptorSet()
        try:
            files.ParseFromString(data)
        except DecodeError as exc:
            raise SchemaError(f"{origin}: not a FileDescriptorSet ({exc})") from None
        if not files.file:
            raise SchemaError(f"{origin}: holds no .proto file")
        return cls(files)

    @property
    def services(self) -> list[str]:
        return sorted({m.service for m in self.methods.values()})

    @property
    def services_without_methods(self) -> list[str]:
        """The services the schema's files declare with no method (`services` lists only those with one)."""
        return sorted(service.full_name for fd in self.file_descriptors for service in fd.services_by_name.values()
                      if not service.methods)

    def method(self, name: str) -> Method:
        """The method by name, or a SchemaError that lists what the schema has."""
        wanted = normalise_method_name(name)
        try:
            return self.methods[wanted]
        except KeyError:
            pass
        # the schema's own methods first: one read by reflection from a callstate server lists its services too
        known = sorted(self.methods, key=lambda m: (m.startswith(OWN_SERVICE_PREFIXES), m))
        service = name.strip().strip("/")
        hint = (f" ({service} is a service: name one of its methods, {service}/Method)"
                if service in self.services else did_you_mean(wanted, known))
        raise SchemaError(f"unknown method {name!r}{hint}; the schema has: {listed(known)}")

    def message_class(self, full_name: str) -> type[Message]:
        try:
            return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))
        except KeyError:
            raise SchemaError(f"unknown message type {full_name!r}") from None


WELL_KNOWN_FILES = tuple(f"google/protobuf/{n}.proto" for n in (
    "any", "duration", "empty", "field_mask", "struct", "timestamp", "wrappers"))


def _absent(pool: DescriptorPool, name: str) -> bool:
    try:
        pool.FindFileByName(name)
    except KeyError:
        return True
    return False


def _well_known(name: str) -> descriptor_pb2.FileDescriptorProto | None:
    """A well-known type's file (google/protobuf/*.proto), which protobuf itself carries: a
    descriptor set built without --include_imports still loads when these are all it lacks."""
    if not name.startswith("google/protobuf/"):
        return None
    module = name.removeprefix("google/protobuf/").removesuffix(".proto") + "_pb2"
    try:
        found = importlib.import_module(f"google.protobuf.{module}").DESCRIPTOR
    except ImportError:
        return None
    proto = descriptor_pb2.FileDescriptorProto()
    found.CopyToProto(proto)
    return proto


def _in_dependency_order(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> list[descriptor_pb2.FileDescriptorProto]:
    by_name = {f.name: f for f in files}
    ordered: list[descriptor_pb2.FileDescriptorProto] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen:
            return
        if name in chain:
            raise SchemaError(f"{name}: import cycle through {' -> '.join(chain)}")
        file = by_name.get(name) or _well_known(name)
        if file is None:
            raise SchemaError(f"{chain[-1]}: imports {name}, which the descriptor set does not hold "
                              "(build it with --include_imports)")
        for dep in file.dependency:
            visit(dep, chain + (name,))
        seen.add(name)
        ordered.append(file)

    for name in by_name:
        visit(name, ())
    return ordered


def message_from_json(cls: type[Message], data: str | Mapping[str, Any], *, where: str,
                      pool: DescriptorPool | None = None, partial: bool = False) -> Message:
    """A message of `cls` from its proto JSON form (text or an already-parsed dict).

    An `Any` in it resolves its `@type` in `pool`, by default the pool `cls` comes from (a
    schema's own: protobuf's default pool knows none of a user's types). Unless `partial` (a
    pattern to match against, not a message to send), proto2's required fields must be set.
    Errors are one line naming `where` (a method, a rule, a file and line) and the field.
    """
    msg = cls()
    pool = pool if pool is not None else cls.DESCRIPTOR.file.pool
    if _a_list(data) and not is_well_known(cls.DESCRIPTOR.full_name):   # protobuf takes `[]` for `{}`
        raise SchemaError(f"{where}: {cls.DESCRIPTOR.full_name}: expected a JSON object of its fields, got an array")
    data = _base64_bytes(data, cls.DESCRIPTOR, where)
    try:
        if isinstance(data, str):
            json_format.Parse(data or "{}", msg, descriptor_pool=pool)
        else:
            json_format.ParseDict(dict(data), msg, descriptor_pool=pool)
    except (AttributeError, TypeError, KeyError) as exc:   # ParseDict lets these out (Parse wraps them so)
        raise SchemaError(f"{where}: {cls.DESCRIPTOR.full_name}: Failed to parse JSON: {type(exc).__name__}: "
                          f"{exc}") from None
    except json_format.ParseError as exc:
        own_json = is_well_known(cls.DESCRIPTOR.full_name)   # Timestamp's is a string, ...
        why = (not own_json and _not_an_object(data)) or " ".join(str(exc).split())
        raise SchemaError(f"{where}: {cls.DESCRIPTOR.full_name}: {why}") from None
    if not partial:
        require_initialized(msg, where)
    return msg


WELL_KNOWN = "google.protobuf."


def is_well_known(full_name: str) -> bool:
    """A protobuf well-known type (Timestamp, Struct, Any, a wrapper, ...): its JSON form is its
    own (a string, a value, `@type`), not an object of its fields."""
    return full_name.startswith(WELL_KNOWN)


def _base64_bytes(data: str | Mapping[str, Any], desc: Descriptor, where: str) -> str | Mapping[str, Any]:
    """`data` with its bytes values as base64 text (a dict's Python bytes objects encoded), or a
    SchemaError naming one that is not base64: protobuf's parser drops the characters it does
    not know, and would send other bytes than written. JSON text is only checked."""
    try:
        if not isinstance(data, str):
            return base64_bytes(data, desc)
        base64_bytes(json.loads(data or "{}"), desc)
    except NotABool as exc:
        raise SchemaError(f"{where}: {desc.full_name}: {exc}") from None
    except ValueError as exc:
        if not isinstance(exc, NotBase64):   # not JSON: protobuf's parser says so
            return data
        shown = exc.value if len(exc.value) <= 40 else exc.value[:37] + "..."
        raise SchemaError(f"{where}: {desc.full_name}: {exc.path}: {json.dumps(shown)} is not base64 (bytes are "
                          'written in base64 in JSON: "aGk=" for "hi")') from None
    return data


def require_initialized(msg: Message, where: str) -> None:
    """A SchemaError naming proto2's required fields that `msg` leaves unset: such a message
    cannot be serialized (grpc.aio would send an empty request in its place, and say nothing)."""
    if not msg.IsInitialized():
        missing = ", ".join(msg.FindInitializationErrors())
        raise SchemaError(f"{where}: {msg.DESCRIPTOR.full_name}: required field{'s' if ',' in missing else ''} "
                          f"not set: {missing}")


def _a_list(data: Any) -> bool:
    """A JSON array (text or a parsed list): protobuf parses an empty one as the empty message."""
    return data.lstrip().startswith("[") if isinstance(data, str) else isinstance(data, (list, tuple))


def _not_an_object(data: Any) -> str:
    """Why JSON text that is not an object cannot be a message ("" when it is one, or is not JSON):
    protobuf's own words would name a list's first item as a field."""
    try:
        value = json.loads(data) if isinstance(data, str) and data else {}
    except ValueError:
        return ""
    return "" if isinstance(value, dict) else f"expected a JSON object of its fields, got {_json_kind(value)}"


def _json_kind(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words (null, true, a number), not Python's (NoneType)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return "a string" if isinstance(value, str) else "a number" if isinstance(value, (int, float)) else "an array"


def message_to_dict(msg: Message) -> dict[str, Any]:
    """The proto JSON form of a message as a dict (field names as in the .proto)."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True, descriptor_pool=msg.DESCRIPTOR.file.pool)


def message_to_json(msg: Message) -> str:
    return json.dumps(message_to_dict(msg), separators=(",", ":"), sort_keys=True)
