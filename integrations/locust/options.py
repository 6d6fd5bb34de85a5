"""The `--callstate-*` options Locust's command line gets (the same scenario options as
`callstate load`), registered through `events.init_command_line_parser`.

Locust's master sends its custom options to the workers as plain values, so each option is
kept as the text given (validated here, so a bad value is one argparse error line and exit
status 2 on the machine where it was typed) and parsed by the user class.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from locust import events

from callstate.arg_types import (abort_code, bounded_int, cancel_points, cancel_poll, cancel_shares, directory, json_object, method_name,
                                 non_negative_float, non_negative_int, on_cancel_mix, outcome_mix, pipe_cancel_points,
                                 pipe_shares, positive_float, readable_file)
from callstate.cancel_points import PIPE as PIPE_POINTS, UNARY as UNARY_POINTS
from callstate.script import ABORT_CODE_RULE, Limits

# option name -> (the CallstateUser attribute it overrides, validator, help)
OPTIONS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "--callstate-mix": ("mix", outcome_mix, "outcome weights, e.g. complete=60,abort=20,fatal=10,hold=10"),
    "--callstate-cancel": ("cancel", cancel_shares,
                           "percent of calls cancelled by kind, e.g. abortive=20,non-abortive=10, or none"),
    "--callstate-cancel-at": ("cancel_at", cancel_points,
                              "where cancels happen: " + UNARY_POINTS.usage()),
    "--callstate-on-cancel": ("on_cancel", on_cancel_mix, "what the server does on a cancel, as weights of "
                              "abort, complete, ignore"),
    "--callstate-hold-for": ("hold_for", positive_float, "uncancelled held calls are cancelled after SECONDS"),
    "--callstate-escalate-after": ("escalate_after", positive_float,
                                   "a non-abortive cancel escalates to abortive after SECONDS unanswered"),
    "--callstate-abort-code": ("abort_code", abort_code, f"exception code of aborts: {ABORT_CODE_RULE}"),
    "--callstate-delay": ("delay", non_negative_float, "server processing time before complete/abort/fatal"),
    "--callstate-payload": ("payload", bounded_int(0, Limits().max_payload_bytes, "what a server accepts by default"),
                            f"request payload and reply size in bytes, at most {Limits().max_payload_bytes}"),
    "--callstate-call-timeout": ("call_timeout", positive_float, "gRPC deadline of each call (default: none)"),
    "--callstate-pipes": ("pipes", pipe_shares, "percent of calls that are pipes, by kind, e.g. in=10,out=10,both=10, "
                          "or none"),
    "--callstate-pipe-cancel-at": ("pipe_cancel_at", pipe_cancel_points, "where cancelled pipes are cancelled: "
                                   + PIPE_POINTS.usage()),
    "--callstate-pipe-messages": ("pipe_messages", non_negative_int, "messages each side pushes on a pipe"),
    "--callstate-cancel-poll": ("cancel_poll", cancel_poll, "how often the server's handlers test for a cancel, as "
                                "weights of intervals in ms, e.g. 0=50,100=50, or none (the server's default)"),
    "--callstate-log-file": ("log_file", str, "the client state log of each process; {worker} is the worker's id "
                             "(\"local\" without a master), {pid} its process id; empty: no log"),
    # any service: a method of the target's own proto, as `callstate load --method` (callstate.schema.drive)
    "--callstate-method": ("method", method_name, "a method of the target's own service, pkg.Svc/Method, called "
                           "instead of the Emulator's; its shape decides: unary calls, or pipes of its kind"),
    "--callstate-data": ("data", json_object, "the method's request in its proto JSON form (default: {})"),
    "--callstate-data-file": ("data_file", readable_file, "one JSON request per line, used in turn"),
    "--callstate-proto": ("proto", readable_file, "a .proto file with the method's service (repeatable; default: "
                          "the target's reflection, read once per process)"),
    "--callstate-proto-path": ("proto_path", directory, "import path for --callstate-proto, like protoc -I "
                               "(repeatable)"),
    "--callstate-descriptor-set": ("descriptor_set", readable_file, "a FileDescriptorSet with the method's service"),
    # access, as `callstate load`'s --tls-ca, --tls-cert, --tls-key, --token (access.py)
    "--callstate-tls-ca": ("tls_ca", readable_file, "PEM of the CA that signed the server's certificate (turns TLS on)"),
    "--callstate-tls-cert": ("tls_cert", readable_file, "PEM client certificate, for a server that requires one "
                             "(with --callstate-tls-key)"),
    "--callstate-tls-key": ("tls_key", readable_file, "PEM key of --callstate-tls-cert"),
    "--callstate-token": ("token", str, "bearer token sent with every call (default: $CALLSTATE_TOKEN)"),
}
REPEATABLE = {"--callstate-proto", "--callstate-proto-path"}   # lists, as `callstate load`'s --proto, --proto-path
_PARSER: list[Any] = []   # the parser the options were added to: errors found across options end as its error


def _checked(validate: Callable[[str], Any]) -> Callable[[str], str]:
    def convert(text: str) -> str:
        validate(text)   # raises argparse.ArgumentTypeError naming the problem
        return text
    convert.__name__ = getattr(validate, "__name__", "value")
    return convert


def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("callstate", "scenario of CallstateUser (defaults: its class attributes)")
    for flag, (attr, validate, help_text) in OPTIONS.items():
        group.add_argument(flag, type=_checked(validate), default=None, metavar=attr.upper(), help=help_text,
                           env_var=env_var_of(flag), **({"action": "append"} if flag in REPEATABLE else {}))
    _PARSER[:] = [parser]


def env_var_of(flag: str) -> str:
    """The environment variable that gives an option, in Locust's own naming (`--callstate-mix` ->
    `LOCUST_CALLSTATE_MIX`, as `--users` is `LOCUST_USERS`): how a container or CI job configures
    a run. The command line wins over it, as for Locust's options."""
    return "LOCUST_" + flag[2:].upper().replace("-", "_")


def usage_error(message: str) -> None:
    """A problem only the options together show (an unknown method, a request that does not fit
    it): one argparse error line and exit status 2, as a bad value of one option gives."""
    if _PARSER:
        _PARSER[0].error(message)   # exits
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def flag_of(attr: str) -> str:
    """The option that sets a user attribute (`data_file` -> `--callstate-data-file`)."""
    return next(flag for flag, (name, _, _) in OPTIONS.items() if name == attr)


# The options typed on this worker's own command line: Locust replaces a worker's custom options
# with the master's at each spawn, an option the master was not given included (as None), so a
# worker's own --callstate-log-file or TLS files would vanish without a word.
_TYPED_ON_WORKER: dict[str, Any] = {}


def overrides(parsed_options: Any) -> dict[str, str]:
    """The options given on the command line (or sent by the master), by user attribute; on a
    worker, those typed on its own command line that the master did not give too."""
    out: dict[str, str] = dict(_TYPED_ON_WORKER)
    for flag, (attr, _, _) in OPTIONS.items():
        value = getattr(parsed_options, flag[2:].replace("-", "_"), None) if parsed_options is not None else None
        if value is not None:
            out[attr] = value
    return out


def _keep_worker_options(environment: Any, **_: Any) -> None:
    from locust.runners import WorkerRunner

    if isinstance(environment.runner, WorkerRunner):   # its own options, before any spawn replaces them
        _TYPED_ON_WORKER.update(overrides(environment.parsed_options))


events.init_command_line_parser.add_listener(add_arguments)
events.init.add_listener(_keep_worker_options)
