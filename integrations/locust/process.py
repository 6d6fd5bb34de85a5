"""What all CallstateUsers of one Locust process share: the client state log, and the
server-journal follower that measures cancel propagation.

Cancel propagation is the time from a client's `Can` to the server's `cancel_seen`, for the
calls `callstate.propagation` counts (the population of `callstate check`, the load report and
Prometheus); it is Locust statistics entry `cancel propagation` (type `callstate`), logged
straight into that entry so that it stays out of the Aggregated row and its RPS, which count
calls only. Calls whose handler polls for cancels go to their own entry, `cancel propagation
to polling handlers` (made at the first such call). Across machines it includes their clock
difference.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, ClassVar

import gevent
import gevent.event
import grpc

from callstate.client.channel import ChannelSettings
from callstate.files import GZIPPED_LOG, is_gzipped
from callstate.lifecycle import CAN, END, ENTER
from callstate.logfile import StateLog
from callstate.propagation import Propagation, PropagationTracker
from callstate.statelog import Entry
from callstate.wire import FOLLOWER_WINDOW
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from callstate.locust import hub

REQUEST_TYPE = "callstate"
BARRIER_PREFIX = "callstate-locust-barrier-"
PROPAGATION = "cancel propagation"
PROPAGATION_POLLED = "cancel propagation to polling handlers"
_LOG = logging.getLogger("callstate.locust")


class _Sink:
    """The client log of this process, noting the time of every client cancel on the way."""

    enabled = True

    def __init__(self, log: StateLog | None, tracker: PropagationTracker | None) -> None:
        self._log, self._tracker = log, tracker

    def append(self, e: Entry) -> None:
        if self._log is not None:
            self._log.append(e)
        if self._tracker is not None and e.state == CAN and e.event == ENTER:
            self._tracker.client_cancelled(e.call_id, e.t, e.cancel or "")


class ProcessState:
    _instance: ClassVar["ProcessState | None"] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, environment: Any, log_template: str | None, propagation: bool, name: str = "log_file") -> None:
        self.environment = environment
        self.log_path = expand(log_template, environment) if log_template else None
        given = f"{name} {self.log_path}" if name.startswith("--") else f"{name} = {self.log_path!r}"
        if self.log_path and is_gzipped(self.log_path):   # plain lines after its gzip stream: unreadable whole
            raise ValueError(f"{given} {GZIPPED_LOG}")
        try:
            self.log = StateLog(self.log_path) if self.log_path else None
        except OSError as exc:   # the users stop before any call, and say why (failures.py)
            raise ValueError(f"{given}: cannot write the state log ({exc.strerror or exc})") from None
        self.tracker = PropagationTracker() if propagation else None
        self.sink = _Sink(self.log, self.tracker)
        self._follower: gevent.Greenlet | None = None
        self._stream: Any = None
        self._channel: grpc.Channel | None = None
        self._settings = ChannelSettings()
        self._barrier_id = ""
        self._caught_up: gevent.event.Event | None = None
        self._closing = False
        self._channels = 0   # the users' channels (the hub's pool holds a thread for each)
        environment.events.test_stop.add_listener(lambda **_: self.catch_up())
        environment.events.quitting.add_listener(lambda **_: self.quitting())

    @classmethod
    def get(cls, environment: Any, log_template: str | None, propagation: bool, name: str = "log_file"
            ) -> "ProcessState":
        """`name`: what set the log's path, for the error when it cannot be written."""
        with cls._lock:
            if cls._instance is None or cls._instance.environment is not environment:
                cls._instance = cls(environment, log_template, propagation, name)
            return cls._instance

    def add_channel(self, opened: bool = True) -> None:
        """A user's channel opened (the hub's pool gets a thread for it: hub.py) or closed."""
        self._channels += 1 if opened else -1
        hub.grow_pool(self._channels)

    def watch(self, target: str, settings: ChannelSettings) -> None:
        """Follow the server's journal (once per process) to time cancel propagation, on the
        users' TLS and token."""
        if self.tracker is None or self._follower is not None:
            return
        self._settings = settings
        self._channel = settings.sync_channel(target, list(FOLLOWER_WINDOW))   # it may fall behind
        self._stream = pb_grpc.JournalStub(self._channel).Follow(pb.WatchRequest(), metadata=settings.metadata)
        self._follower = gevent.spawn(self._follow)

    def _follow(self) -> None:
        self.environment.stats.get(PROPAGATION, REQUEST_TYPE)   # the entry is there from the start, samples or not
        why = "the server ended it"
        try:
            for batch in self._stream:
                for e in batch.entries:
                    self.server_entry(e)
        except grpc.RpcError as exc:
            why = f"{exc.code().name}: {exc.details()}"   # type: ignore[attr-defined]
        if not self._closing:   # the server stopped, went away or dropped this reader: no more samples
            _LOG.warning("callstate: the server's journal stream ended (%s): cancel propagation holds the calls "
                         "until then", why)

    def server_entry(self, e: Any) -> None:
        """One entry of the server's journal stream: a call's propagation into its statistics
        entry (its own, kept out of Aggregated: a request event would count it into the totals
        and their RPS); the end-of-run barrier's End."""
        assert self.tracker is not None
        found = self.tracker.server(e)
        if found is not None:
            self._entry(found).log(found.ms, 0)
        elif e.call_id == self._barrier_id and e.state == END and e.event == ENTER and self._caught_up is not None:
            self._caught_up.set()

    def _entry(self, found: Propagation) -> Any:
        return self.environment.stats.get(PROPAGATION_POLLED if found.polled else PROPAGATION, REQUEST_TYPE)

    def catch_up(self, timeout: float = 2.0) -> bool:
        """At the end of a run, let the journal follower catch up before the final statistics
        are sent: a barrier call made after every call of this process comes back through
        the stream, which publishes in order (the barrier is a server-only call in the log)."""
        if self._follower is None or self._channel is None or self._follower.dead:
            return False
        self._caught_up = gevent.event.Event()
        self._barrier_id = f"{BARRIER_PREFIX}{os.urandom(8).hex()}"
        try:
            pb_grpc.EmulatorStub(self._channel).Call(
                pb.CallRequest(call_id=self._barrier_id, script=pb.Script(outcome=pb.OUTCOME_COMPLETE)),
                metadata=self._settings.metadata, timeout=timeout)
        except grpc.RpcError:
            return False
        return self._caught_up.wait(timeout)

    def quitting(self) -> None:
        """Locust quits: on SIGTERM or Ctrl-C it says so before it stops the users, so stop them
        first (a no-op when the run has stopped): their calls in flight end (user.py), reach the
        log and the statistics, and the journal follower catches up; then close."""
        if self.environment.runner is not None:
            self.environment.runner.stop()
        self.close()

    def close(self) -> None:
        self._closing = True
        if self._stream is not None:
            self._stream.cancel()
        if self._channel is not None:
            self._channel.close()
        if self.log is not None:
            self.log.close()


def expand(template: str, environment: Any) -> str:
    """`{worker}`: the worker's id (`local` without a master, `master` on the master); `{pid}`."""
    runner = getattr(environment, "runner", None)
    kind = type(runner).__name__ if runner is not None else ""
    worker = {"WorkerRunner": getattr(runner, "client_id", "worker"), "MasterRunner": "master"}.get(kind, "local")
    return template.replace("{worker}", worker).replace("{pid}", str(os.getpid()))
