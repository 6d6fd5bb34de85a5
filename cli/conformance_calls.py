"""What every conformance row is made of: the battery's settings, its clients (made in one
place), the client's state log kept in memory, and one call's outcome."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import grpc

from callstate import codes
from callstate.check import percentiles
from callstate.client import AsyncClient
from callstate.client.channel import ChannelSettings
from callstate.lifecycle import CAN
from callstate.script import Limits
from callstate.statelog import Entry
from callstate.v1 import callstate_pb2 as pb

# The largest reply the server sends: near gRPC's default 4 MiB message limit.
DEFAULT_MAX_BYTES = Limits().max_reply_bytes


@dataclass
class BatteryConfig:
    calls: int = 10                 # per scenario and mode (sequential, then concurrent)
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


# How the battery reaches the proxy and the server (TLS, token): set once by the command
# (`use_access`), read by every client and channel below. One run, one set of credentials.
_access = ChannelSettings(keepalive=None)


def use_access(settings: ChannelSettings) -> None:
    global _access
    _access = settings


def auth_metadata() -> tuple[tuple[str, str], ...]:
    """The token's metadata, for the RPCs made on a raw channel."""
    return _access.metadata


def open_client(target: str, log: Any, timeout: float | None = None) -> AsyncClient:
    """Every client the battery uses is made here. A local subchannel pool: each client gets
    its own connection."""
    return AsyncClient(target, log=log, timeout=timeout, settings=_access,
                       channel_options=[("grpc.use_local_subchannel_pool", 1)])


def open_channel(target: str) -> grpc.aio.Channel:
    """A raw channel, for the calls the client library does not make (unknown method, metadata)."""
    return _access.aio_channel(target, [("grpc.use_local_subchannel_pool", 1)])


class Recorder:
    """The client's state log, kept in memory and indexed by call id (on the event loop)."""

    enabled = True

    def __init__(self) -> None:
        self.all: list[Entry] = []
        self.by_id: dict[str, list[Entry]] = defaultdict(list)
        self._changed = asyncio.Event()

    def append(self, e: Entry) -> None:
        self.all.append(e)
        self.by_id[e.call_id].append(e)
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

    @property
    def hung(self) -> bool:
        return self.code is None

    def describe(self) -> str:
        if self.hung:
            return f"no answer within the bound ({self.ms / 1000:.1f} s)"
        return codes.describe(self.code or 0) + (f" ({self.status})" if self.status else "")


def median_ms(values: list[float]) -> str:
    p = percentiles(values)
    return f"p50 {p['p50']:.1f} ms" if p["count"] else ""


def examples(bad: list[str], n: int = 2) -> str:
    shown = Counter(bad).most_common(n)
    return "; ".join(f"{text} x{count}" for text, count in shown)
