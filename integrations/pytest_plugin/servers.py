"""The servers a test talks to: an emulator on its own thread and event loop, or an existing one.

Both are `ServerHandle`s: a target, the state-log path (when it is ours) and a journal
reader over gRPC (`Journal/GetCall`, `Journal/GetCounters`), so tests read the server's side
the same way whichever server it is.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, Callable

import grpc

from callstate.client.channel import ACCESS_REFUSED, ChannelSettings
from callstate.lifecycle import END, ENTER
from callstate.server.app import EmulatorServer, ServerOptions
from callstate.statelog import proto_to_dict
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc

START_TIMEOUT = 10.0     # an emulator on a free port starts in well under a second
CONNECT_TIMEOUT = 5.0    # an existing server must accept a connection within this long


class ServerUnavailable(Exception):
    """The server a test needs could not be started or reached (one line, no traceback)."""


def emulator_config(settings: dict[str, Any], also: tuple[str, ...] = ()) -> Any:
    """An EmulatorConfig from a fixture's keywords (`mix` as text or a Mix): a keyword it does
    not know is named with the ones it does, not as a dataclass's TypeError."""
    from dataclasses import fields

    from callstate.script import Mix
    from callstate.server.config import EmulatorConfig

    settings = dict(settings)
    known = sorted([f.name for f in fields(EmulatorConfig)] + list(also))   # `also`: the caller's own
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(f"unknown setting {', '.join(map(repr, unknown))} (known: {', '.join(known)})")
    mix = settings.pop("mix", None)
    emulator = EmulatorConfig(**{k: v for k, v in settings.items() if k not in also})
    if mix is not None:
        emulator.mix = Mix.parse(mix) if isinstance(mix, str) else mix
    return emulator


def _blocked_loop_warning() -> None:
    """A wait that gave up on this thread's running event loop may have waited for a call that
    could not go out: an AsyncClient's calls on that loop are sent (and cancelled) by it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    import warnings

    warnings.warn("callstate: wait_history/wait_dispatched gave up while blocking a running event loop: an "
                  "AsyncClient's calls on that loop cannot go out or end meanwhile; in an async test use "
                  "`await server.await_dispatched(call_id)` or `await server.await_history(call_id)`",
                  RuntimeWarning, stacklevel=4)


def ended(entries: list[dict[str, Any]]) -> bool:
    return any(e["state"] == END and e["event"] == ENTER for e in entries)


class ServerHandle:
    """What a test sees of a server: `.target`, `.log_path`, and the journal."""

    log_path: Path | None = None

    def __init__(self, target: str, settings: ChannelSettings | None = None) -> None:
        self.target = target
        # TLS and token of a --callstate-target (None: plaintext, no token): the journal and
        # the plugin's clients use them alike
        self.settings = settings
        self._metadata = settings.metadata if settings else ()
        self._channel: grpc.Channel | None = None
        self._journal: pb_grpc.JournalStub | None = None
        self._lock = threading.Lock()

    def _open(self) -> grpc.Channel:
        return self.settings.sync_channel(self.target) if self.settings else grpc.insecure_channel(self.target)

    def _stub(self) -> pb_grpc.JournalStub:
        with self._lock:
            if self._journal is None:
                self._channel = self._open()
                self._journal = pb_grpc.JournalStub(self._channel)
            return self._journal

    def history(self, call_id: str) -> list[dict[str, Any]]:
        """The server's entries for one call (Journal/GetCall), as state-log dicts; [] when the
        server never saw the call (or its journal has evicted it). Every transition is there; of a
        pipe logged message by message, the journal keeps at most 10,000 message entries and one
        reply stays under 3 MiB (`CallHistory.omitted` counts the rest; the state log has them all)."""
        try:
            reply = self._stub().GetCall(pb.GetCallRequest(call_id=call_id), timeout=CONNECT_TIMEOUT,
                                         metadata=self._metadata)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                return []
            raise
        return [proto_to_dict(e) for e in reply.entries]

    def wait_history(self, call_id: str, timeout: float = 5.0,
                     until: Callable[[list[dict[str, Any]]], bool] | None = None,
                     unseen_timeout: float | None = None) -> list[dict[str, Any]]:
        """`history` once `until(entries)` holds (default: the server has ended the call), or
        as it stands after `timeout`. The server may end a call after the client has (an
        abortive cancel reaches it later). `unseen_timeout`: give up sooner on a call the
        server has not seen at all (one the client cancelled before it went out)."""
        until = until or ended
        t0 = time.monotonic()
        delay = 0.002
        while True:
            entries = self.history(call_id)
            waited = time.monotonic() - t0
            if until(entries):
                return entries
            if waited > timeout or (not entries and unseen_timeout is not None and waited > unseen_timeout):
                _blocked_loop_warning()
                return entries
            time.sleep(delay)   # polling the journal for the evidence, bounded by the deadline
            delay = min(delay * 2, 0.05)

    async def await_history(self, call_id: str, timeout: float = 5.0,
                            until: Callable[[list[dict[str, Any]]], bool] | None = None) -> list[dict[str, Any]]:
        """`wait_history` for asyncio tests: the test's loop keeps running meanwhile."""
        return await asyncio.to_thread(self.wait_history, call_id, timeout, until)

    def wait_dispatched(self, call_id: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """`history` once the server has dispatched the call (e.g. before cancelling a held call,
        so the cancel is sure to reach a call the server holds)."""
        return self.wait_history(call_id, timeout, until=bool)

    async def await_dispatched(self, call_id: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """`wait_dispatched` for asyncio tests: the test's loop keeps running meanwhile (an
        AsyncClient's call goes out on that loop: blocked, it would never be dispatched)."""
        return await self.await_history(call_id, timeout, until=bool)

    def counters(self) -> pb.Counters:
        """Journal/GetCounters: in flight, dispatched, ended, by state, by code."""
        return self._stub().GetCounters(pb.CountersRequest(), timeout=CONNECT_TIMEOUT, metadata=self._metadata)

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = self._journal = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.target}>"


class ThreadServer(ServerHandle):
    """`EmulatorServer` running on its own thread with its own event loop, so sync tests and
    asyncio tests on any loop (function- or session-scoped) can all call it."""

    def __init__(self, options: ServerOptions) -> None:
        super().__init__("")
        self.options = options
        self.log_path = Path(options.log) if isinstance(options.log, (str, Path)) else None
        self.server: EmulatorServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._abandoned = False   # start() gave up waiting for it
        self._thread = threading.Thread(target=self._run, name="callstate-pytest-server", daemon=True)

    def start(self, timeout: float = START_TIMEOUT) -> "ThreadServer":
        self._thread.start()
        if not self._ready.wait(timeout):
            self._abandon()   # should it start after all, it stops at once: no server outlives this
            raise ServerUnavailable(f"the callstate emulator did not start within {timeout:g} s")
        if self._error is not None:
            raise ServerUnavailable(f"the callstate emulator failed to start: {self._error}")
        return self

    def _run(self) -> None:
        asyncio.run(self._main())

    def _abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)

    async def _main(self) -> None:
        with self._lock:   # _abandon sees either no loop yet (and we see _abandoned) or the loop
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            if self._abandoned:
                self._stop.set()
        srv = EmulatorServer(self.options)
        try:
            await srv.start()
        except BaseException as exc:   # reported by start() on the test's thread
            self._error = exc
            self._ready.set()
            return
        self.server = srv
        self.target = srv.target
        self._ready.set()
        await self._stop.wait()
        await srv.stop()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop serving: calls in flight end (and are logged), the state log is flushed."""
        self.close()
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            self._thread.join(timeout)


class RemoteServer(ServerHandle):
    """A server someone else runs (`--callstate-target`): reached, never started or stopped."""

    def connect(self, timeout: float = CONNECT_TIMEOUT) -> "RemoteServer":
        channel = self._open()
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            tls = " (over TLS: does it speak TLS, and trust its certificate's CA?)" if self.settings and self.settings.secure else ""
            raise ServerUnavailable(f"cannot reach the callstate server at --callstate-target {self.target} "
                                    f"(no connection within {timeout:g} s){tls}") from None
        finally:
            channel.close()
        try:
            self.counters()
        except grpc.RpcError as err:
            code = err.code()  # type: ignore[attr-defined]
            if code in ACCESS_REFUSED:
                given = "its token is refused" if self._metadata else "it wants a token"
                raise ServerUnavailable(f"--callstate-target {self.target} answers {code.name}: {given} "
                                        "(--callstate-token, or CALLSTATE_TOKEN)") from None
            raise ServerUnavailable(f"--callstate-target {self.target} does not answer callstate.v1.Journal "
                                    f"({code.name}): is it a callstate server?") from None
        return self

    def stop(self) -> None:
        self.close()
