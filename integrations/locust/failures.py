"""A worker that cannot run its users ends the whole run, with its one line and exit status 2.

The master checks the --callstate-* options where they were typed; a worker reads them again
when told to spawn, on its own machine, where a .proto file may be missing or the target's
reflection out of reach. Its users then stop before any call, and the worker sends its reason
to the master (message `callstate_failed`), which logs it and quits with exit status 2: the
run does not end quietly with no calls. Without a master (a local run: a state log that cannot
be written, say) the process ends its own run the same way, at once, not at the end of -t.
"""

from __future__ import annotations

import logging
from typing import Any

import gevent
from locust import events
from locust.runners import LocalRunner, MasterRunner, WorkerRunner

FAILED = "callstate_failed"
_LOG = logging.getLogger("callstate.locust")
_reported: set[str] = set()   # each reason once per process, however many users meet it


def user_failed(environment: Any, why: str) -> None:
    """A user of this process cannot run: its reason logged once, and sent to the master."""
    if why in _reported:
        return
    _reported.add(why)
    _LOG.error("callstate: %s", why)
    environment.process_exit_code = 2
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.send_message(FAILED, {"worker": runner.client_id, "why": why})
    elif isinstance(runner, LocalRunner):   # no master to end the run: a headless one would idle until -t
        headless = getattr(environment.parsed_options, "headless", False)
        gevent.spawn(runner.quit if headless else runner.stop)   # not from the failing user's own greenlet


def _on_failed(environment: Any, msg: Any, **_: Any) -> None:
    _LOG.error("callstate: worker %s: %s", msg.data["worker"], msg.data["why"])
    environment.process_exit_code = 2
    gevent.spawn(environment.runner.quit)   # not from the message handler's own greenlet, which quit ends


@events.init.add_listener
def _register(environment: Any, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        environment.runner.register_message(FAILED, _on_failed)
