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
from callstate.scenario import (CancelPoint, parse_cancel_points, parse_cancel_shares, parse_pipe_cancel_points,
                                parse_pipe_shares)
from callstate.script import ON_CANCEL, Mix, MixError

EPILOG = "MS-RPC codes: " + ", ".join(codes.describe(c) for c in sorted(codes.NAMES)) + "."
DEFAULT_TARGET = "127.0.0.1:50051"


def para(text: str) -> str:
    """Wrap a description for the raw formatter (which keeps the examples' layout)."""
    return textwrap.fill(" ".join(text.split()), 88)


def epilog() -> str:
    return textwrap.fill(EPILOG, 88)


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
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
pipe_shares = _parsed(parse_pipe_shares)
pipe_cancel_points = _parsed(parse_pipe_cancel_points)


def add_target(p: argparse.ArgumentParser) -> None:
    """The options every client command has: where the server is, and a deadline."""
    p.add_argument("--target", default=DEFAULT_TARGET, help="server address HOST:PORT (default: %(default)s)")
    p.add_argument("--timeout", type=positive_float, default=None, metavar="SECONDS",
                   help="gRPC deadline for the call (default: none)")
