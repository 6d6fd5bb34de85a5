"""Where a caller cancels a call: the point names with their meaning, and the one grammar,
`NAME` or `NAME:ARG`, that every option naming a cancel point reads.

Unary points (`callstate load --cancel-at`) wait in seconds; pipe points (`callstate call --pipe
--cancel-at`, `callstate load --pipe-cancel-at`, the Locust options) count messages. The usage
lines and the documentation's tables are written from these tables (`usage`, `markdown`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# -- the point names ------------------------------------------------------------------------------
BEFORE_START: Final = "before-start"        # both: in state C, the call never goes out
AFTER_START: Final = "after-start"          # unary: right after the call is made
AFTER: Final = "after"                      # unary: after a fixed delay
RANDOM: Final = "random"                    # unary: after a uniformly random delay up to SECONDS
HELD: Final = "held"                        # unary: script the call to hold, cancel it after SECONDS
AFTER_HEADERS: Final = "after-headers"      # pipe: once the server's initial metadata arrived
AFTER_SENT: Final = "after-sent"            # pipe: after the caller's Nth push completed
AFTER_RECEIVED: Final = "after-received"    # pipe: after the caller's Nth pull
AFTER_HALF_CLOSE: Final = "after-half-close"  # pipe: right after the caller's null push

MAX_SECONDS: Final = 3600.0


@dataclass(frozen=True)
class Point:
    """One point of a table: its name, the argument it takes ("" for none) and what it means."""

    name: str
    arg: str
    meaning: str

    def __str__(self) -> str:
        return self.name + (f":{self.arg}" if self.arg else "")


@dataclass(frozen=True)
class PointTable:
    """The points one kind of call can be cancelled at, all of whose arguments are in `unit`."""

    what: str               # how errors name a point: "cancel point", "pipe cancel point"
    unit: str               # SECONDS or N
    points: tuple[Point, ...]

    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.points)

    def usage(self) -> str:
        """The points as a user writes them: "before-start, after-start, after:SECONDS, ..."."""
        return ", ".join(str(p) for p in self.points)

    def parse(self, text: str) -> tuple[str, float]:
        """(name, argument) of one point; ValueError naming the text and what is wrong with it."""
        name, _, arg = text.strip().partition(":")
        point = next((p for p in self.points if p.name == name), None)
        if point is None:
            raise ValueError(f"{self.what} {text!r}: expected one of {self.usage()}")
        if bool(point.arg) != bool(arg):
            raise ValueError(f"{self.what} {text!r}: {name} {'needs' if point.arg else 'takes no'} :{self.unit}")
        return name, (self._read(text, arg) if arg else 0)

    def _read(self, text: str, arg: str) -> float:
        if self.unit == "N":
            try:
                count = int(arg)
            except ValueError:
                raise ValueError(f"{self.what} {text!r}: {arg!r} is not a number of messages") from None
            if count < 1:
                raise ValueError(f"{self.what} {text!r}: N must be >= 1")
            return count
        try:
            seconds = float(arg)
        except ValueError:
            raise ValueError(f"{self.what} {text!r}: {arg!r} is not a number of seconds") from None
        if not 0 <= seconds <= MAX_SECONDS:
            raise ValueError(f"{self.what} {text!r}: seconds must be in 0..{MAX_SECONDS:g}")
        return seconds

    def takes_arg(self, name: str) -> bool:
        return any(p.name == name and p.arg for p in self.points)

    def listing(self, indent: str = "  ") -> str:
        """One line per point, for a command's help epilog."""
        width = max(len(str(p)) for p in self.points) + 2
        return "\n".join(f"{indent}{str(p):<{width}}{p.meaning}" for p in self.points)

    def markdown(self) -> str:
        """The table as the documentation shows it, between its markers."""
        rows = [f"| `{p}` | {p.meaning} |" for p in self.points]
        return "\n".join([self.begin(), "", "| point | the caller cancels |", "|---|---|", *rows, "", END_MARK])

    def begin(self) -> str:
        return f"<!-- {self.what}s: generated from callstate/cancel_points.py -->"


END_MARK: Final = "<!-- end of generated table -->"

UNARY: Final = PointTable("cancel point", "SECONDS", (
    Point(BEFORE_START, "", "in state C: the call never goes out"),
    Point(AFTER_START, "", "right after the call is made"),
    Point(AFTER, "SECONDS", "after a fixed delay (if not yet notified)"),
    Point(RANDOM, "SECONDS", "after a uniformly random delay up to SECONDS"),
    Point(HELD, "SECONDS", "script the call to hold, cancel it after SECONDS"),
))
PIPE: Final = PointTable("pipe cancel point", "N", (
    Point(BEFORE_START, "", "in state C: the call never goes out"),
    Point(AFTER_HEADERS, "", "once the server's initial metadata (its headers) arrived"),
    Point(AFTER_SENT, "N", "after its Nth push completed"),
    Point(AFTER_RECEIVED, "N", "after its Nth pull"),
    Point(AFTER_HALF_CLOSE, "", "right after its null push (the half-close)"),
))
