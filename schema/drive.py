"""What a run on a user's method drives (`call`/`load --method`, Locust's `--callstate-method`):
the method named, found in a schema from .proto files, a descriptor set or the target's
reflection, and its requests in proto JSON; or a DriveError, one line naming the option, file,
line or field. Each front end names its options its own way (`flag`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from google.protobuf.message import Message

from callstate.files import NOT_A_FILE, not_a_file
from callstate.lifecycle import PIPE_BOTH, PIPE_IN
from callstate.pipe_script import check_push
from callstate.schema.model import Method, SchemaError, message_from_json
from callstate.script import Limits
from callstate.schema.sources import Explain, from_descriptor_set, from_protos, from_reflection


class DriveError(ValueError):
    """Bad --method / --data / schema input: one line naming the option, file, line or field."""


@dataclass(frozen=True)
class Drive:
    """The method a run drives and its requests (one per --data-file line, cycled by load)."""

    method: Method
    requests: tuple[Message, ...]


def unary_method(name: str) -> str:
    """Why pipe settings do not apply to a run on a user's unary method (one sentence, for a usage error)."""
    return f"{name} is unary (the calls on a streaming method are pipes of its shape)"


def cli_flag(name: str) -> str:
    """How `callstate call`/`load` spell an option: `--data-file`."""
    return f"--{name}"


@dataclass(frozen=True)
class MethodOptions:
    """The --method options' values, as given (None / empty: not given)."""

    method: str | None = None
    data: str | None = None
    data_file: str | None = None
    proto: Sequence[str] = ()
    proto_path: Sequence[str] = ()
    descriptor_set: str | None = None

    def drive(self, target: str, *, credentials: object = None, metadata: Sequence[tuple[str, str]] = (),
              flag: Callable[[str], str] = cli_flag, explain: Explain | None = None) -> Drive | None:
        """The method and requests the options name (None without a method); DriveError when
        bad. With neither .proto files nor a descriptor set, the schema is `target`'s reflection
        (`explain`: how a failed read is worded, see `from_reflection`)."""
        given = {"data": self.data, "data-file": self.data_file, "proto": self.proto,
                 "descriptor-set": self.descriptor_set, "proto-path": self.proto_path}
        if not self.method:
            stray = next((name for name, value in given.items() if value), None)
            if stray:
                raise DriveError(f"{flag(stray)} needs {flag('method')}")
            return None
        for one, other in (("data", "data-file"), ("proto", "descriptor-set")):
            if given[one] and given[other]:
                raise DriveError(f"{flag(one)} and {flag(other)}: give one of them")
        if self.proto_path and not self.proto:
            raise DriveError(f"{flag('proto-path')} goes with {flag('proto')}")
        try:
            if self.proto:
                schema = from_protos(self.proto, self.proto_path)
            elif self.descriptor_set:
                schema = from_descriptor_set(self.descriptor_set)
            else:
                schema = from_reflection(target, credentials=credentials, metadata=metadata, explain=explain)
            method = schema.method(self.method)
            return Drive(method, self._requests(method, flag))
        except SchemaError as exc:
            reflected = not (self.proto or self.descriptor_set) and str(exc).startswith("reflection from")
            hint = f" (or give the schema with {flag('proto')} or {flag('descriptor-set')})" if reflected else ""
            raise DriveError(f"{exc}{hint}") from None

    def _requests(self, method: Method, flag: Callable[[str], str]) -> tuple[Message, ...]:
        if self.data_file is None:
            return (_pushable(method, message_from_json(method.request, self.data or "{}", where=flag("data")),
                              flag("data")),)
        try:
            if not_a_file(self.data_file):   # a FIFO may never end, /dev/zero never does (and fills the memory)
                raise DriveError(f"{flag('data-file')} {self.data_file}: {NOT_A_FILE}")
            with open(self.data_file, encoding="utf-8-sig") as f:   # the BOM Windows editors may write
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise DriveError(f"{flag('data-file')} {self.data_file}: cannot read it ({why})") from None
        requests = tuple(_pushable(method, message_from_json(method.request, line, where=f"{self.data_file}:{n}"),
                                   f"{self.data_file}:{n}")
                         for n, line in enumerate(lines, 1) if line.strip())
        if not requests:
            raise DriveError(f"{flag('data-file')} {self.data_file}: holds no request (one JSON request per line)")
        return requests


def _pushable(method: Method, request: Message, where: str) -> Message:
    """The request, unless a client- or bidi-streaming method would push it over the largest push
    a server takes: the client refuses such a push (`check_push`), mid-call; said here, before any call."""
    if method.kind in (PIPE_IN, PIPE_BOTH):
        try:
            check_push(request)
        except ValueError:
            raise DriveError(f"{where}: {request.ByteSize()} bytes, and {method.name} pushes it as a message of its "
                             f"stream: a push is at most {Limits().max_payload_bytes} bytes (the server's payload "
                             "limit)") from None
    return request
