"""`call --method` and `load --method`: drive any service's method by name, its schema from
.proto files, a descriptor set or the target's reflection, its requests as proto JSON."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

# what the options mean is shared with Locust's --callstate-method (integrations/locust): callstate.schema.drive
from callstate.schema.drive import Drive, DriveError, MethodOptions

if TYPE_CHECKING:
    from callstate.client.channel import ChannelSettings

__all__ = ["Drive", "DriveError", "LOAD_METHOD_EXAMPLES", "METHOD_EXAMPLES", "add_method_options", "drive_of",
           "reply_text"]

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
                        help="a FileDescriptorSet (protoc --include_imports -o, buf build -o, binary or .json) "
                             "with the service")
    g.add_argument("--proto-path", action="append", metavar="DIR",
                   help="import path for --proto, like protoc -I (repeatable; default: each file's folder)")
    g.add_argument("--no-script", action="store_true",
                   help="with --method: send no script header (a stand-in's rules or mix decide the outcome; the "
                        "options that make the script are refused with it)")
    return g


def drive_of(opts: argparse.Namespace, settings: "ChannelSettings") -> Drive | None:
    """The method and requests the options name (None without --method); DriveError when bad."""
    if opts.no_script and opts.method is None:   # as --data and the schema's options (callstate.schema.drive)
        raise DriveError("--no-script needs --method")
    options = MethodOptions(opts.method, opts.data, opts.data_file, opts.proto or (), opts.proto_path or (),
                            opts.descriptor_set)
    return options.drive(opts.target, credentials=settings.credentials(), metadata=settings.metadata,
                         explain=settings.explain)


def reply_text(reply: Any, limit: int = 300) -> str:
    """A user method's reply for the final line: its proto JSON form, cut at `limit` characters;
    protobuf's text form when it has no JSON form (an Any of a type the schema lacks)."""
    return "reply " + message_text(reply, limit)


def message_text(message: Any, limit: int = 300) -> str:
    """A message of a user's method as `reply_text` shows it, without the word."""
    from google.protobuf import text_format

    from callstate.schema import message_to_json

    try:
        text = message_to_json(message)
    except (TypeError, KeyError):   # json_format cannot unpack the Any: the text form shows its bytes
        text = "(text form: an Any of a type the schema lacks) " + text_format.MessageToString(message, as_one_line=True)
    return text if len(text) <= limit else text[:limit] + "…"
