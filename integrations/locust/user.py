"""`CallstateUser`: one scripted call per task, drawn from a `callstate.scenario.Scenario`.

Each call is reported to Locust as a request named by its final code (`0 RPC_S_OK`,
`1818 RPC_S_CALL_CANCELLED`, ...), request type `callstate`; a pipe call's name starts with
its kind (`pipe-in 0 RPC_S_OK`), so each kind has its own figures. On a user's own method
(`method`, see method.py) the name starts with the method (`shop.v1.Shop/Charge 0 RPC_S_OK`),
its shape deciding between unary calls and pipes. A code the call's plan could not end with
counts as a failure. The time from a client's cancel to the server seeing it
is the statistics entry `cancel propagation`, outside Aggregated (see `process.ProcessState`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import sys
import time
from typing import Any, Callable, ClassVar, Sequence

from gevent import GreenletExit
from locust import User, constant, events, task
from locust.exception import StopUser
from locust.runners import WorkerRunner

from callstate import codes
from callstate.arg_types import grpc_target, non_negative_float, positive_float
from callstate.client import Call, CallError, Client, Pipe
from callstate.client.channel import ChannelSettings
from callstate.client.pipe_drive import drive_pipe_sync
from callstate.client.unary_drive import PlanScripts, drive_call_sync
from callstate.lifecycle import ABORTIVE, UNARY
from callstate.scenario import (DEFAULT_CANCEL, DEFAULT_CANCEL_AT, DEFAULT_MIX, DEFAULT_ON_CANCEL,
                                DEFAULT_PIPE_CANCEL_AT, Plan, Scenario, every_call_a_pipe, expected_codes,
                                parse_cancel_points, parse_cancel_shares, parse_pipe_cancel_points, parse_pipe_shares, pipe_cancel,
                                kinds_without_point, pipe_script, unreachable_pipe_points)
from callstate.scenario import parse_cancel_poll
from callstate.script import DEFAULT_ABORT_CODE, ON_CANCEL, Limits, Mix, check_abort_code
from callstate.v1 import callstate_pb2 as pb
from callstate.locust import access, failures, method as any_method
from callstate.locust.options import flag_of, overrides, usage_error
from callstate.locust.process import REQUEST_TYPE, ProcessState
from callstate.schema.drive import DriveError, unary_method

SHUTDOWN_WAIT = 5.0   # a call in flight when Locust stops the user is cancelled and waited for this long

__all__ = ["CallstateUser", "expected_codes"]   # expected_codes: the scenario's, re-exported


SETTINGS = ("mix", "cancel", "cancel_at", "on_cancel", "hold_for", "escalate_after", "abort_code", "pipes",
            "pipe_cancel_at", "pipe_messages", "delay", "payload", "call_timeout", "log_file", "cancel_poll",
            *any_method.SETTINGS, *access.SETTINGS)


class UnexpectedCode(Exception):
    """A final code the call's plan did not allow (reported as a Locust failure)."""


class OptionError(ValueError):
    """Bad --callstate-* options, found only by reading them together (an unknown method, a
    request that does not fit it): an argparse error on the machine where they were typed."""


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
    # any service: a method of the target's own proto (method.py), as `callstate load --method`
    method: ClassVar[str] = ""              # "pkg.Svc/Method"; "": the Emulator's Call and pipes
    data: ClassVar[str | dict[str, Any]] = ""   # its request, proto JSON text or a dict ("": {})
    data_file: ClassVar[str] = ""           # or one JSON request per line, used in turn
    proto: ClassVar[str | Sequence[str]] = ()       # the schema: .proto files ...
    proto_path: ClassVar[str | Sequence[str]] = ()  # ... and their import paths (protoc -I)
    descriptor_set: ClassVar[str] = ""      # ... or a FileDescriptorSet; neither: the target's reflection
    # access (access.py), as `callstate load`'s options: TLS on with tls_ca; a client certificate
    tls_ca: ClassVar[str] = ""              # the CA that signed the server's certificate
    tls_cert: ClassVar[str] = ""            # a client certificate, for a server that requires one ...
    tls_key: ClassVar[str] = ""             # ... and its key
    token: ClassVar[str] = ""               # a bearer token ("": CALLSTATE_TOKEN, if set)
    measure_propagation: ClassVar[bool] = True
    seed: ClassVar[int | None] = None
    _instances: ClassVar[int] = 0

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.failed = False   # its settings fail on this machine: it stops before any call
        try:
            settings, self.scenario, self.any_method = self.configure(environment.parsed_options, self.host)
            channel = access.channel_settings(settings)
            log_name = flag_of("log_file") if "log_file" in overrides(environment.parsed_options) else "log_file"
            self.process = ProcessState.get(environment, settings["log_file"] or None, self.measure_propagation,
                                            log_name)
        except ValueError as exc:   # on a worker, options from the master its own machine cannot serve
            failures.user_failed(environment, f"{type(self).__name__}: {exc}")
            self.failed = True
            return
        self.delay, self.payload = float(settings["delay"]), int(settings["payload"])
        timeout = settings["call_timeout"]
        CallstateUser._instances += 1   # with a seed, the n-th user of a process draws the same plans
        self.rng = random.Random(None if self.seed is None else f"{self.seed}-{CallstateUser._instances}")
        self._script = PlanScripts(self.scenario, self.delay, self.payload)
        self._name = self.any_method.method.name if self.any_method is not None else ""   # its stats rows' prefix
        self._payload = bytes(self.payload)
        self.client = Client(_target(self.host), log=self.process.sink,
                             timeout=float(timeout) if timeout is not None else None, settings=channel)
        self.process.add_channel()
        self.process.watch(self.client.target, channel)

    @classmethod
    def configure(cls, parsed_options: Any, host: str | None = None, *, method: bool = True
                  ) -> tuple[dict[str, Any], Scenario, any_method.MethodRun | None]:
        """The class attributes, overridden by the --callstate-* options, the scenario they make
        and the user's own method if one is named (its schema read once per process, from
        `host`'s reflection if no other is given; `method=False`: not looked at); ValueError
        naming the bad setting (OptionError when the options typed are the cause)."""
        settings = {name: getattr(cls, name) for name in SETTINGS}
        typed = overrides(parsed_options)
        settings.update(typed)
        _one_schema(settings, typed)
        scenario = Scenario(
            mix=_as("mix", settings["mix"], Mix.parse), cancel=_as("cancel", settings["cancel"], parse_cancel_shares),
            cancel_at=_as("cancel_at", settings["cancel_at"], parse_cancel_points),
            on_cancel=_as("on_cancel", settings["on_cancel"], lambda t: Mix.parse(t, tuple(ON_CANCEL))),
            hold_for=_as("hold_for", settings["hold_for"], _positive_seconds), escalate_after=_as(
                "escalate_after", settings["escalate_after"], _positive_seconds),
            abort_code=_as("abort_code", settings["abort_code"], _abort_code),
            pipes=_as("pipes", settings["pipes"], parse_pipe_shares),
            pipe_cancel_at=_as("pipe_cancel_at", settings["pipe_cancel_at"], parse_pipe_cancel_points),
            pipe_messages=_as("pipe_messages", settings["pipe_messages"], _non_negative_int),
            cancel_poll=_as("cancel_poll", settings["cancel_poll"], parse_cancel_poll))
        _as("delay", settings["delay"], _non_negative_seconds)
        if settings["call_timeout"] is not None:
            _as("call_timeout", settings["call_timeout"], _positive_seconds)
        _as("payload", settings["payload"], _payload_size)
        typed_access = any(name in typed for name in access.SETTINGS)
        try:   # a usage error, naming the options, where they were typed
            channel = access.channel_settings(settings, flag_of if typed_access else str)
        except ValueError as exc:
            raise (OptionError if typed_access else ValueError)(str(exc)) from None
        run = cls._method_run(settings, typed, host, channel) if method else None
        if run is not None and run.method.kind != UNARY:   # a streaming method: every call a pipe of its shape
            scenario = dataclasses.replace(scenario, pipes={run.method.kind: 100.0})
        _pipe_settings_fit(scenario, typed, run.method.name if run is not None else None)
        return settings, scenario, run

    @classmethod
    def _method_run(cls, settings: dict[str, Any], typed: dict[str, Any], host: str | None,
                    channel: ChannelSettings) -> any_method.MethodRun | None:
        """The user's own method, as `callstate load --method` takes it; errors name the option
        when it was typed, the class attribute otherwise."""
        command_line = any(name in typed for name in any_method.SETTINGS)

        def flag(name: str) -> str:   # the option, unless the class attribute set it (or nothing was typed)
            attr = name.replace("-", "_")
            return flag_of(attr) if attr in typed or (command_line and not settings[attr]) else attr

        options = any_method.options_of(settings)
        error = OptionError if command_line else ValueError
        try:
            run = any_method.resolve(options, _target(host or cls.host), flag, channel)
        except DriveError as exc:
            why, first = str(exc), str(exc).split(" ", 1)[0].rstrip(":")
            named = first.startswith("--callstate-") or first in any_method.SETTINGS   # the line names its option
            raise error(why if named else f"{flag('method')} {options.method}: {why}") from None
        if run is not None and _as("pipes", settings["pipes"], parse_pipe_shares):
            calls = "unary calls" if run.method.kind == UNARY else f"{run.method.kind!r} pipes"
            raise error(f"{flag('pipes')}: the calls on {run.method.name} are {calls}: the method's shape decides")
        return run

    def on_stop(self) -> None:
        if not self.failed:
            self.client.close()
            self.process.add_channel(opened=False)

    @task
    def scripted_call(self) -> None:
        if self.failed:
            raise StopUser()   # failures.py has told the master
        plan = self.scenario.plan(self.rng)
        if plan.pipe is not None:
            return self._pipe_call(plan)
        expected = expected_codes(plan, self.scenario.abort_code)
        t0 = time.perf_counter()
        if self.any_method is None:
            call: Call = self.client.prepare(self._script(plan), payload=self._payload)
        else:
            call = self.client.prepare(self._script(plan), method=self.any_method.method,
                                       request=self.any_method.next_request())
        try:
            end = drive_call_sync(call, plan, self.rng, escalate_after=self.scenario.escalate_after)
        except GreenletExit:
            # Locust stops the user mid-call: cancel it and complete it, so the call ends on
            # both sides and its code is counted like any other.
            self._finish_at_shutdown(call, t0, expected, self._name)
            raise
        self._report(call, end.code, t0, expected, end.reply, self._name)

    def _pipe_call(self, plan: Plan) -> None:
        """A pipe call, driven like `callstate load`'s: each side pushes the scenario's messages,
        cancelled at the plan's point counted in messages."""
        assert plan.pipe is not None
        point, cancel = pipe_cancel(plan)
        expected, name = expected_codes(plan, self.scenario.abort_code), f"pipe-{plan.pipe}"
        t0 = time.perf_counter()
        script, request = pipe_script(plan, self.scenario, self.payload, self.delay), None
        if self.any_method is None:
            pipe: Pipe = self.client.pipe(plan.pipe, script)
        else:   # a streaming method: its request opens an out pipe and is what in and both pipes push
            name, request = self.any_method.method.name, self.any_method.next_request()
            pipe = self.client.pipe(plan.pipe, script, method=self.any_method.method, request=request)
        try:
            drive_pipe_sync(pipe, messages=self.scenario.pipe_messages, message_bytes=self.payload, cancel_at=point,
                            abortive=cancel == ABORTIVE, escalate_after=self.scenario.escalate_after, payload=request)
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

    def _report(self, call: Call | Pipe, code: int, t0: float, expected: frozenset[int], reply: Any,
                kind: str = "") -> None:
        """One Locust request named by the final code, prefixed by `kind`: a pipe's (`pipe-in`) or
        the user's method (`shop.v1.Shop/Charge`)."""
        name = f"{kind} {codes.describe(code)}" if kind else codes.describe(code)
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE, name=name, response_time=(time.perf_counter() - t0) * 1000,
            response_length=_length(reply), context={"call_id": call.call_id},
            exception=None if code in expected else UnexpectedCode(_unexpected(call, code)))


def _unexpected(call: Call | Pipe, code: int) -> str:
    """A failure's text in Locust's failure table: the code and what gRPC said (a wrong host's
    `Connection refused`, a stopping server's `server is shutting down`, a proxy's HTTP 502).
    Locust groups failures by this text: one row per cause, so neither the call's own id nor
    its plan's codes are in it."""
    details = call.details.replace(call.call_id, "<call id>")
    said = f" (gRPC {call.grpc_status}{': ' + details if details else ''})" if call.grpc_status else ""
    return f"{codes.describe(code)}{said}: a final code its plan does not expect"


def _one_schema(settings: dict[str, Any], typed: dict[str, Any]) -> None:
    """The schema is one setting: typed as .proto files (with their import paths) or as a
    descriptor set, it replaces the class's, whichever way the class gave it."""
    if "descriptor_set" in typed and "proto" not in typed:
        settings["proto"] = settings["proto_path"] = ()
    elif "proto" in typed and "descriptor_set" not in typed:
        settings["descriptor_set"] = ""


def _pipe_settings_fit(scenario: Scenario, typed: dict[str, Any], method: str | None = None) -> None:
    """The pipe settings, read together; ValueError naming them, OptionError naming the options
    when one of them was typed (a usage error where it was typed, as a bad value of one is).
    `method`: the user's own method driven (unary when its calls are no pipes: its shape decides)."""
    def name(attr: str) -> str:   # the option when it was typed, else the class attribute
        return flag_of(attr) if attr in typed else attr

    error = OptionError if any(attr in typed for attr in ("pipes", "pipe_cancel_at", "pipe_messages")) else ValueError
    if scenario.pipes and (late := unreachable_pipe_points(scenario.pipe_cancel_at, scenario.pipe_messages)):
        raise error(f"{name('pipe_cancel_at')}: {late[0]} is never reached with {name('pipe_messages')} "
                    f"{scenario.pipe_messages}: each side pushes that many")
    stray = [name(attr) for attr, given in (
        ("pipe_cancel_at", scenario.pipe_cancel_at != parse_pipe_cancel_points(DEFAULT_PIPE_CANCEL_AT)),
        ("pipe_messages", scenario.pipe_messages != Scenario.pipe_messages)) if given]
    if stray and not scenario.pipes:   # no call is a pipe: they would be dropped without a word
        remedy = flag_of("pipes") if error is OptionError else "pipes"   # typed options: the option to add
        raise error(f"{' and '.join(stray)} {'apply' if len(stray) > 1 else 'applies'} to pipes: " + (
            unary_method(method) if method
            else f"set {remedy} (e.g. in=10,out=10,both=10)"))
    if kinds := kinds_without_point(scenario.pipe_cancel_at, scenario.pipes):
        raise error(f"{name('pipe_cancel_at')}: none of {','.join(map(str, scenario.pipe_cancel_at))} applies to "
                    f"an {kinds[0]} pipe (add one that does)")
    if scenario.cancel_at != parse_cancel_points(DEFAULT_CANCEL_AT) and every_call_a_pipe(scenario.pipes):
        # no call is unary: its points (seconds from the start) would be dropped without a word
        every = f"the calls on {method} are {next(iter(scenario.pipes))!r} pipes" if method else \
            f"{name('pipes')} " + ",".join(f"{kind}={share:g}" for kind, share in scenario.pipes.items())
        raise (OptionError if "cancel_at" in typed or "pipes" in typed else ValueError)(
            f"{name('cancel_at')} places the cancels of unary calls, and every call is a pipe ({every}): a pipe is "
            f"cancelled at {name('pipe_cancel_at')} points, counted in messages")


def _length(reply: Any) -> int:
    """A reply's size for Locust: the Emulator's payload, a user's whole response message."""
    if reply is None:
        return 0
    return len(reply.payload) if isinstance(reply, pb.CallReply) else reply.ByteSize()


def _non_negative_int(value: str | int) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be >= 0")
    return number


def _abort_code(value: str | int) -> int:
    code = int(value)
    check_abort_code(code)   # 0 or wider than 32 bits: every abort would be refused (87)
    return code


def _payload_size(value: str | int) -> int:
    size, most = int(value), Limits().max_payload_bytes
    if not 0 <= size <= most:   # a larger one is refused by a server's default limit (87) on every call
        raise ValueError(f"must be in 0..{most} (what a server accepts by default)")
    return size


def _option_check(validate: Callable[[str], Any]) -> Callable[[str | float], Any]:
    """The option's own check (`--callstate-hold-for`'s, say) for a class attribute's value."""
    def parse(value: str | float) -> Any:
        try:
            return validate(str(value))
        except argparse.ArgumentTypeError as exc:
            raise ValueError(str(exc)) from None
    return parse


_positive_seconds, _non_negative_seconds = _option_check(positive_float), _option_check(non_negative_float)
_NUMBERS = (float, int, _non_negative_int, _abort_code, _payload_size, _positive_seconds,
            _non_negative_seconds)   # a class attribute's number goes through these too


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
    on_worker = isinstance(environment.runner, WorkerRunner)   # the master has checked its --host
    if environment.host and not on_worker and (why := _bad_target(environment.host)):
        usage_error(f"argument --host: {why}")
    for user_class in environment.user_classes or ():
        if issubclass(user_class, CallstateUser):
            try:
                if not environment.host and (why := _bad_target(user_class.host)):
                    raise ValueError(f"host = {user_class.host!r}: {why}")
                # a worker learns the host and the options typed on its master only when told to
                # spawn, and the master has checked them: its method is read at its first user
                user_class.configure(environment.parsed_options, environment.host,
                                     method=not isinstance(environment.runner, WorkerRunner))
            except OptionError as exc:
                usage_error(str(exc))
            except (TypeError, ValueError) as exc:
                logging.getLogger("callstate.locust").error("callstate: %s: %s", user_class.__name__, exc)
                sys.exit(2)


def _bad_target(host: str) -> str:
    """Why `host` is no target `callstate load --target` would take ("" when it is one): a port
    past 65535 would otherwise be taken modulo 65536 by gRPC, a call to another port."""
    try:
        grpc_target(_target(host))
    except argparse.ArgumentTypeError as exc:
        return str(exc)
    return ""


def _target(host: str | None) -> str:
    host = host or CallstateUser.host
    for prefix in ("grpc://", "http://"):
        if host.startswith(prefix):
            host = host[len(prefix):]
    return host.rstrip("/")
