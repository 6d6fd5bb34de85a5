"""`callstate serve`'s stand-in options: the user's schema (.proto files, a descriptor set or a
running server's reflection) and the rules file, loaded before the server starts so that any
bad input is one line and exit 2, never a server that half serves."""

from __future__ import annotations

import argparse
from typing import Any

from callstate.cli.options import para


def add_standin(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("stand-in for any service (docs/any-service.md)", para(
        "Serve every method of your own services with the emulator's lifecycle: give the schema as .proto "
        "files, a descriptor set, or another server's reflection. Scripts come from a callstate-script header, "
        "else from the first matching rule of --rules, else from --mix."))
    g.add_argument("--proto", action="append", default=[], metavar="FILE",
                   help="a .proto file to serve (repeatable); compiled at start, imports of the well-known types work "
                        "(and of googleapis, google/api/*.proto, ..., when googleapis-common-protos is installed)")
    g.add_argument("--proto-path", action="append", default=[], metavar="DIR",
                   help="where imports are looked up, like protoc's -I (repeatable; default: each file's folder)")
    g.add_argument("--descriptor-set", metavar="FILE",
                   help="a FileDescriptorSet to serve (protoc --include_imports -o FILE, or buf build -o FILE, "
                        "binary or .json)")
    g.add_argument("--reflect-from", metavar="HOST:PORT",
                   help="read the schema from a running server's reflection, once at start (plaintext)")
    g.add_argument("--rules", metavar="FILE", help="YAML (or JSON) rules: per method and request, the script, "
                   "reply and mix; reloaded when the file changes")


def _reflect_explain(status: Any, details: str) -> str:
    """A failed --reflect-from read, with its likely cause: the read is plaintext, serve has no
    TLS options for it."""
    from callstate.client.channel import ChannelSettings

    return ChannelSettings(keepalive=None).explain(status, details, tls_remedy=(
        "--reflect-from cannot read it: it reads reflection in plaintext only, and serve has no TLS options for "
        "it; give the schema with --proto or --descriptor-set"))


def load_standin(opts: argparse.Namespace, limits: Any) -> tuple[Any, str | None]:
    """The schema (None: no stand-in) and the rules file, checked; ValueError naming what is wrong."""
    from callstate.files import load_rules
    from callstate.schema import from_descriptor_set, from_protos, from_reflection

    sources = [flag for flag, given in (("--proto", opts.proto), ("--descriptor-set", opts.descriptor_set),
                                        ("--reflect-from", opts.reflect_from)) if given]
    if len(sources) > 1:
        raise ValueError(f"{' and '.join(sources)}: give the schema one way")
    if opts.proto_path and not opts.proto:
        raise ValueError("--proto-path goes with --proto")
    if not sources:
        if opts.rules:
            raise ValueError("--rules needs a schema: --proto, --descriptor-set or --reflect-from")
        return None, None
    if opts.proto:
        schema = from_protos(opts.proto, opts.proto_path)
    elif opts.descriptor_set:
        schema = from_descriptor_set(opts.descriptor_set)
    else:
        schema = from_reflection(opts.reflect_from, explain=_reflect_explain)
    from callstate.server.reflection import server_pool
    from callstate.server.standin import OWN_SERVICE_PREFIXES, served_methods

    if not served_methods(schema):
        if schema.services:   # all of them in the namespaces the server serves itself
            raise ValueError(f"{sources[0]}: the schema has no service to stand in for: the server runs "
                             f"{', '.join(p + '*' for p in OWN_SERVICE_PREFIXES)} itself, and the schema's "
                             f"{', '.join(schema.services)} {'is' if len(schema.services) == 1 else 'are'} among them")
        if empty := schema.services_without_methods:
            one = len(empty) == 1
            raise ValueError(f"{sources[0]}: the schema has no method to stand in for: its service"
                             f"{'' if one else 's'} {', '.join(empty)} {'has' if one else 'have'} no methods")
        raise ValueError(f"{sources[0]}: the schema has no service to stand in for")
    server_pool(schema)   # fits beside the server's own files (reflection), or one line now
    if opts.rules:
        load_rules(opts.rules, schema, limits)
    return schema, opts.rules
