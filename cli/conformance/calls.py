"""What every conformance row is made of: the battery's settings, its clients (made in one
place), the client's state log kept in memory, and one call's outcome."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import grpc

from callstate import codes
from callstate.check import percentiles
from callstate.client import AsyncClient, CallError
from callstate.client.channel import ChannelSettings
from callstate.lifecycle import CAN, END, ENTER
from callstate.script import Limits
from callstate.statelog import Entry
from callstate.v1 import callstate_pb2 as pb

# The largest reply the server sends: near gRPC's default 4 MiB message limit.
DEFAULT_MAX_BYTES = Limits().max_reply_bytes

# The default sample: a proxy that loses LOSS of the calls fails a row with probability POWER
# at least. A row of n calls sees no loss with probability (1 - LOSS)^n, so n >= ln(1 - POWER)
# / ln(1 - LOSS) = 59; each row makes --calls sequentially and again concurrently: 2 x 30 = 60.
LOSS, POWER = 0.05, 0.95


def calls_for(loss: float = LOSS, power: float = POWER) -> int:
    """--calls (half of a row's calls) that catch `loss` with probability `power`."""
    return math.ceil(math.log(1 - power) / math.log(1 - loss) / 2)


def detection(calls: int, loss: float = LOSS) -> float:
    """The probability that a row of 2 x `calls` calls sees at least one of a `loss` share lost."""
    return 1 - (1 - loss) ** (2 * calls)


@dataclass
class BatteryConfig:
    calls: int = calls_for()        # per scenario and mode (sequential, then concurrent)
    concurrency: int = 10
    small_bytes: int = 64
    max_bytes: int = DEFAULT_MAX_BYTES
    large_calls: int = 3            # the near-maximum echo is costly: fewer calls
    hold_seconds: float = 10.0
    cancel_bound_ms: float = 250.0
    deadline: float = 0.2
    streams: int = 100
    metadata_bytes: int = 4096
    wait: float = 10.0              # the bound on any one wait
    only: tuple[str, ...] = ()      # the properties to judge (--only); empty: all of them

    def wanted(self, prop: str) -> bool:
        return not self.only or prop in self.only


# How the battery reaches the proxy and the server (TLS, token): set once by the command
# (`use_access`), read by every client and channel below. One run, one set of credentials, but
# for the server --serve-port started: plaintext without a token, behind a proxy that may
# terminate TLS and check the token itself.
_access = ChannelSettings(keepalive=None)
_plaintext: dict[str, ChannelSettings] = {}


def use_access(settings: ChannelSettings, plaintext_target: str | None = None) -> None:
    global _access
    _access = settings
    _plaintext.clear()
    if plaintext_target is not None:
        _plaintext[plaintext_target] = ChannelSettings(keepalive=settings.keepalive)


def access(target: str) -> ChannelSettings:
    """How `target` is reached."""
    return _plaintext.get(target, _access)


def auth_metadata(target: str) -> tuple[tuple[str, str], ...]:
    """The token's metadata for `target`, for the RPCs made on a raw channel."""
    return access(target).metadata


def explain(err: grpc.aio.AioRpcError, target: str) -> str:
    """A failed RPC's details, with what most likely went wrong (plaintext against TLS, say)."""
    return access(target).explain(err.code(), err.details())


def access_hint(err: grpc.aio.AioRpcError, target: str) -> str:
    """A Journal RPC the server's token check refused: its details and what to change."""
    text = explain(err, target)
    if err.code() == grpc.StatusCode.PERMISSION_DENIED and access(target).token:
        text += " (the token given, --token or CALLSTATE_TOKEN, is not the server's)"
    return text


def open_client(target: str, log: Any, timeout: float | None = None) -> AsyncClient:
    """Every client the battery uses is made here. A local subchannel pool: each client gets
    its own connection."""
    return AsyncClient(target, log=log, timeout=timeout, settings=access(target),
                       channel_options=[("grpc.use_local_subchannel_pool", 1)])


def open_channel(target: str) -> grpc.aio.Channel:
    """A raw channel, for the calls the client library does not make (unknown method, metadata)."""
    return access(target).aio_channel(target, [("grpc.use_local_subchannel_pool", 1)])


class Recorder:
    """The client's state log, kept in memory and indexed by call id (on the event loop)."""

    enabled = True

    def __init__(self) -> None:
        self.all: list[Entry] = []
        self.by_id: dict[str, list[Entry]] = defaultdict(list)
        self.ended = 0   # calls that reached End: what a row still running has done
        self._changed = asyncio.Event()

    def append(self, e: Entry) -> None:
        self.all.append(e)
        self.by_id[e.call_id].append(e)
        self.ended += e.state == END and e.event == ENTER
        self._changed.set()

    async def event(self, call_id: str, event: str, timeout: float) -> Entry | None:
        """The call's first `event` entry, waiting for it up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (found := next((e for e in self.by_id.get(call_id, ()) if e.event == event), None)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return found

    def cancel_at(self, call_id: str) -> float | None:
        return next((e.t for e in self.by_id.get(call_id, ()) if e.state == CAN), None)


@dataclass
class Result:
    call_id: str
    code: int | None                   # None: no notification within the bound (hung)
    status: str = ""
    details: str = ""
    reply: pb.CallReply | None = None
    ms: float = 0.0
    bound: float = 0.0                 # s: how long a hung call was waited for

    @property
    def hung(self) -> bool:
        return self.code is None

    @property
    def reset(self) -> bool:
        """Ended CANCELLED without the caller cancelling it: the stream was reset on the way
        (RST_STREAM). Only meaningful for a call the caller did not cancel."""
        return self.status == grpc.StatusCode.CANCELLED.name

    def describe(self) -> str:
        """What happened to the call, as a failure names it: hung (no code), reset, or its code."""
        if self.hung:
            return f"hung: no code within {self.bound:g} s"
        text = codes.describe(self.code or 0) + (f" ({self.status})" if self.status else "")
        return f"reset: {text}" if self.reset else text


def complete_late(call: Any) -> None:
    """A call (or pipe) the battery stopped waiting for, completed when its notification comes at
    last: its End is logged, as the check row expects of every call."""
    try:
        call.complete()
    except CallError:
        pass


def median_ms(values: list[float]) -> str:
    p = percentiles(values)
    return f"p50 {p['p50']:.1f} ms" if p["count"] else ""


def examples(bad: list[str]) -> str:
    """Every distinct failure with its count, the most frequent first."""
    return "; ".join(f"{text} x{count}" for text, count in Counter(bad).most_common())


def code_failure(r: Result, code: int, base: int) -> str:
    """Why a call scripted to end with its own `code` (base..base+999, one per call) did not."""
    if r.code == code:
        return ""
    if r.code is not None and base <= r.code < base + 1000:
        return "another call's code"
    return f"{r.describe()} instead of the call's own code ({base}+)"


def reply_failure(r: Result, expected: bytes | None) -> str:
    """Why a call that should have completed with `expected` as its reply did not ("" when it did)."""
    if r.code != codes.RPC_S_OK:
        return r.describe()
    if r.reply is None or r.reply.payload != expected:
        got = len(r.reply.payload) if r.reply is not None else 0
        return f"0 but the reply bytes differ ({got} B instead of {len(expected or b'')} B)"
    return ""
