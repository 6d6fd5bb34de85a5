"""`callstate call --pipe KIND`: one asynchronous pipe call, printing each client state as it
is entered (the pipe options live here; cli/call.py adds them and hands pipe calls over)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from callstate import codes
from callstate.check import counted
from callstate.cli.method_options import message_text, reply_text
from callstate.arg_types import non_negative_float, positive_int
from callstate.cli.options import message_count, push_bytes, server_push_bytes
from callstate.cli.interrupt import CancelOnSignals, cancel_if_pending
from callstate.cli.terminal import print_final, printable
from callstate.schema.drive import unary_method
from callstate.lifecycle import ABORT, CAN, FATAL, PIPE_IN, PIPE_KINDS, PIPE_OUT
from callstate.cancel_points import AFTER_RECEIVED as CANCEL_AFTER_RECEIVED, AFTER_SENT as CANCEL_AFTER_SENT, PIPE as PIPE_POINTS
from callstate.cancel_points import BEFORE_START
from callstate.pipe_script import BREACHES, DEFAULT_MESSAGES, POINTS, PipeCancelPoint, PipeScript, validate_pipe
from callstate.script import HOLD, RequestError

PIPE_EXAMPLES = """
pipes (MS-RPC asynchronous pipes as gRPC streams):
  callstate call --pipe out --server-messages 5                    # the server pushes 5, the caller pulls them
  callstate call --pipe in --messages 100 --message-bytes 1024     # the caller pushes 100 and half-closes
  callstate call --pipe both --outcome abort --code 5001 --at after-in --at-count 2
  callstate call --pipe out --outcome hold --cancel-at after-received:3              # abortive: 1818
  callstate call --pipe both --cancel-at after-sent:2 --non-abortive --on-cancel complete   # 0
"""


def _cancel_point(text: str) -> PipeCancelPoint:
    try:
        return PipeCancelPoint.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_pipe_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pipes", "with --pipe, the call is an asynchronous pipe (a gRPC stream); --outcome, "
                             "--code, --grpc-status, --message, --on-cancel, --dispatch-delay, --delay, "
                             "--non-abortive and --escalate-after apply to it too")
    g.add_argument("--pipe", choices=PIPE_KINDS, help="in: the caller pushes (client-streaming); out: the server "
                   "pushes (server-streaming); both: bidi")
    g.add_argument("--messages", type=message_count, default=DEFAULT_MESSAGES, metavar="N",
                   help="in, both: messages the caller pushes before its null push (default: %(default)s)")
    g.add_argument("--message-bytes", type=push_bytes, default=0, metavar="N", help="size of each of them")
    g.add_argument("--interval", type=non_negative_float, default=0.0, metavar="SECONDS",
                   help="between the caller's pushes")
    g.add_argument("--server-messages", type=message_count, default=DEFAULT_MESSAGES, metavar="N",
                   help="out, both: messages the server pushes (default: %(default)s; a held pipe sends until the end)")
    g.add_argument("--server-message-bytes", type=server_push_bytes, default=0, metavar="N")
    g.add_argument("--server-interval", type=non_negative_float, default=0.0, metavar="SECONDS",
                   help="between the server's pushes (a held pipe with 0: the server's default, 0.1 s)")
    g.add_argument("--at", choices=list(POINTS), default="end",
                   help="where the server's outcome happens (default: %(default)s: its messages sent and the "
                        "caller's null push in)")
    g.add_argument("--at-count", type=positive_int, default=1, metavar="N", help="N for --at after-in / after-out (default: %(default)s)")
    g.add_argument("--cancel-at", type=_cancel_point, metavar="POINT",
                   help=f"cancel the pipe at one of {PIPE_POINTS.usage()} (abortive unless --non-abortive)")
    g.add_argument("--breach", choices=list(BREACHES), default="none",
                   help="the server breaks a pipe rule on purpose: complete-undrained (in, both; with --at "
                        "before-first/after-in/after-out) or push-after-end (out, both); the call ends 1917 "
                        "RPC_X_PIPE_DISCIPLINE_ERROR (default: %(default)s: no breach)")
    g.add_argument("--log-messages", action="store_true",
                   help="also log one line per message (send_complete / receive_complete)")


# the pipe options given away from their defaults, by what they set: the caller's pushes, the
# server's, the rest of the server's script
_CALLER_SIDE = (("--messages", "messages", DEFAULT_MESSAGES), ("--message-bytes", "message_bytes", 0),
                ("--interval", "interval", 0.0))
_SERVER_SIDE = (("--server-messages", "server_messages", DEFAULT_MESSAGES),
                ("--server-message-bytes", "server_message_bytes", 0), ("--server-interval", "server_interval", 0.0))
_PIPE_ONLY = (("--at", "at", "end"), ("--at-count", "at_count", 1), ("--log-messages", "log_messages", False))
# the sizes of the Emulator's own pipe messages: a user's method has messages of its own
_PAYLOAD_SIZES = (_CALLER_SIDE[1], _SERVER_SIDE[1])
# what of the pipe options only the server's script carries (with --no-script none is sent)
SERVER_SCRIPT = _SERVER_SIDE + _PIPE_ONLY[:2] + (("--breach", "breach", "none"),)


def given_options(opts: argparse.Namespace, options: tuple[tuple[str, str, object], ...]) -> list[str]:
    """The flags of `options` (flag, attribute, default) given on the command line, at their
    default values too (`given_dests`, recorded by the parser), or set to other values."""
    typed = getattr(opts, "given_dests", frozenset())
    return [flag for flag, name, default in options if name in typed or getattr(opts, name) != default]


def to_pipes(opts: argparse.Namespace) -> str:
    """Where the options of pipes apply: `--pipe`, or, on a unary --method, nowhere (its shape decides)."""
    if getattr(opts, "drive", None) is not None:
        return f"to pipes: {unary_method(opts.method)}"
    return "to pipes (--pipe in, out or both)"


def pipe_options_dropped(opts: argparse.Namespace) -> str | None:
    """A pipe option the call would drop without a word (None: none is): on a unary call, the
    caller's pushes on an out pipe, the server's on an in pipe, --at-count without a counted --at."""
    def apply(flags: list[str]) -> str:
        return " and ".join(flags) + (" apply" if len(flags) > 1 else " applies")
    if not opts.pipe:
        if given := given_options(opts, _CALLER_SIDE + _SERVER_SIDE + _PIPE_ONLY):
            return f"{apply(given)} {to_pipes(opts)}"
        return None
    if getattr(opts, "drive", None) is not None and (given := given_options(opts, _PAYLOAD_SIZES)):
        return (f"{apply(given)} to callstate's own pipes (--pipe without --method): {opts.method} pushes its "
                "request from --data, and a stand-in pushes a rule's reply (docs/any-service.md)")
    if opts.pipe == PIPE_OUT and (given := given_options(opts, _CALLER_SIDE)):
        return f"{apply(given)} to the caller's pushes: on an out pipe only the server pushes (--server-messages ...)"
    if opts.pipe == PIPE_IN and (given := given_options(opts, _SERVER_SIDE)):
        return f"{apply(given)} to the server's pushes: on an in pipe only the caller pushes (--messages ...)"
    if opts.at not in ("after-in", "after-out") and opts.at_count != 1:
        return "--at-count applies to --at after-in or after-out"
    return None


def run_pipe(opts: argparse.Namespace, provider: object = None) -> int:
    """`call --pipe`: `opts.settings` (TLS, token) from channel_settings; `provider`: a tracer
    provider (--otel) or None."""
    if opts.cancel_at is not None and not opts.cancel_at.applies_to(opts.pipe):
        print(f"callstate call: --cancel-at {opts.cancel_at} does not apply to an {opts.pipe} pipe", file=sys.stderr)
        return 2
    if opts.cancel_at is not None and (why := _cannot_fire(opts)):
        print(f"callstate call: --cancel-at {opts.cancel_at} can never fire: {why}", file=sys.stderr)
        return 2
    if why := _not_for_kind(opts):   # refused here, as the client would refuse it at start (logged)
        print(f"callstate call: --pipe {opts.pipe}: {why}", file=sys.stderr)
        return 2
    # counted past the pipe's messages: asked once the point applies to its kind
    if why := _point_never_reached(opts):
        print(f"callstate call: --at {opts.at} --at-count {opts.at_count} is never reached: {why}", file=sys.stderr)
        return 2
    if opts.cancel_before_start:
        opts.cancel_at = PipeCancelPoint(BEFORE_START)
    return asyncio.run(_pipe(opts, provider))   # an OSError (--log-file) is call's to say


async def _pipe(opts: argparse.Namespace, provider: object = None) -> int:
    from callstate.cli.terminal import PrintSink, open_state_log
    from callstate.client import AsyncClient, CallError
    from callstate.client.pipe_drive import drive_pipe

    script = _pipe_script(opts)
    sink = PrintSink(sys.stdout, opts.json, open_state_log(opts.log_file) if opts.log_file else None)
    client = AsyncClient(opts.target, log=sink, timeout=opts.timeout, settings=opts.settings,
                         tracing=provider if provider is not None else False)  # type: ignore[arg-type]
    drive = getattr(opts, "drive", None)   # --method: a streaming method of any service (cli/method_options.py)
    loop = asyncio.get_running_loop()

    def on_started(pipe) -> None:  # type: ignore[no-untyped-def]
        signals.started()   # a Ctrl-C or SIGTERM that came before the start
        if opts.cancel_after is not None:
            loop.call_later(opts.cancel_after, cancel_if_pending, pipe, not opts.non_abortive,
                            opts.escalate_after if opts.non_abortive else None)

    def on_message(message) -> None:  # type: ignore[no-untyped-def]
        # a user's method: each message its server streams, as it comes (stderr, as the final
        # line: stdout holds only the state lines, JSON lines with --json)
        print(printable(f"pulled {pipe.received}: {message_text(message)}"), file=sys.stderr, flush=True)

    try:
        if drive is None:
            pipe = client.pipe(opts.pipe, script, log_messages=opts.log_messages)
        else:
            pipe = client.pipe(opts.pipe, None if opts.no_script else script, log_messages=opts.log_messages,
                               method=drive.method, request=drive.requests[0])
        signals = CancelOnSignals(pipe)
        try:
            reply = await drive_pipe(pipe, messages=opts.messages, message_bytes=opts.message_bytes,
                                     interval=opts.interval, cancel_at=opts.cancel_at, abortive=not opts.non_abortive,
                                     escalate_after=opts.escalate_after, on_started=on_started,
                                     payload=drive.requests[0] if drive is not None else None,
                                     on_message=on_message if drive is not None else None)
        except CallError as err:
            print_final(err.code, f"{err.details}; pushed {pipe.sent}, pulled {pipe.received}{_uncancelled(opts, pipe)}"
                        if err.details else "")
            return 1
        if drive is not None:
            got = f"; {reply_text(reply)}" if reply is not None else ""
        else:
            got = f"; the server pulled {reply.received}" if reply is not None else ""
        print_final(codes.RPC_S_OK, f"pushed {pipe.sent}, pulled {pipe.received}{got}{_uncancelled(opts, pipe)}")
        return 0
    finally:
        await client.close()
        sink.close()


def _uncancelled(opts: argparse.Namespace, pipe: object) -> str:
    """What the final line adds when --cancel-after never cancelled: the pipe ended first (as a
    unary call's line says)."""
    if opts.cancel_after is None or CAN in pipe.history:  # type: ignore[attr-defined]
        return ""
    return f" (it ended before --cancel-after {opts.cancel_after:g}: nothing was cancelled)"


def _pipe_script(opts: argparse.Namespace) -> PipeScript:
    return PipeScript(outcome=opts.outcome, at=opts.at,
                      at_count=opts.at_count if opts.at in ("after-in", "after-out") else 0,
                      messages=opts.server_messages, message_bytes=opts.server_message_bytes,
                      interval=opts.server_interval, dispatch_delay=opts.dispatch_delay, outcome_delay=opts.delay,
                      abort_code=opts.code, abort_status=opts.grpc_status,
                      abort_message=opts.message if opts.outcome == ABORT else "",
                      fatal_message=opts.message if opts.outcome == FATAL else "", on_cancel=opts.on_cancel,
                      cancel_poll=None if opts.cancel_poll_ms is None else opts.cancel_poll_ms / 1000,
                      breach=opts.breach)


def _not_for_kind(opts: argparse.Namespace) -> str:
    """Why the server's script cannot apply to this pipe kind (--at, --breach; empty: it can):
    the check the client runs at start, made before anything is logged."""
    if getattr(opts, "drive", None) is not None and opts.no_script:
        return ""
    try:
        validate_pipe(_pipe_script(opts).to_proto(), opts.pipe)
    except RequestError as exc:
        return str(exc)
    return ""


def _point_never_reached(opts: argparse.Namespace) -> str:
    """Why the server's counted --at point is past the messages the pipe carries (empty: it is
    reached); the server would then take its outcome at the end, not where it was asked to."""
    if getattr(opts, "drive", None) is not None and opts.no_script:
        return ""
    if opts.at == "after-in" and opts.pipe != PIPE_OUT and opts.at_count > opts.messages:
        return f"the caller pushes only {counted(opts.messages, 'message')} (--messages)"
    if opts.at == "after-out" and opts.outcome != HOLD and opts.at_count > opts.server_messages:
        return f"the server pushes only {counted(opts.server_messages, 'message')} (--server-messages)"
    return ""


def _cannot_fire(opts: argparse.Namespace) -> str:
    """Why a counted cancel point is past what the pipe will carry (empty: it can fire)."""
    point = opts.cancel_at
    if point.kind == CANCEL_AFTER_SENT and point.count > opts.messages:
        return f"the caller pushes only {counted(opts.messages, 'message')} (--messages)"
    if point.kind != CANCEL_AFTER_RECEIVED:
        return ""
    if opts.at == "before-first":   # the outcome comes before the server's first push: none follows it
        return "the server pushes nothing before its outcome (--at before-first)"
    if opts.at == "after-out" and point.count > opts.at_count:
        return f"the server's outcome comes after its {counted(opts.at_count, 'push', 'pushes')} (--at after-out --at-count)"
    if opts.outcome != HOLD and point.count > opts.server_messages:
        return f"the server pushes only {counted(opts.server_messages, 'message')} (--server-messages)"
    return ""
