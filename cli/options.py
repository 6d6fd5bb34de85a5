"""Argument types and option groups the commands share.

Every type turns a bad value into an argparse usage error (one line naming the
option, exit status 2), never a traceback. The numbers and the scenario's texts, which the
Locust options read too, are in `callstate.arg_types`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
from typing import TYPE_CHECKING, Any, Callable

from callstate import codes
from callstate.arg_types import bounded_int, grpc_target, non_negative_float, non_negative_int, positive_float, positive_int
from callstate.arg_types import shown
from callstate.arg_types import abort_code  # noqa: F401  (the commands' --abort-code, --code)
from callstate.lifecycle import SERVER
from callstate.files import read_pem
from callstate.pipe_script import MAX_MESSAGES
from callstate.script import Limits
from callstate.wire import DEFAULT_KEEPALIVE, MIN_KEEPALIVE, TOKEN_ENV

if TYPE_CHECKING:
    from callstate.client.channel import ChannelSettings

EPILOG = "MS-RPC codes: " + ", ".join(codes.describe(c) for c in sorted(codes.NAMES)) + "."
DEFAULT_TARGET = "127.0.0.1:50051"


def para(text: str) -> str:
    """Wrap a description for the raw formatter (which keeps the examples' layout)."""
    return textwrap.fill(" ".join(text.split()), 88)


def epilog() -> str:
    return textwrap.fill(EPILOG, 88)


grpc_status = bounded_int(0, 16, "a gRPC status code; 0 = ABORTED")


def text(value: str) -> str:
    """Text that can travel as a proto string: argv bytes that are not UTF-8 are refused."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{value.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8") from None
    return value


def _over(text: str, high: float) -> bool:
    """Whether `text` is a number above `high`, an option's own bound: said as that bound first, not
    as the far larger one every number has (2147483647, 1e+09), which sent the user to a value still
    refused ("--rate 2e9: must be at most 1e+09", then "--rate 1e9: must be in 0.001..1e+06")."""
    try:
        return float(text) > high
    except ValueError:
        return False


def port(text: str) -> int:
    value = 65536 if _over(text, 65535) else non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a port (0-65535; 0 picks a free one)")
    return value


def pem_file(text: str) -> str:
    """A readable PEM file (certificate, key or CA bundle); its path. read_pem refuses a FIFO or
    a device (which would hang, or never end) and anything larger than a PEM bundle."""
    try:
        read_pem(text, "file")
    except OSError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


# -- numbers with a range of their own: what each kind of option can take without harm ----------
def capped(base: Callable[[str], Any], high: float, what: str) -> Callable[[str], Any]:
    """`base` (its own messages for what it refuses), and at most `high`."""
    def convert(text: str) -> Any:
        value = high + 1 if _over(text, high) else base(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"{shown(text)} must be at most {high:g} ({what})")
        return value
    convert.__name__ = base.__name__
    return convert


concurrency = capped(positive_int, 10_000, "calls in flight at once")
channels = capped(positive_int, 1_000, "connections")
streams = capped(positive_int, 10_000, "streams at once")
message_count = bounded_int(0, MAX_MESSAGES, "messages in one pipe")
push_bytes = bounded_int(0, Limits().max_payload_bytes, "what a server takes by default")
server_push_bytes = bounded_int(0, Limits().max_reply_bytes, "the largest reply")
metadata_bytes = bounded_int(1, 1024 * 1024, "1 MiB")
MIN_RATE, MAX_RATE = 0.001, 1_000_000.0


def rate(text: str) -> float:
    """Calls per second: from one call in about 17 minutes to a million a second."""
    value = math.inf if _over(text, MAX_RATE) else positive_float(text)
    if not MIN_RATE <= value <= MAX_RATE:
        raise argparse.ArgumentTypeError(f"{shown(text)} must be in {MIN_RATE:g}..{MAX_RATE:g} calls per second")
    return value


MAX_KEEPALIVE = 1e6   # seconds: its ping period, in milliseconds, must fit a gRPC integer option


def keepalive(text: str) -> float:
    value = math.inf if _over(text, MAX_KEEPALIVE) else non_negative_float(text)
    if 0 < value < MIN_KEEPALIVE or value > MAX_KEEPALIVE:
        raise argparse.ArgumentTypeError(f"{shown(text)} must be 0 (off) or in {MIN_KEEPALIVE:g}..{MAX_KEEPALIVE:g}")
    return value


def token(text: str) -> str:
    if not text or not text.isascii() or not text.isprintable():
        raise argparse.ArgumentTypeError("the token must be non-empty printable ASCII")
    return text


def env_token(prog: str) -> str | None:
    """The token from CALLSTATE_TOKEN (None when unset or empty); SystemExit(2) when unusable."""
    return env_secret(TOKEN_ENV, prog)


def env_secret(name: str, prog: str) -> str | None:
    """A token from the environment variable `name` (None when unset or empty); a usage error
    (one line, exit 2) when unusable. The value itself is never printed."""
    value = os.environ.get(name) or None
    if value is not None:
        why = None
        if value != value.strip():   # a secret file read with its newline (Kubernetes, env files)
            why = "has leading or trailing whitespace (a newline from a file?): strip it"
        else:
            try:
                token(value)
            except argparse.ArgumentTypeError as exc:
                why = str(exc)
        if why:
            print(f"{prog}: {name}: {why}", file=sys.stderr)
            raise SystemExit(2)
    return value


def add_keepalive(p: "argparse._ActionsContainer", who: str) -> None:
    p.add_argument("--keepalive", type=keepalive, default=DEFAULT_KEEPALIVE, metavar="SECONDS",
                   help=f"give up on a {who} that stops answering (no reply to keepalive pings) within this "
                        f"long; 0: off (default: %(default)s)")


def add_target(p: argparse.ArgumentParser, several: bool = False,
               timeout_help: str = "gRPC deadline for the call (default: none)") -> None:
    """The options every client command has: where the server is, a deadline, how to reach it
    (TLS, token) and keepalive. `channel_settings(opts)` turns them into a ChannelSettings.
    several: --target may be repeated (replicas); opts.target is then a list, never empty."""
    if several:
        p.add_argument("--target", action="append", type=grpc_target, metavar="HOST:PORT",
                       help=f"server address HOST:PORT; repeat it for several servers (replicas behind a balancer): "
                            f"their entries are merged as they arrive, each line starting with the server it came "
                            f"from (--json: its \"target\" field) (default: {DEFAULT_TARGET})")
        p.set_defaults(several_targets=True)
    else:
        p.add_argument("--target", default=DEFAULT_TARGET, type=grpc_target,
                       help="server address HOST:PORT (default: %(default)s)")
    p.add_argument("--timeout", type=positive_float, default=None, metavar="SECONDS", help=timeout_help)
    add_access(p)


def add_access(p: argparse.ArgumentParser) -> None:
    """How a client reaches a locked-down server: TLS, mutual TLS, the token, keepalive."""
    g = p.add_argument_group("access (see docs/security.md)")
    g.add_argument("--tls-ca", type=pem_file, metavar="PEM",
                   help="connect with TLS, trusting server certificates signed by this CA (default: plaintext)")
    g.add_argument("--tls-cert", type=pem_file, metavar="PEM",
                   help="client certificate, for a server that requires one (mutual TLS); with --tls-key")
    g.add_argument("--tls-key", type=pem_file, metavar="PEM", help="the client certificate's private key")
    g.add_argument("--tls-server-name", metavar="NAME",
                   help="check the server's certificate against this name instead of the target's host (with --tls-ca)")
    g.add_argument("--token", type=token, metavar="TOKEN",
                   help=f"bearer token for a server started with --token (default: ${TOKEN_ENV}, if set)")
    add_keepalive(g, SERVER)   # the peer whose silence ends the calls
    p.set_defaults(target_parser=p)


def channel_settings(opts: argparse.Namespace) -> "ChannelSettings":
    """The client channel settings from add_target's options; a usage error (exit 2) when
    they do not fit together."""
    from callstate.client.channel import ChannelSettings

    parser: argparse.ArgumentParser = opts.target_parser
    if getattr(opts, "several_targets", False) and not opts.target:
        opts.target = [DEFAULT_TARGET]
    if (opts.tls_cert is None) != (opts.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if opts.tls_server_name and opts.tls_ca is None and opts.tls_cert is None:   # else plaintext, silently
        parser.error("--tls-server-name checks the server's TLS certificate: add --tls-ca (the CA that signed it)")
    settings = ChannelSettings(tls_ca=opts.tls_ca, tls_cert=opts.tls_cert, tls_key=opts.tls_key,
                               token=opts.token or env_token(parser.prog), keepalive=opts.keepalive or None,
                               tls_server_name=opts.tls_server_name)
    try:
        settings.credentials()   # a certificate and key that do not match: say so now
    except OSError as exc:
        parser.error(str(exc))
    return settings
