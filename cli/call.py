"""`callstate call`: one scripted call, printing each client state as it is entered."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from callstate import codes
from callstate.check import counted
from callstate.cli import COMMANDS
from callstate.cli.observe_options import add_otel, shutdown_tracing, tracer_provider
from callstate.arg_types import bounded_int, finite_float, int64, non_negative_float, positive_float
from callstate.cli.options import abort_code, add_target, channel_settings, epilog, grpc_status, para, text
from callstate.cli.method_options import METHOD_EXAMPLES, DriveError, add_method_options, drive_of, reply_text
from callstate.cli.pipe import (PIPE_EXAMPLES, SERVER_SCRIPT, add_pipe_options, given_options, pipe_options_dropped,
                                run_pipe, to_pipes)
from callstate.cli.interrupt import CancelOnSignals, cancel_if_pending
from callstate.cli.terminal import print_final
from callstate.lifecycle import ABORT, FATAL, UNARY
from callstate.script import ABORT_CODE_RULE, ON_CANCEL, OUTCOMES, Limits, Script

_SCRIPT, _LIMITS = Script(), Limits()

EXAMPLES = """
examples:
  callstate call --outcome complete --reply-bytes 64
  callstate call --outcome abort --code 5001                       # the exact code reaches the client
  callstate call --outcome fatal                                   # 1726 RPC_S_CALL_FAILED
  callstate call --outcome hold --cancel-after 0.2                 # abortive cancel: 1818
  callstate call --outcome hold --cancel-after 0.2 --non-abortive --on-cancel complete   # reply arrives: 0
  callstate call --outcome hold --on-cancel ignore --cancel-after 0.2 --non-abortive --escalate-after 0.5
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("call", help=COMMANDS["call"].help,
                       description=para("Make one scripted call and print each client state (C, Can, WComp, Comp, "
                                        "End) as it is entered, then the final code. Exit status 0 only for 0 "
                                        "RPC_S_OK with its --log-file written whole, 1 for any other final code or a log that "
                                        "could not be written, 2 for bad usage."),
                       epilog=epilog() + "\n" + EXAMPLES + PIPE_EXAMPLES + METHOD_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target(p)
    p.add_argument("--outcome", choices=list(OUTCOMES), default=_SCRIPT.outcome,
                   help="what the server's handler does (default: %(default)s)")
    p.add_argument("--dispatch-delay", type=finite_float, default=_SCRIPT.dispatch_delay, metavar="SECONDS",
                   help="delay before the handler processes the call (a negative one is sent as it is: "
                        "the client refuses it, C -> End, 87) (default: %(default)s)")
    p.add_argument("--delay", type=non_negative_float, default=_SCRIPT.outcome_delay, metavar="SECONDS",
                   help="processing time before the outcome (default: %(default)s)")
    p.add_argument("--reply-bytes", type=int64, default=_SCRIPT.reply_bytes, metavar="N",
                   help="complete: size of the reply (default: %(default)s)")
    p.add_argument("--payload", default="", help="request payload (its bytes as given, UTF-8 or not); with --echo "
                   "it comes back")
    p.add_argument("--echo", action="store_true", help="complete: reply with the request payload")
    p.add_argument("--code", type=abort_code, help=f"abort: the exception code, {ABORT_CODE_RULE} (default: {_SCRIPT.abort_code}); "
                   "only with --outcome abort, any other outcome refuses it (exit 2)")
    p.add_argument("--grpc-status", type=grpc_status, metavar="N",
                   help="abort: gRPC status code to send it with (default: ABORTED); only with --outcome abort")
    p.add_argument("--message", type=text, default="", help="abort: status message; fatal: exception text")
    p.add_argument("--headers-first", action="store_true",
                   help="the handler sends initial metadata before its outcome (no trailers-only response)")
    p.add_argument("--on-cancel", choices=list(ON_CANCEL), default=_SCRIPT.on_cancel,
                   help="what the handler does when it sees a cancel (default: %(default)s)")
    p.add_argument("--cancel-poll-ms", type=bounded_int(0, _LIMITS.max_delay_ms), metavar="MS",
                   help="the server's handler tests for a cancel only every MS ms and at its outcome (0: at once) "
                        "(default: the server's --cancel-poll-ms)")
    p.add_argument("--cancel-after", type=non_negative_float, metavar="SECONDS",
                   help="cancel the call this long after starting it (if not yet notified)")
    p.add_argument("--cancel-before-start", action="store_true", help="cancel in state C: the call never goes out")
    p.add_argument("--non-abortive", action="store_true",
                   help="cancel with a notice to the server and keep waiting for its answer (default: abortive)")
    p.add_argument("--escalate-after", type=positive_float, metavar="SECONDS",
                   help="with --non-abortive: escalate to an abortive cancel after this long without an answer")
    p.add_argument("--json", action="store_true", help="print state entries as JSON lines")
    p.add_argument("--log-file", metavar="PATH", help="also append the client state log to this file")
    add_otel(p)
    add_pipe_options(p)
    add_method_options(p, data_file_help="a file whose first JSON line is the request")
    return p


def run(opts: argparse.Namespace) -> int:
    from callstate.client.any_method import shape
    from callstate.observe import ObserveError

    opts.settings = channel_settings(opts)
    try:
        opts.drive = drive_of(opts, opts.settings)
    except DriveError as exc:
        print(f"callstate call: {exc}", file=sys.stderr)
        return 2
    if opts.drive is not None and opts.drive.method.kind != UNARY:   # a streaming method: a pipe of its shape
        if opts.pipe not in (None, opts.drive.method.kind):
            opts.target_parser.error(f"--pipe {opts.pipe}: {opts.method} is {shape(opts.drive.method.kind)}, "
                                     f"a pipe of --pipe {opts.drive.method.kind}")
        opts.pipe = opts.drive.method.kind
    elif opts.drive is not None and opts.pipe:
        opts.target_parser.error(f"--pipe {opts.pipe}: {opts.method} is unary")
    if (why := _never_applies(opts)) is not None:
        print(f"callstate call: error: {why} (see callstate call --help)", file=sys.stderr)
        return 2
    opts.code = _SCRIPT.abort_code if opts.code is None else opts.code
    opts.grpc_status = _SCRIPT.abort_status if opts.grpc_status is None else opts.grpc_status

    from callstate.logfile import StateLog

    provider, failed_logs = None, StateLog.failures
    try:
        provider = tracer_provider(opts, "callstate-call")
        # traced and secured alike; a --log-file that could not be written whole fails the command
        status = run_pipe(opts, provider) if opts.pipe else asyncio.run(_call(opts, provider))
        return status or int(StateLog.failures > failed_logs)
    except (OSError, ObserveError) as exc:   # e.g. --log-file in a folder that does not exist
        print(f"callstate call: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown_tracing(provider, "callstate call")


def _never_applies(opts: argparse.Namespace) -> str | None:
    """What in the command line would be dropped without a word (the call made as if it were not
    given), or None: refused instead, so nothing exits 0 having done less than asked."""
    return next((why for check in _DROPPED if (why := check(opts)) is not None), None)


def _named(flags: list[str], verb: str, verbs: str) -> str:
    """'--a applies', '--a and --b apply'."""
    return f"{' and '.join(flags)} {verbs if len(flags) > 1 else verb}"


# the options the call's script carries, with their defaults
_SCRIPT_OPTIONS = (("--outcome", "outcome", _SCRIPT.outcome),
                   ("--dispatch-delay", "dispatch_delay", _SCRIPT.dispatch_delay),
                   ("--delay", "delay", _SCRIPT.outcome_delay), ("--code", "code", None),
                   ("--grpc-status", "grpc_status", None), ("--message", "message", ""),
                   ("--headers-first", "headers_first", False), ("--on-cancel", "on_cancel", _SCRIPT.on_cancel),
                   ("--cancel-poll-ms", "cancel_poll_ms", None))


def _script_options_without_a_script(opts: argparse.Namespace) -> str | None:
    # --no-script: the server decides, and the script these options make is never sent
    if opts.drive is None or not opts.no_script or not (given := given_options(opts, _SCRIPT_OPTIONS + SERVER_SCRIPT)):
        return None
    return f"{' and '.join(given)}: with --no-script no script is sent, the server decides the call's outcome"


def _emulator_fields_on_a_method(opts: argparse.Namespace) -> str | None:
    # a user's method sends --data and is answered with its rule's reply: Emulator/Call's own fields would be dropped
    foreign = [flag for flag, given in (("--payload", opts.payload), ("--echo", opts.echo),
                                        ("--reply-bytes", opts.reply_bytes != _SCRIPT.reply_bytes)) if given]
    if opts.drive is None or not foreign:
        return None
    return (f"{_named(foreign, 'applies', 'apply')} without --method only: "
            f"{opts.method} sends its request from --data, and its reply is a rule's (docs/any-service.md)")


def _abort_settings_elsewhere(opts: argparse.Namespace) -> str | None:
    stray = [flag for flag, value in (("--code", opts.code), ("--grpc-status", opts.grpc_status)) if value is not None]
    if not stray or opts.outcome == ABORT:
        return None
    return f"{_named(stray, 'applies', 'apply')} to --outcome abort only, not {opts.outcome}"


def _cancel_settings_unused(opts: argparse.Namespace) -> str | None:
    if not opts.pipe and opts.cancel_at is not None:   # it would never fire
        return (f"--cancel-at {opts.cancel_at} applies {to_pipes(opts)}; a unary call is cancelled with "
                "--cancel-after SECONDS or --cancel-before-start")
    later = [flag for flag, value in (("--cancel-after", opts.cancel_after), ("--cancel-at", opts.cancel_at))
             if value is not None]
    if opts.cancel_before_start and later:   # the call never goes out: they would never fire
        return (f"--cancel-before-start cancels in state C, before the call goes out: "
                f"{_named(later, 'is', 'are')} never reached")
    # how to cancel, with nothing that cancels (Ctrl-C cancels abortively)
    cancels = opts.cancel_after is not None or opts.cancel_before_start or opts.cancel_at is not None
    how = [flag for flag, value in (("--non-abortive", opts.non_abortive), ("--escalate-after", opts.escalate_after))
           if value]
    if how and not cancels:
        return (f"{_named(how, 'says', 'say')} how to cancel, but nothing cancels the "
                "call: add --cancel-after SECONDS, --cancel-before-start or (pipes) --cancel-at POINT")
    if opts.escalate_after is not None and not opts.non_abortive:
        return "--escalate-after escalates a non-abortive cancel: add --non-abortive (an abortive cancel needs no escalation)"
    return None


def _breach_on_a_unary_call(opts: argparse.Namespace) -> str | None:
    if opts.pipe or opts.breach == "none":   # a pipe rule: a unary call would complete 0 as if it held
        return None
    return f"--breach {opts.breach} breaks a pipe rule: it applies {to_pipes(opts)}"


def _unary_fields_on_a_pipe(opts: argparse.Namespace) -> str | None:
    # a pipe's messages are --message-bytes zero bytes each way: Emulator/Call's own fields would be dropped
    foreign = [flag for flag, given in (("--payload", opts.payload), ("--echo", opts.echo),
                                        ("--reply-bytes", opts.reply_bytes != _SCRIPT.reply_bytes)) if given]
    if not opts.pipe or opts.drive is not None or not foreign:
        return None
    return (f"{_named(foreign, 'applies', 'apply')} to unary calls: a pipe's messages are --message-bytes (the "
            "caller's) and --server-message-bytes (the server's)")


_DROPPED = (_script_options_without_a_script, _emulator_fields_on_a_method, _abort_settings_elsewhere,
            _cancel_settings_unused, _breach_on_a_unary_call, _unary_fields_on_a_pipe, pipe_options_dropped)


async def _call(opts: argparse.Namespace, provider: object = None) -> int:
    from callstate.cli.terminal import PrintSink, open_state_log
    from callstate.client import AsyncClient, CallError

    script = Script(outcome=opts.outcome, dispatch_delay=opts.dispatch_delay, outcome_delay=opts.delay,
                    reply_bytes=opts.reply_bytes, echo=opts.echo, abort_code=opts.code, abort_status=opts.grpc_status,
                    abort_message=opts.message if opts.outcome == ABORT else "",
                    fatal_message=opts.message if opts.outcome == FATAL else "", on_cancel=opts.on_cancel,
                    headers_first=opts.headers_first,
                    cancel_poll=None if opts.cancel_poll_ms is None else opts.cancel_poll_ms / 1000)
    sink = PrintSink(sys.stdout, opts.json, open_state_log(opts.log_file) if opts.log_file else None)
    client = AsyncClient(opts.target, log=sink, timeout=opts.timeout, settings=opts.settings,  # type: ignore[arg-type]
                         tracing=provider if provider is not None else False)
    try:
        if opts.drive is None:
            call = client.prepare(script, payload=os.fsencode(opts.payload))
        else:
            call = client.prepare(None if opts.no_script else script, method=opts.drive.method,
                                  request=opts.drive.requests[0])
        abortive = not opts.non_abortive
        uncancelled = ""
        if opts.cancel_before_start:
            call.cancel(abortive=abortive)
        else:
            signals = CancelOnSignals(call)
            try:
                call.start()
            except CallError as err:   # C -> End: the call was never made, nothing to complete
                print_final(err.code, f"the call was not made: {err.details}")
                return 1
            signals.started()
            if opts.cancel_after is not None:
                if await call.wait(opts.cancel_after):   # its outcome came first: the cancel never happened
                    uncancelled = f" (it ended before --cancel-after {opts.cancel_after:g}: nothing was cancelled)"
                else:
                    cancel_if_pending(call, abortive, opts.escalate_after if opts.non_abortive else None)
        try:
            reply = await call
        except CallError as err:
            print_final(err.code, err.details + uncancelled)
            return 1
        if opts.drive is not None:
            print_final(codes.RPC_S_OK, reply_text(reply) + uncancelled)
            return 0
        print_final(codes.RPC_S_OK, f"reply of {counted(len(reply.payload), 'byte')}"
                    + (", cancel seen by the server" if reply.cancel_seen else "") + uncancelled)
        return 0
    finally:
        await client.close()
        sink.close()
