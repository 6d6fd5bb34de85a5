"""Where a user's schema comes from: .proto files, a descriptor-set file, or a server's reflection.

Each source ends as a FileDescriptorSet given to `Schema`, so the server and the client treat
all three alike. The .proto files are compiled with grpcio-tools' protoc at start (no code
generation step for the user); the well-known types resolve from the protos grpcio-tools ships.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError

from callstate.schema.model import Schema, SchemaError

Explain = Callable[[Any, str], str]   # (grpc.StatusCode, details) -> details with a hint
REFLECTION_TIMEOUT = 10.0   # seconds for each reflection request of a schema read at start
_SKIPPED_SERVICES = ("grpc.reflection.",)
# protoc's own logging (abseil), not an error of the file: "WARNING: All log messages before
# absl::InitializeLog() ...", "W0000 00:00:1796540303.601451   22439 parser.cc:659] No edition ..."
_PROTOC_LOG = re.compile(r"WARNING: All log messages before absl::|[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] ")


def well_known_include() -> str:
    """grpcio-tools' own protos (google/protobuf/*.proto), for imports of the well-known types."""
    try:
        import grpc_tools
    except ImportError:   # pragma: no cover - grpcio-tools is a base dependency
        raise SchemaError("compiling .proto files needs grpcio-tools: pip install 'callstate[protos]'") from None
    return str(Path(grpc_tools.__file__).parent / "_proto")


GOOGLEAPIS = ("api", "rpc", "type", "longrunning")   # googleapis-common-protos' folders below google/


def googleapis_folders() -> dict[str, str]:
    """googleapis-common-protos' .proto folders (google/api/annotations.proto, google/rpc/status.proto,
    google/type/money.proto, ...) by their name below google/, when that package is installed."""
    import importlib.util

    found: dict[str, str] = {}
    for name in GOOGLEAPIS:
        try:
            spec = importlib.util.find_spec(f"google.{name}")
        except (ImportError, ValueError):
            continue
        for folder in (spec.submodule_search_locations or []) if spec is not None else []:
            if any(Path(folder).glob("*.proto")):
                found[name] = folder
                break
    return found


def _googleapis_include(tmp: str) -> list[str]:
    """An include path holding only googleapis' folders (linked, under google/), last of all: a
    user's own copy of them, or anything else, is found first, and nothing else is found there."""
    folders = googleapis_folders()
    if not folders:
        return []
    root = Path(tmp) / "googleapis"
    try:
        (root / "google").mkdir(parents=True)
        for name, folder in folders.items():
            (root / "google" / name).symlink_to(folder, target_is_directory=True)
    except OSError:   # no symbolic links here: without them, such an import's error says where it comes from
        return []
    return [f"-I{root}"]


def from_protos(protos: Sequence[str | os.PathLike[str]], proto_paths: Sequence[str | os.PathLike[str]] = ()) -> Schema:
    """Compile .proto files (with their imports) into a Schema, as `protoc -I... --include_imports`.

    Without `proto_paths`, each file's own folder is the include path, as most users expect of
    a lone .proto file. A file that does not compile raises a SchemaError carrying protoc's own
    first error line (file:line:column: message).
    """
    includes, files = _protoc_paths(protos, proto_paths)
    with tempfile.TemporaryDirectory(prefix="callstate-protoc-") as tmp:
        out = Path(tmp) / "set.pb"
        args = [sys.executable, "-m", "grpc_tools.protoc", *(f"-I{inc}" for inc in includes),
                f"-I{well_known_include()}", *_googleapis_include(tmp), "--include_imports", "--include_source_info",
                f"--descriptor_set_out={out}", *files]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or not out.exists():
            lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip() and not _PROTOC_LOG.match(ln)]
            first = lines[0] if lines else f"protoc failed (exit {done.returncode})"
            first = first.replace("--proto_path", "--proto-path")   # protoc's flag, in callstate's spelling
            if first.endswith("File not found."):   # an import: where imports are looked up, which line imports it
                missing = first.removesuffix(": File not found.")
                importer = next((ln.split(": Import ")[0] for ln in lines if f': Import "{missing}" was not' in ln), "")
                first += (f" (imports are looked up under {', '.join(includes)}: give the folder your import lines "
                          "are written from with --proto-path" + (f"; imported at {importer}" if importer else "")
                          + _googleapis_hint(missing) + ")")
            given = next(((proto, f) for proto, f in zip(protos, files) if first.startswith(f + ":")), None)
            if given is not None and _a_descriptor_set(given[1]):   # protoc's words: "non ascii codepoint"
                first = f"{given[0]}: a descriptor set, not a .proto file: give it with --descriptor-set"
            raise SchemaError(first)
        return Schema.from_bytes(out.read_bytes(), origin=", ".join(str(p) for p in protos))


def _googleapis_hint(missing: str) -> str:
    """For an import of googleapis' own (google/api/annotations.proto), where it comes from."""
    if missing.split("/")[:1] != ["google"] or missing.split("/")[1:2] == ["protobuf"]:
        return ""
    return ("; google/api, google/rpc and google/type are googleapis': pip install googleapis-common-protos "
            "and they are found")


def _a_descriptor_set(path: str) -> bool:
    """A file protoc could not read that holds a FileDescriptorSet (an easy mix-up: `-o set.pb`)."""
    files = descriptor_pb2.FileDescriptorSet()
    try:
        files.ParseFromString(Path(path).read_bytes())
    except (OSError, DecodeError):
        return False
    return bool(files.file) and all(f.name for f in files.file)


def _protoc_paths(protos: Sequence[str | os.PathLike[str]],
                  proto_paths: Sequence[str | os.PathLike[str]]) -> tuple[list[str], list[str]]:
    """The include paths and the files for protoc, checked, all absolute: protoc finds a file
    under an include path by its spelling only ("protos/x.proto" is not under "/abs/protos")."""
    if not protos:
        raise SchemaError("no .proto file given")
    files = [_found(proto, proto_paths) for proto in protos]
    for inc in proto_paths:
        if not Path(inc).is_dir():
            raise SchemaError(f"--proto-path {inc}: no such directory")
    includes = [os.path.abspath(p) for p in proto_paths] or sorted({os.path.dirname(f) for f in files})
    if not proto_paths:   # each file is named by its base name: two of one name cannot both be
        first: dict[str, tuple[str, str]] = {}
        for proto, file in zip(protos, files):
            name = os.path.basename(file)
            seen, given = first.setdefault(name, (file, str(proto)))
            if seen != file:
                raise SchemaError(f"{given} and {proto}: both are named {name} below their own folders (the default "
                                  "--proto-path): give --proto-path the folder your import lines are written from")
    for proto, file in zip(protos, files):
        if not any(file.startswith(os.path.join(inc, "")) for inc in includes):
            raise SchemaError(f"{proto}: not under any --proto-path ({', '.join(map(str, proto_paths))}): "
                              "protoc names each file by its path below one of them")
    return includes, files


def _found(proto: str | os.PathLike[str], proto_paths: Sequence[str | os.PathLike[str]]) -> str:
    """The file's absolute path: as given (from the working folder), else, as protoc and grpcurl
    take it, a path below one of the --proto-path folders (`-I protos shop/v1/shop.proto`)."""
    candidates = [Path(proto)]
    if not Path(proto).is_absolute():
        candidates += [Path(inc) / proto for inc in proto_paths]
    for candidate in candidates:
        if candidate.is_file():
            return os.path.abspath(candidate)
    if any(candidate.is_dir() for candidate in candidates):
        raise SchemaError(f"{proto}: a folder, not a .proto file: give each file to serve (their imports are "
                          "looked up under --proto-path)")
    if any(candidate.exists() for candidate in candidates):   # a FIFO or a device: protoc would read it forever
        raise SchemaError(f"{proto}: not a regular file (a FIFO or a device), not a .proto file")
    looked = [str(inc) for inc in proto_paths if len(candidates) > 1 and Path(inc).is_dir()]
    under = f" (nor below --proto-path {', '.join(looked)})" if looked else ""
    raise SchemaError(f"{proto}: no such .proto file{under}")


def from_descriptor_set(path: str | os.PathLike[str]) -> Schema:
    """A FileDescriptorSet file, as `protoc --include_imports -o FILE` or `buf build -o FILE` writes."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SchemaError(f"{path}: no such descriptor-set file") from None
    except OSError as exc:
        raise SchemaError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise SchemaError(f"{path}: a folder, not a descriptor-set file")
    if not stat.S_ISREG(mode):   # /dev/null reads as nothing, a FIFO may never end
        raise SchemaError(f"{path}: not a regular file (a device or a FIFO), so not a descriptor set: "
                          f"{_WRITE_ONE}")
    data = Path(path).read_bytes()
    if not data:
        raise SchemaError(f"{path}: the file is empty, not a descriptor set: {_WRITE_ONE}")
    files = descriptor_pb2.FileDescriptorSet()
    try:
        files.ParseFromString(data)
    except DecodeError:
        if _PROTO_TEXT.search(data):   # protobuf's words: "Wire format was corrupt"
            raise SchemaError(f"{path}: a .proto file, not a descriptor set: give it with --proto") from None
        if data.lstrip()[:1] == b"{":
            return Schema(_json_image(data, path))
    return Schema.from_bytes(data, origin=str(path))


def _json_image(data: bytes, path: str | os.PathLike[str]) -> descriptor_pb2.FileDescriptorSet:
    """A descriptor set in proto JSON: `buf build -o image.json` writes its image so (an image is a
    FileDescriptorSet whose files carry buf's own extra field, which is not needed here)."""
    from google.protobuf import json_format

    files = descriptor_pb2.FileDescriptorSet()
    try:
        json_format.Parse(data, files, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise SchemaError(f"{path}: JSON, but not a descriptor set or a buf image in JSON "
                          f"({str(exc).rstrip('.')})") from None
    if not files.file:
        raise SchemaError(f"{path}: JSON with no .proto file in it (a descriptor set or buf image lists them "
                          'in "file")')
    return files


_WRITE_ONE = "protoc --include_imports -o FILE, or buf build -o FILE, writes one"
_PROTO_TEXT = re.compile(rb"^\s*((syntax|edition)\s*=\s*[\"']|(package|import|message|service)\s+[\w.\"])",
                         re.MULTILINE)


def from_reflection(target: str, *, credentials: object = None, metadata: Sequence[tuple[str, str]] = (),
                    timeout: float = REFLECTION_TIMEOUT, explain: Explain | None = None) -> Schema:
    """Read every service's files from a running server's reflection, once: v1alpha, or v1
    where the server serves only that one (the same messages under another package).

    `credentials` is a grpc.ChannelCredentials for TLS (None: plaintext); `metadata` is sent
    with each request (a bearer token, for instance). `explain(status, details)`: the details
    of a failed read with what most likely went wrong, in the caller's words (its TLS options,
    say: `ChannelSettings.explain`).
    """
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2 as rpb

    channel = (grpc.secure_channel(target, credentials) if credentials is not None   # type: ignore[arg-type]
               else grpc.insecure_channel(target))
    versions = [channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                      request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                                      response_deserializer=rpb.ServerReflectionResponse.FromString)
                for version in ("v1alpha", "v1")]

    def first_answer(request: "rpb.ServerReflectionRequest") -> "rpb.ServerReflectionResponse":
        """The answer to `request` on the reflection version in use (one request, one answer)."""
        return next(iter(versions[0](iter([request]), timeout=timeout, metadata=list(metadata))))

    def ask(request: "rpb.ServerReflectionRequest") -> "rpb.ServerReflectionResponse":
        try:
            try:
                response = first_answer(request)
            except grpc.RpcError as exc:
                if len(versions) == 1 or exc.code() != grpc.StatusCode.UNIMPLEMENTED:   # type: ignore[attr-defined]
                    raise
                versions.pop(0)   # no v1alpha here: v1 from now on
                response = first_answer(request)
        except grpc.RpcError as exc:
            detail = exc.details() if hasattr(exc, "details") else str(exc)   # type: ignore[attr-defined]
            status = exc.code() if hasattr(exc, "code") else None            # type: ignore[attr-defined]
            code = status.name if status is not None else "error"
            if code == "UNIMPLEMENTED":
                detail = "the server serves no reflection (neither grpc.reflection.v1alpha nor v1)"
            elif code == "DEADLINE_EXCEEDED":   # grpc's own words: "Deadline Exceeded"
                detail = (f"no answer to reflection within {timeout:g} s (a peer that is not a gRPC server, a "
                          "stopped server, or an address that drops packets?)")
            elif explain is not None:
                detail = explain(status, detail)
            raise SchemaError(f"reflection from {target}: {code}: {detail}") from None
        except StopIteration:
            raise SchemaError(f"reflection from {target}: the server sent no answer") from None
        if response.HasField("error_response"):
            err = response.error_response
            raise SchemaError(f"reflection from {target}: {err.error_message or 'error ' + str(err.error_code)}")
        return response

    try:
        listed = ask(rpb.ServerReflectionRequest(list_services=""))
        services = [s.name for s in listed.list_services_response.service
                    if not s.name.startswith(_SKIPPED_SERVICES)]
        files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

        def take(response: "rpb.ServerReflectionResponse") -> None:
            for raw in response.file_descriptor_response.file_descriptor_proto:
                fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
                files.setdefault(fd.name, fd)

        for service in services:
            take(ask(rpb.ServerReflectionRequest(file_containing_symbol=service)))
        missing = _missing_imports(files.values(), files)
        while missing:
            for name in missing:
                take(ask(rpb.ServerReflectionRequest(file_by_filename=name)))
            still = _missing_imports(files.values(), files)
            if still & missing:
                raise SchemaError(f"reflection from {target}: cannot fetch {sorted(still & missing)[0]}")
            missing = still
    finally:
        channel.close()
    if not files:
        raise SchemaError(f"reflection from {target}: the server lists no service")
    return Schema(descriptor_pb2.FileDescriptorSet(file=list(files.values())))


def _missing_imports(files: Iterable[descriptor_pb2.FileDescriptorProto], have: dict[str, object]) -> set[str]:
    return {dep for f in files for dep in f.dependency if dep not in have}
