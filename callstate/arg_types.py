"""Argument types: text to a value, or `argparse.ArgumentTypeError` naming what is wrong
(argparse turns it into one usage line and exit status 2, never a traceback).

The numbers' ranges and the scenario's texts (`--mix`, `--cancel`, `--cancel-at`, ...) are
read the same way by `callstate load` and the Locust options (`callstate.locust`), so they
live here, beside the scenario's parsers, and not in the CLI.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any, Callable

from callstate.scenario import (CancelPoint, parse_cancel_points, parse_cancel_poll, parse_cancel_shares,
                                parse_pipe_cancel_points, parse_pipe_shares)
from callstate.script import ON_CANCEL, Mix, check_abort_code


MAX_SECONDS = 1e9   # any delay a script can carry in int64 milliseconds, with room to spare
MAX_INT = 2**31 - 1   # what a gRPC integer option holds; every count and size option fits in it


def shown(text: str, most: int = 60) -> str:
    """`text` quoted as a message echoes it: whole when short, else its start and its length (a
    number of 5,000 digits, a file pasted as --data, is not printed back whole)."""
    return repr(text) if len(text) <= most else f"{text[:most // 2]!r}... ({len(text)} characters)"


def bound(value: float) -> str:
    """A range's end as a user types it: an integer in full (2147483647, not %g's 2.14748e+09)."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def _number(parse: Callable[[str], Any], kind: str, positive: bool) -> Callable[[str], Any]:
    """An argparse type for a finite number that is >= 0 (or > 0), and at most MAX_INT (an
    integer) or MAX_SECONDS (a number): no option takes a value past those without harm."""
    high = MAX_INT if parse is int else MAX_SECONDS

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shown(text)} is not {kind}") from None
        # an int is finite, and isfinite() of one past a float's range raised OverflowError (a traceback)
        if (isinstance(value, float) and not math.isfinite(value)) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"{shown(text)} must be {'a finite number ' if parse is float else ''}"
                                             f"{('>= 1' if parse is int else '> 0') if positive else '>= 0'}")
        if value > high:
            raise argparse.ArgumentTypeError(f"{shown(text)} must be at most {bound(high)}")
        return value
    convert.__name__ = kind   # argparse names the type in its messages
    return convert


non_negative_float = _number(float, "a number", positive=False)
positive_float = _number(float, "a number", positive=True)
non_negative_int = _number(int, "an integer", positive=False)
positive_int = _number(int, "an integer", positive=True)


_TARGET_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")
# the schemes of gRPC's name resolvers: a URI with another (https://, http://, grpc://) is taken
# by gRPC as a name to look up that never resolves, every call failing as "unavailable"
_URI_SCHEMES = frozenset({"dns", "unix", "unix-abstract", "ipv4", "ipv6", "vsock", "xds", "google-c2p"})


def grpc_target(text: str) -> str:
    """A server to call: HOST:PORT, [IPv6]:PORT, HOST alone (gRPC's default port, 443: a TLS
    gateway), or a gRPC target URI (dns:///..., unix:/path, ...), passed on as given. Refused:
    an empty host or port, a port that is not one, a bare IPv6 address (ambiguous with a port),
    a URI whose scheme gRPC has no resolver for (https://HOST:PORT)."""
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme.lower() not in _URI_SCHEMES:
            raise argparse.ArgumentTypeError(
                f"{shown(text)}: gRPC has no {scheme}:// targets: give HOST:PORT, "
                f"{'here ' + rest.rstrip('/') if rest.strip('/') else 'e.g. 127.0.0.1:50051'} (TLS is an option of its own, "
                "not a scheme)")
        return text
    if text.startswith(_TARGET_SCHEMES):
        return text
    if not text or text != text.strip():
        raise argparse.ArgumentTypeError(f"{shown(text)} is not HOST:PORT")
    host, sep, port = text.rpartition(":")
    if not sep:
        return text
    if host.count(":") and not (host.startswith("[") and host.endswith("]")):
        raise argparse.ArgumentTypeError(f"{shown(text)}: an IPv6 address goes in brackets, e.g. [::1]:50051")
    if not host or host == "[]":
        raise argparse.ArgumentTypeError(f"{shown(text)} has no host: HOST:PORT, e.g. 127.0.0.1:50051")
    if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{shown(text)}: the port must be a number from 1 to 65535"
                                         + (" (none given: gRPC would use 443)" if not port else ""))
    return text


def finite_float(text: str) -> float:
    """Any finite number of seconds, negative included (the client refuses those itself)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a number") from None
    if not math.isfinite(value) or abs(value) > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{shown(text)} must be a finite number of seconds within ±{MAX_SECONDS:g}")
    return value


def bounded_int(low: int, high: int, what: str = "") -> Callable[[str], int]:
    """An integer in low..high (e.g. what a 64-bit proto field holds)."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shown(text)} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{shown(text)} must be in {low}..{high}{' (' + what + ')' if what else ''}")
        return value
    convert.__name__ = "integer"
    return convert


int64 = bounded_int(-(2**63), 2**63 - 1, "a 64-bit integer")


def abort_code(text: str) -> int:
    """A non-zero 32-bit exception code (what RpcAsyncAbortCall takes and the wire keeps)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not an integer") from None
    try:
        check_abort_code(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{shown(text)}: {exc}") from None
    return value


def _parsed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a parser that raises ValueError (MixError is one) naming the problem."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


outcome_mix = _parsed(Mix.parse)
on_cancel_mix = _parsed(lambda text: Mix.parse(text, tuple(ON_CANCEL)))
cancel_shares = _parsed(parse_cancel_shares)
cancel_points: Callable[[str], tuple[CancelPoint, ...]] = _parsed(parse_cancel_points)
pipe_shares = _parsed(parse_pipe_shares)
pipe_cancel_points = _parsed(parse_pipe_cancel_points)
cancel_poll: Callable[[str], Any] = _parsed(parse_cancel_poll)   # `--cancel-poll 0=50,100=50`


# -- a user's method (`--method`, Locust's `--callstate-method`): each value alone; whether the
# method is in the schema and the request fits it is known once the schema is read (callstate.schema.drive)
def method_name(text: str) -> str:
    """pkg.Svc/Method (also /pkg.Svc/Method or pkg.Svc.Method, as grpcurl takes it)."""
    from callstate.schema.model import normalise_method_name

    service, _, method = normalise_method_name(text).partition("/")
    if not service or not method or "/" in method:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a method name: expected pkg.Svc/Method")
    return text


def json_object(text: str) -> str:
    """JSON text of an object (a request's fields, in its proto JSON form)."""
    import orjson

    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a JSON object of the request's fields")
    return text


def readable_file(text: str) -> str:
    """A regular file that is there now (not a FIFO or a device, whose reading may never end)."""
    from callstate.files import check_regular_file

    try:
        check_regular_file(text, "file")
    except OSError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def directory(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text}: no such directory")
    return text
