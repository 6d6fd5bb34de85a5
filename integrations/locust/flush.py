"""Every worker's last samples reach the master's final statistics.

When a headless master quits, it sends `quit` and gives the workers 0.5 s for their final
report; a worker still finishing its calls misses it, and then Locust's counts fall short of
the workers' state logs. So when the master stops a run, it first asks each worker to stop
its users and report (message `callstate_flush`), and waits for every answer
(`callstate_flushed`), bounded by FLUSH_TIMEOUT, before Locust goes on to quit. A worker that
quits on its own (SIGTERM) sends its last report before it says so. A worker Locust marks
missing (killed, or cut off: no heartbeat), or that has left, cannot answer: it is not waited
for, and one that goes missing during the wait stops being waited for.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent.event
from locust import events
from locust.runners import STATE_MISSING, MasterRunner, WorkerRunner

FLUSH = "callstate_flush"
FLUSHED = "callstate_flushed"
FLUSH_TIMEOUT = 15.0
RECHECK = 0.25   # how often the wait looks again at which workers can still answer
_LOG = logging.getLogger("callstate.locust")


class _MasterFlush:
    def __init__(self, runner: MasterRunner) -> None:
        self.runner = runner
        self.pending: set[str] = set()
        self.done = gevent.event.Event()
        runner.register_message(FLUSHED, self.on_flushed)

    def on_flushed(self, environment: Any, msg: Any, **_: Any) -> None:
        self.pending.discard(msg.node_id)
        if not self.pending:
            self.done.set()

    def _answering(self) -> set[str]:
        """The workers still connected and not missing: those that can answer."""
        return {worker.id for worker in self.runner.clients.all if worker.state != STATE_MISSING}

    def flush(self, **_: Any) -> None:
        self.pending = self._answering()
        if not self.pending:
            return
        self.done.clear()
        for worker_id in list(self.pending):
            self.runner.send_message(FLUSH, None, client_id=worker_id)
        deadline = time.monotonic() + FLUSH_TIMEOUT
        while not self.done.wait(RECHECK):
            self.pending &= self._answering()   # one gone missing or away meanwhile answers no more
            if not self.pending:
                return
            if time.monotonic() > deadline:
                _LOG.warning("callstate: %d worker(s) did not report their last calls within %g s",
                             len(self.pending), FLUSH_TIMEOUT)
                return


def _on_flush(environment: Any, msg: Any, **_: Any) -> None:
    runner = environment.runner
    runner.stop()          # users finish (or are stopped), test_stop listeners run
    runner._send_stats()   # Locust's own final report, sent now rather than at quit
    runner.send_message(FLUSHED, None)


def _on_worker_quitting(environment: Any, **_: Any) -> None:
    """A worker stopped on its own (SIGTERM, Ctrl-C: a scale-down) tells the master it quits
    with no final report: its users are stopped and its last samples sent first. Listeners of
    `quitting` run last-registered first, so this one runs before Locust's quit message."""
    runner = environment.runner
    runner.stop()
    runner._send_stats()


@events.init.add_listener
def _register(environment: Any, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        environment.events.test_stop.add_listener(_MasterFlush(runner).flush)
    elif isinstance(runner, WorkerRunner):
        runner.register_message(FLUSH, _on_flush)
        environment.events.quitting.add_listener(_on_worker_quitting)
