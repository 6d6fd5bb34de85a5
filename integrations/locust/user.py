"""`CallstateUser`: one scripted call per task, drawn from a `callstate.scenario.Scenario`.

Each call is reported to Locust as a request named by its final code (`0 RPC_S_OK`,
`1818 RPC_S_CALL_CANCELLED`, ...), request type `callstate`; a pipe call's name starts with
its kind (`pipe-in 0 RPC_S_OK`), so each kind has its own figures. A code the call's plan
could not end with counts as a failure. The time from a client's cancel to the server seeing it
is the statistics entry `cancel propagation`, outside Aggregated (see `process.ProcessState`).
"""

from __future__ import annotations

import logging
import random
import sys
import time
from typing import Any, ClassVar

from gevent import GreenletExit
from locust import User, constant, events, task

from callstate import codes
from callstate.client import Call, CallError, Client, Pipe
from callstate.client.pipe_drive import drive_pipe_sync
from callstate.client.unary_drive import PlanScripts, drive_call_sync
from callstate.lifecycle import ABORTIVE
from callstate.scenario import (DEFAULT_CANCEL, DEFAULT_CANCEL_AT, DEFAULT_MIX, DEFAULT_ON_CANCEL,
                                DEFAULT_PIPE_CANCEL_AT, Plan, Scenario, expected_codes, parse_cancel_points,
                                parse_cancel_shares, parse_pipe_cancel_points, parse_pipe_shares, pipe_cancel,
                                pipe_script, unreachable_pipe_points)
from callstate.scenario import parse_cancel_poll
from callstate.script import DEFAULT_ABORT_CODE, ON_CANCEL, Mix
from callstate.v1 import callstate_pb2 as pb
from callstate.locust.options import overrides
from callstate.locust.process import REQUEST_TYPE, ProcessState

SHUTDOWN_WAIT = 5.0   # a call in flight when Locust stops the user is cancelled and waited for this long

__all__ = ["CallstateUser", "expected_codes"]   # expected_codes: the scenario's, re-exported


SETTINGS = ("mix", "cancel", "cancel_at", "on_cancel", "hold_for", "escalate_after", "abort_code", "pipes",
            "pipe_cancel_at", "pipe_messages", "delay", "payload", "call_timeout", "log_file", "cancel_poll")


class UnexpectedCode(Exception):
    """A final code the call's plan did not allow (reported as a Locust failure)."""


class CallstateUser(User):
    """Scenario attributes take the same text as `callstate load`'s options; the
    `--callstate-*` command-line options override them."""

    host = "127.0.0.1:50051"
    wait_time = constant(0)

    mix: ClassVar[str] = DEFAULT_MIX
    cancel: ClassVar[str] = DEFAULT_CANCEL
    cancel_at: ClassVar[str] = DEFAULT_CANCEL_AT
    on_cancel: ClassVar[str] = DEFAULT_ON_CANCEL
    hold_for: ClassVar[float] = Scenario.hold_for
    escalate_after: ClassVar[float] = Scenario.escalate_after
    abort_code: ClassVar[int] = DEFAULT_ABORT_CODE
    pipes: ClassVar[str] = "none"           # percent of calls that are pipes, by kind
    pipe_cancel_at: ClassVar[str] = DEFAULT_PIPE_CANCEL_AT
    pipe_messages: ClassVar[int] = Scenario.pipe_messages
    cancel_poll: ClassVar[str] = "none"     # the handlers' cancel poll intervals in ms, as weights
    delay: ClassVar[float] = 0.0            # server processing time before complete/abort/fatal
    payload: ClassVar[int] = 0              # request payload and reply size
    call_timeout: ClassVar[float | None] = None
    log_file: ClassVar[str] = "callstate-client-{worker}.jsonl"
    measure_propagation: ClassVar[bool] = True
    seed: ClassVar[int | None] = None
    _instances: ClassVar[int] = 0

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        settings, self.scenario = self.configure(environment.parsed_options)
        self.delay, self.payload = float(settings["delay"]), int(settings["payload"])
        timeout = settings["call_timeout"]
        self.process = ProcessState.get(environment, settings["log_file"] or None, self.measure_propagation)
        CallstateUser._instances += 1   # with a seed, the n-th user of a process draws the same plans
        self.rng = random.Random(None if self.seed is None else f"{self.seed}-{CallstateUser._instances}")
        self._script = PlanScripts(self.scenario, self.delay, self.payload)
        self._payload = bytes(self.payload)
        self.client = Client(_target(self.host), log=self.process.sink,
                             timeout=float(timeout) if timeout is not None else None)
        self.process.watch(self.client.target)

    @classmethod
    def configure(cls, parsed_options: Any) -> tuple[dict[str, Any], Scenario]:
        """The class attributes, overridden by the --callstate-* options, and the scenario
        they make; ValueError naming the bad setting."""
        settings = {name: getattr(cls, name) for name in SETTINGS}
        settings.update(overrides(parsed_options))
        scenario = Scenario(
            mix=_as("mix", settings["mix"], Mix.parse), cancel=_as("cancel", settings["cancel"], parse_cancel_shares),
            cancel_at=_as("cancel_at", settings["cancel_at"], parse_cancel_points),
            on_cancel=_as("on_cancel", settings["on_cancel"], lambda t: Mix.parse(t, tuple(ON_CANCEL))),
            hold_for=_as("hold_for", settings["hold_for"], float), escalate_after=_as(
                "escalate_after", settings["escalate_after"], float),
            abort_code=_as("abort_code", settings["abort_code"], int),
            pipes=_as("pipes", settings["pipes"], parse_pipe_shares),
            pipe_cancel_at=_as("pipe_cancel_at", settings["pipe_cancel_at"], parse_pipe_cancel_points),
            pipe_messages=_as("pipe_messages", settings["pipe_messages"], _non_negative_int),
            cancel_poll=_as("cancel_poll", settings["cancel_poll"], parse_cancel_poll))
        for name in ("delay", "payload"):
            _as(name, settings[name], float)
        if scenario.pipes and (late := unreachable_pipe_points(scenario.pipe_cancel_at, scenario.pipe_messages)):
            raise ValueError(f"pipe_cancel_at: {late[0]} is never reached with pipe_messages "
                             f"{scenario.pipe_messages}: each side pushes that many")
        return settings, scenario

    def on_stop(self) -> None:
        self.client.close()

    @task
    def scripted_call(self) -> None:
        plan = self.scenario.plan(self.rng)
        if plan.pipe is not None:
            return self._pipe_call(plan)
        expected = expected_codes(plan, self.scenario.abort_code)
        t0 = time.perf_counter()
        call: Call = self.client.prepare(self._script(plan), payload=self._payload)
        try:
            end = drive_call_sync(call, plan, self.rng, escalate_after=self.scenario.escalate_after)
        except GreenletExit:
            # Locust stops the user mid-call: cancel it and complete it, so the call ends on
            # both sides and its code is counted like any other.
            self._finish_at_shutdown(call, t0, expected)
            raise
        self._report(call, end.code, t0, expected, end.reply)

    def _pipe_call(self, plan: Plan) -> None:
        """A pipe call, driven like `callstate load`'s: each side pushes the scenario's messages,
        cancelled at the plan's point counted in messages."""
        assert plan.pipe is not None
        point, cancel = pipe_cancel(plan)
        expected, name = expected_codes(plan, self.scenario.abort_code), f"pipe-{plan.pipe}"
        t0 = time.perf_counter()
        pipe: Pipe = self.client.pipe(plan.pipe, pipe_script(plan, self.scenario, self.payload))
        try:
            drive_pipe_sync(pipe, messages=self.scenario.pipe_messages, message_bytes=self.payload, cancel_at=point,
                            abortive=cancel == ABORTIVE, escalate_after=self.scenario.escalate_after)
            code = codes.RPC_S_OK
        except CallError as err:
            code = err.code
        except GreenletExit:
            self._finish_at_shutdown(pipe, t0, expected, name)
            raise
        self._report(pipe, code, t0, expected, None, name)

    def _finish_at_shutdown(self, call: Call | Pipe, t0: float, expected: frozenset[int], kind: str = "") -> None:
        try:
            if not call.done():
                call.cancel()
            call.result(timeout=SHUTDOWN_WAIT)
            code = codes.RPC_S_OK
        except CallError as err:
            code = err.code
        # the cancel is ours (the run stopped): 1818 is expected whatever the plan was
        self._report(call, code, t0, expected | {codes.RPC_S_CALL_CANCELLED}, None, kind)

    def _report(self, call: Call | Pipe, code: int, t0: float, expected: frozenset[int], reply: pb.CallReply | None,
                kind: str = "") -> None:
        """One Locust request named by the final code, prefixed by `kind` for pipes (`pipe-in`)."""
        name = f"{kind} {codes.describe(code)}" if kind else codes.describe(code)
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE, name=name, response_time=(time.perf_counter() - t0) * 1000,
            response_length=len(reply.payload) if reply is not None else 0, context={"call_id": call.call_id},
            exception=None if code in expected else UnexpectedCode(
                f"{codes.describe(code)}: a final code the scenario does not expect"))


def _non_negative_int(value: str | int) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be >= 0")
    return number


_NUMBERS = (float, int, _non_negative_int)   # parsers a class attribute's number goes through too


def _as(name: str, value: Any, parse: Any) -> Any:
    """A setting given as text (attribute or option) parsed, or given already parsed."""
    if not isinstance(value, str) and parse not in _NUMBERS:
        return value
    try:
        return parse(value)
    except ValueError as exc:
        raise ValueError(f"{name} = {value!r}: {exc}") from None


@events.init.add_listener
def _check_settings(environment: Any, **_: Any) -> None:
    """Bad scenario settings stop the run before it starts, with one line naming them."""
    for user_class in environment.user_classes or ():
        if issubclass(user_class, CallstateUser):
            try:
                user_class.configure(environment.parsed_options)
            except (TypeError, ValueError) as exc:
                logging.getLogger("callstate.locust").error("callstate: %s: %s", user_class.__name__, exc)
                sys.exit(2)


def _target(host: str | None) -> str:
    host = host or CallstateUser.host
    for prefix in ("grpc://", "http://"):
        if host.startswith(prefix):
            host = host[len(prefix):]
    return host.rstrip("/")
