"""The server's side of the conformance battery: its journal, read straight from the server.

Calls go through the proxy under test, but what the server saw is read from the server
itself (Journal/Follow), so a proxy cannot hide a cancel it dropped. Only the calls the
battery registered are kept; every wait on them is bounded.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Iterable

import grpc

from callstate.cli.conformance.calls import access_hint, auth_metadata
from callstate.client.channel import ACCESS_REFUSED
from callstate.lifecycle import CANCEL_SEEN, D, DISPATCH, END, ENTER, PIPE_INITIAL_MOVE, SERVER
from callstate.statelog import parse_ts, proto_to_dict
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc

Entries = list[dict[str, Any]]


_DISPATCHES = frozenset({DISPATCH, *PIPE_INITIAL_MOVE[SERVER].values()})   # a unary call's, each pipe kind's


def dispatched(entries: Entries) -> bool:
    return any(e["state"] == D and e.get("move") in _DISPATCHES for e in entries)


def ended(entries: Entries) -> bool:
    return any(e["state"] == END and e["event"] == ENTER for e in entries)


def first(entries: Entries, event: str = ENTER, state: str | None = None) -> dict[str, Any] | None:
    return next((e for e in entries if e["event"] == event and (state is None or e["state"] == state)), None)


def cancel_seen_at(entries: Entries) -> float | None:
    """When a cancel first reached the server's call (epoch seconds), or None. A handler that
    polls for cancels (`--cancel-poll-ms`) sees it up to one interval later and says how much
    later (`delay_ms`): the gateway's propagation ends at the arrival, not at the poll."""
    e = first(entries, CANCEL_SEEN)
    return parse_ts(e["ts"]) - e.get("delay_ms", 0) / 1000 if e else None


def final(entries: Entries) -> dict[str, Any] | None:
    return first(entries, ENTER, END)


BROKE = "the journal stream broke: "   # how a lost stream is said (a refused one: its status alone)


class ServerJournal:
    """Follows one server's journal; `watch` a call id before starting the call."""

    def __init__(self, channel: grpc.aio.Channel, target: str) -> None:
        self.target = target
        self._stub = pb_grpc.JournalStub(channel)
        self._entries: dict[str, Entries] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.lost = ""
        self.refused = False   # the server refused this client's access (its token)
        self.said_why = False   # a callstate Journal turned the stream away with a status of its own

    async def start(self, timeout: float) -> None:
        """Subscribe; ConnectionError naming the server when it does not answer as a callstate server."""
        subscribed = asyncio.Event()
        self.lost = ""
        self._task = asyncio.ensure_future(self._follow(subscribed))
        waiter = asyncio.ensure_future(subscribed.wait())
        await asyncio.wait({self._task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if not subscribed.is_set():
            why = "no answer" if not self._task.done() else self.lost or "the stream ended"
            self._task.cancel()
            if self.refused:   # a callstate server, which turned this client away: say what to change
                raise ConnectionError(f"{self.target} refused its journal (callstate.v1.Journal/Follow) to this "
                                      f"client ({why})")
            if self.said_why:   # its watchers all taken (--max-watchers): not a question of what it is
                raise ConnectionError(f"{self.target} did not open its journal (callstate.v1.Journal/Follow): "
                                      f"{why.removeprefix(BROKE)}")
            raise ConnectionError(f"{self.target} did not open its journal (callstate.v1.Journal/Follow): "
                                  f"is it a callstate server? ({why})")

    async def _follow(self, subscribed: asyncio.Event) -> None:
        try:
            async for batch in self._stub.Follow(pb.WatchRequest(), metadata=auth_metadata(self.target)):
                subscribed.set()
                kept = False
                for e in batch.entries:
                    entries = self._entries.get(e.call_id)
                    if entries is not None:
                        entries.append(proto_to_dict(e))
                        kept = True
                if kept:
                    self._changed.set()
            self.lost = "the server closed its journal stream"
        except grpc.aio.AioRpcError as err:
            self.refused = err.code() in ACCESS_REFUSED
            self.said_why = err.code() not in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE,
                                               grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
            self.lost = f"{BROKE}{err.code().name}: {access_hint(err, self.target)}"
        self._changed.set()

    async def deadline_ms(self, call_id: str, timeout: float) -> int | None:
        """The call's deadline as the server received it (Journal/GetCall), None without one."""
        try:
            history = await self._stub.GetCall(pb.GetCallRequest(call_id=call_id), metadata=auth_metadata(self.target),
                                               timeout=timeout)
        except grpc.aio.AioRpcError:
            return None
        return history.deadline_ms if history.HasField("deadline_ms") else None

    def watch(self, call_id: str) -> None:
        self._entries.setdefault(call_id, [])

    def entries(self, call_id: str) -> Entries:
        return self._entries.get(call_id, [])

    async def wait(self, call_ids: Iterable[str], until: Callable[[Entries], bool], timeout: float) -> bool:
        """True once `until` holds for every call, False when `timeout` passes first."""
        ids = list(call_ids)
        deadline = time.monotonic() + timeout
        while True:
            if all(until(self.entries(i)) for i in ids):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
