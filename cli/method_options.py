"""`call --method` and `load --method`: drive any service's method by name, its schema from
.proto files, a descriptor set or the target's reflection, its requests as proto JSON."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from callstate.client.channel import ChannelSettings
    from callstate.schema import Method

METHOD_EXAMPLES = """
any service (--method: a method of the target's own proto; schema from its reflection, or --proto/--descriptor-set):
  callstate call --target HOST:PORT --method shop.v1.Shop/Charge --data '{"order_id": "o-1"}'
  callstate call --method shop.v1.Shop/Charge --proto shop.proto --proto-path protos --outcome abort --code 4321
  callstate call --method shop.v1.Shop/Track --data '{"order_id": "o-1"}' --cancel-at after-received:3
"""

LOAD_METHOD_EXAMPLES = """
any service (--method; against a server that is not callstate only the client side is checked):
  callstate load --target HOST:PORT --method shop.v1.Shop/Charge --data-file charges.jsonl --calls 2000
  callstate load --method shop.v1.Shop/Track --proto shop.proto --cancel abortive=50 --pipe-cancel-at after-received:2
"""


class DriveError(ValueError):
    """Bad --method / --data / schema input: one line naming the option, file, line or field."""


@dataclass(frozen=True)
class Drive:
    """The method a run drives and its requests (one per --data-file line, cycled by load)."""

    method: "Method"
    requests: "tuple[Message, ...]"


def add_method_options(p: argparse.ArgumentParser, *, data_file_help: str) -> argparse._ArgumentGroup:
    g = p.add_argument_group("any service", "drive a method of any gRPC service by name, through the same caller's "
                             "lifecycle; the script travels as the callstate-script header (a callstate stand-in "
                             "obeys it; another server ignores it and only the client side is logged and checked)")
    g.add_argument("--method", metavar="PKG.SVC/METHOD",
                   help="the method to call (also /pkg.Svc/Method or pkg.Svc.Method); streaming methods are pipes "
                        "of their shape: server-streaming out, client-streaming in, bidi both")
    data = g.add_mutually_exclusive_group()
    data.add_argument("--data", metavar="JSON", help="the request, in its proto JSON form (default: {})")
    data.add_argument("--data-file", metavar="FILE", help=data_file_help)
    schema = g.add_mutually_exclusive_group()
    schema.add_argument("--proto", action="append", metavar="FILE",
                        help="a .proto file with the method's service (repeatable; compiled at start)")
    schema.add_argument("--descriptor-set", metavar="FILE",
                        help="a FileDescriptorSet (protoc --include_imports -o, buf build -o) with the service")
    g.add_argument("--proto-path", action="append", metavar="DIR",
                   help="import path for --proto, like protoc -I (repeatable; default: each file's folder)")
    g.add_argument("--no-script", action="store_true",
                   help="with --method: send no script header (a stand-in's rules or mix decide the outcome)")
    return g


def drive_of(opts: argparse.Namespace, settings: "ChannelSettings") -> Drive | None:
    """The method and requests the options name (None without --method); DriveError when bad."""
    from callstate.schema import SchemaError, from_descriptor_set, from_protos, from_reflection

    if opts.method is None:
        stray = next((flag for flag, value in (("--data", opts.data), ("--data-file", opts.data_file),
                                               ("--proto", opts.proto), ("--descriptor-set", opts.descriptor_set),
                                               ("--proto-path", opts.proto_path),
                                               ("--no-script", opts.no_script)) if value), None)
        if stray:
            raise DriveError(f"{stray} needs --method")
        return None
    if opts.proto_path and not opts.proto:
        raise DriveError("--proto-path goes with --proto")
    try:
        if opts.proto:
            schema = from_protos(opts.proto, opts.proto_path or ())
        elif opts.descriptor_set:
            schema = from_descriptor_set(opts.descriptor_set)
        else:
            schema = from_reflection(opts.target, credentials=settings.credentials(), metadata=settings.metadata)
        method = schema.method(opts.method)
        return Drive(method, _requests(method, opts))
    except SchemaError as exc:
        reflected = not (opts.proto or opts.descriptor_set) and str(exc).startswith("reflection from")
        raise DriveError(f"{exc}{' (or give the schema with --proto or --descriptor-set)' if reflected else ''}") from None


def _requests(method: "Method", opts: argparse.Namespace) -> "tuple[Message, ...]":
    from callstate.schema import message_from_json

    if opts.data_file is None:
        return (message_from_json(method.request, opts.data or "{}", where="--data"),)
    try:
        with open(opts.data_file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DriveError(f"--data-file {opts.data_file}: cannot read it ({why})") from None
    requests = tuple(message_from_json(method.request, line, where=f"{opts.data_file}:{n}")
                     for n, line in enumerate(lines, 1) if line.strip())
    if not requests:
        raise DriveError(f"--data-file {opts.data_file}: holds no request (one JSON request per line)")
    return requests


def reply_text(reply: Any, limit: int = 300) -> str:
    """A user method's reply for the final line: its proto JSON form, cut at `limit` characters."""
    from callstate.schema import message_to_json

    text = message_to_json(reply)
    return "reply " + (text if len(text) <= limit else text[:limit] + "…")
