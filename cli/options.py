"""Argument types and option groups the commands share.

Every type turns a bad value into an argparse usage error (one line naming the
option, exit status 2), never a traceback.
"""

from __future__ import annotations

import argparse
import math
import textwrap
from typing import Any, Callable

from callstate import codes
from callstate.scenario import CancelPoint, parse_cancel_points, parse_cancel_shares
from callstate.script import ON_CANCEL, Mix, MixError, check_abort_code

EPILOG = "MS-RPC codes: " + ", ".join(codes.describe(c) for c in sorted(codes.NAMES)) + "."
DEFAULT_TARGET = "127.0.0.1:50051"


def para(text: str) -> str:
    """Wrap a description for the raw formatter (which keeps the examples' layout)."""
    return textwrap.fill(" ".join(text.split()), 88)


def epilog() -> str:
    return textwrap.fill(EPILOG, 88)


def _number(parse: Callable[[str], Any], kind: str, positive: bool) -> Callable[[str], Any]:
    """An argparse type for a finite number that is >= 0 (or > 0)."""
    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"{text!r} must be {'a finite number ' if parse is float else ''}"
                                             f"{('>= 1' if parse is int else '> 0') if positive else '>= 0'}")
        return value
    convert.__name__ = kind   # argparse names the type in its messages
    return convert


non_negative_float = _number(float, "a number", positive=False)
positive_float = _number(float, "a number", positive=True)
non_negative_int = _number(int, "an integer", positive=False)
positive_int = _number(int, "an integer", positive=True)


MAX_SECONDS = 1e9   # any delay a script can carry in int64 milliseconds, with room to spare


def finite_float(text: str) -> float:
    """Any finite number of seconds, negative included (the client refuses those itself)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds within ±{MAX_SECONDS:g}")
    return value


def bounded_int(low: int, high: int, what: str = "") -> Callable[[str], int]:
    """An integer in low..high (e.g. what a 64-bit proto field holds)."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} must be in {low}..{high}{' (' + what + ')' if what else ''}")
        return value
    convert.__name__ = "integer"
    return convert


int64 = bounded_int(-(2**63), 2**63 - 1, "a 64-bit integer")
grpc_status = bounded_int(0, 16, "a gRPC status code; 0 = ABORTED")


def abort_code(text: str) -> int:
    """A non-zero 32-bit exception code (what RpcAsyncAbortCall takes and the wire keeps)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    try:
        check_abort_code(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return value


def text(value: str) -> str:
    """Text that can travel as a proto string: argv bytes that are not UTF-8 are refused."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{value.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8") from None
    return value


def port(text: str) -> int:
    value = non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535; 0 picks a free one)")
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


def add_target(p: argparse.ArgumentParser) -> None:
    """The options every client command has: where the server is, and a deadline."""
    p.add_argument("--target", default=DEFAULT_TARGET, help="server address HOST:PORT (default: %(default)s)")
    p.add_argument("--timeout", type=positive_float, default=None, metavar="SECONDS",
                   help="gRPC deadline for the call (default: none)")
