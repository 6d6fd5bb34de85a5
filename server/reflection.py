"""Server reflection, v1 and v1alpha, over the server's own services and a stand-in's.

grpcio-reflection ships v1alpha only; `grpc.reflection.v1` has the same messages under
another package (the same bytes on the wire), so the one servicer answers both names. Its
descriptors live in a pool of their own, built here: callstate.v1, health, both reflection
versions and the user's schema side by side, without touching protobuf's default pool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection_pb2 as rpb
from grpc_reflection.v1alpha import reflection_pb2_grpc as rgrpc

if TYPE_CHECKING:
    from callstate.schema import Schema

V1ALPHA = rpb.DESCRIPTOR.services_by_name["ServerReflection"].full_name
V1 = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def v1_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto, made from the v1alpha file: only the package differs."""
    proto = descriptor_pb2.FileDescriptorProto()
    rpb.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", ".grpc.reflection.v1."
    proto.name, proto.package = _V1_FILE, "grpc.reflection.v1"
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(old, new)
    return proto


class _MethodsToo:
    """A pool, as reflection reads it, that also finds a method's file by the method's full name
    ("pkg.Svc.Method": what `grpcurl describe pkg.Svc.Method` asks for) and an enum value's by
    its name within its enum ("pkg.Color.RED", as grpcurl names it; the pool knows the value
    only as its enum's sibling, "pkg.RED"). protobuf's upb pool finds services, messages, enums,
    enum values and fields by name, not methods (and cannot be subclassed: its constructor makes
    a pool of its own type)."""

    def __init__(self, pool: DescriptorPool) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, full_name: str) -> FileDescriptor:
        try:
            return self._pool.FindFileContainingSymbol(full_name)
        except KeyError:
            parent, _, name = full_name.rpartition(".")
            for find, members in ((self._pool.FindServiceByName, "methods_by_name"),
                                  (self._pool.FindEnumTypeByName, "values_by_name")):
                try:
                    found = find(parent)
                except KeyError:
                    continue
                if name in getattr(found, members):
                    return found.file
            raise


def server_pool(schema: Schema | None = None) -> DescriptorPool:
    """The pool reflection answers from: the server's own files, then a stand-in's schema.
    ValueError (one line) when the schema cannot sit beside them."""
    from grpc_health.v1 import health_pb2

    from callstate.v1 import callstate_pb2 as pb

    users = [] if schema is None else schema.file_descriptors
    return build_pool([pb.DESCRIPTOR, health_pb2.DESCRIPTOR], users)


def build_pool(own: Iterable[FileDescriptor], users: Iterable[FileDescriptor] = ()) -> DescriptorPool:
    """A pool with the server's `own` files (and their imports, and reflection v1's), then a
    stand-in's schema, `users`' files, each after its imports; a file already in it is not
    added twice.

    A user's file whose symbols the server's own files already hold (grpc/health/v1/health.proto,
    as Go and Java servers name the file grpcio calls grpc_health/v1/health.proto: in a schema
    read by --reflect-from, or vendored among the .proto files) gives way to the server's file,
    and the files that import it import that one. Two files of one name and different packages
    cannot both be in it: a ValueError says so (reflection would list the second one's services
    and describe none of them)."""
    pool = DescriptorPool()
    added: dict[str, str] = {}        # file name -> its package
    given_way: dict[str, str] = {}    # a user's file -> the server's own file that holds its symbols

    def fresh(proto: descriptor_pb2.FileDescriptorProto) -> bool:
        package = added.get(proto.name)
        if package is None:
            return True
        if package != proto.package:
            raise ValueError(f"{proto.name} (package {proto.package or 'none'}): the server's own file of this name "
                             f"(package {package}) is served beside it: give yours another path below --proto-path")
        return False   # the same file (a schema read from another callstate server lists callstate's own)

    def add_own(fd: FileDescriptor) -> None:
        if fd.name in added:
            return
        for dep in fd.dependencies:
            add_own(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        add_file(pool, proto)
        added[proto.name] = proto.package

    def add_user(fd: FileDescriptor) -> None:
        if fd.name in given_way or added.get(fd.name) == fd.package:
            return
        for dep in fd.dependencies:
            add_user(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        if not fresh(proto):
            return
        proto.dependency[:] = [given_way.get(dep, dep) for dep in proto.dependency]
        held_by = _own_file_holding(pool, proto)
        if held_by is not None:
            given_way[proto.name] = held_by
            return
        add_file(pool, proto)
        added[proto.name] = proto.package

    for fd in (rpb.DESCRIPTOR, *own):
        add_own(fd)
    v1 = v1_file()
    add_file(pool, v1)
    added[v1.name] = v1.package
    for fd in users:
        add_user(fd)
    return pool


def _own_file_holding(pool: DescriptorPool, proto: descriptor_pb2.FileDescriptorProto) -> str | None:
    """The file already in `pool` that defines every top-level symbol of `proto`, each message
    and enum alike field for field (None: not one; then adding `proto` says what clashes)."""
    names = [*proto.message_type, *proto.enum_type, *proto.service]
    if not names:   # extensions only (google/api/annotations.proto): nothing to be held
        return None
    prefix = f"{proto.package}." if proto.package else ""
    try:
        found = [pool.FindFileContainingSymbol(prefix + item.name) for item in names]
        holders = {fd.name: fd for fd in found}   # by descriptor: FindFileByName misses a name that is not ASCII
    except KeyError:
        return None
    if len(holders) != 1:
        return None
    held = descriptor_pb2.FileDescriptorProto()
    next(iter(holders.values())).CopyToProto(held)
    theirs = {m.name: _shape(m) for m in (*held.message_type, *held.enum_type)}
    if any(theirs.get(m.name) != _shape(m) for m in (*proto.message_type, *proto.enum_type)):
        return None   # the same names, other fields: not the server's to stand for
    return held.name


def _shape(definition: descriptor_pb2.DescriptorProto | descriptor_pb2.EnumDescriptorProto) -> bytes:
    """A message or enum as the wire sees it: options and JSON names left out (copies differ there)."""
    copy = type(definition)()
    copy.CopyFrom(definition)
    _strip(copy)
    return copy.SerializeToString(deterministic=True)


def _strip(definition: descriptor_pb2.DescriptorProto | descriptor_pb2.EnumDescriptorProto) -> None:
    definition.ClearField("options")
    if isinstance(definition, descriptor_pb2.EnumDescriptorProto):
        for value in definition.value:
            value.ClearField("options")
        return
    for field in definition.field:
        field.ClearField("json_name")
        field.ClearField("options")
    for nested in (*definition.nested_type, *definition.enum_type):
        _strip(nested)


def add_file(pool: DescriptorPool, proto: descriptor_pb2.FileDescriptorProto) -> None:
    try:
        pool.Add(proto)
    except (TypeError, ValueError) as exc:   # a user's symbol that clashes with the server's own
        raise ValueError(f"{proto.name}: cannot be served beside the server's own services ({exc})") from None


def serve_reflection(server: grpc.aio.Server, service_names: Sequence[str], pool: DescriptorPool) -> None:
    """Serve reflection of `service_names` (both reflection services are listed too) under both names."""
    servicer = reflection_aio.ReflectionServicer(tuple(service_names) + (V1ALPHA, V1),
                                                 pool=_MethodsToo(pool))   # type: ignore[arg-type]
    rgrpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.stream_stream_rpc_method_handler(servicer.ServerReflectionInfo,
                                                    request_deserializer=rpb.ServerReflectionRequest.FromString,
                                                    response_serializer=rpb.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1, {"ServerReflectionInfo": handler}),))
