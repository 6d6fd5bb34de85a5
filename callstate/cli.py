"""The `callstate` command line: serve, call, watch, health, load, check."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Sequence

from callstate import __version__

EPILOG = """\
MS-RPC codes: 0 RPC_S_OK, 87 RPC_S_INVALID_ARG, 997 RPC_S_ASYNC_CALL_PENDING,
1460 RPC_S_TIMEOUT, 1722 RPC_S_SERVER_UNAVAILABLE, 1723 RPC_S_SERVER_TOO_BUSY,
1726 RPC_S_CALL_FAILED, 1818 RPC_S_CALL_CANCELLED, 1914 RPC_S_INVALID_ASYNC_HANDLE.
"""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _port(text: str) -> int:
    value = _non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535; 0 picks a free one)")
    return value


def _mix(text: str):  # type: ignore[no-untyped-def]
    from callstate.script import Mix, MixError
    try:
        return Mix.parse(text)
    except MixError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callstate",
        description="Emulate the MS-RPC asynchronous call lifecycle over gRPC: a scripted server, "
                    "scripted calls, a load generator and a checker for both sides' state logs.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"callstate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # -- serve --------------------------------------------------------------------------------
    p = sub.add_parser("serve", help="run the emulator server (Emulator, Journal, health, reflection)",
                       description="Run the gRPC emulator. Each call follows its script: dispatch delay, then "
                                   "complete, abort with a code, fail fatally, or hold until cancelled. Every state "
                                   "entered is written to the state log as a JSON line. Stops gracefully on "
                                   "SIGINT/SIGTERM, ending every call in flight and flushing the log.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on (default: %(default)s; "
                   "0.0.0.0 in containers)")
    p.add_argument("--port", type=_port, default=50051, help="port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--port-file", metavar="PATH", help="write the bound port here once serving (for harnesses)")
    p.add_argument("--log-file", default="-", metavar="PATH",
                   help="state log destination: a file (appended), or - for stdout (default)")
    p.add_argument("--no-state-log", action="store_true", help="do not write a state log (the journal still works)")
    p.add_argument("--journal-size", type=_non_negative_int, default=10_000, metavar="N",
                   help="ended calls the journal keeps in memory (default: %(default)s)")
    p.add_argument("--mix", type=_mix, default=_mix("complete=85,abort=10,fatal=5"), metavar="MIX",
                   help="outcomes for calls without a script, e.g. complete=80,abort=10,fatal=5,hold=5 "
                        "(default: complete=85,abort=10,fatal=5)")
    p.add_argument("--abort-code", type=int, default=4242, metavar="CODE",
                   help="exception code of aborts drawn from the mix (default: %(default)s)")
    p.add_argument("--max-hold", type=_positive_float, default=30.0, metavar="SECONDS",
                   help="a held call ends with 1460 RPC_S_TIMEOUT after this long (default: %(default)s)")
    p.add_argument("--max-delay", type=_positive_float, default=600.0, metavar="SECONDS",
                   help="longest delay a script may ask for (default: %(default)s)")
    p.add_argument("--max-reply-bytes", type=_non_negative_int, default=4 * 1024 * 1024, metavar="N",
                   help="largest reply a script may ask for (default: %(default)s)")
    p.add_argument("--max-in-flight", type=_non_negative_int, default=100_000, metavar="N",
                   help="calls over this many in flight get 1723 RPC_S_SERVER_TOO_BUSY (default: %(default)s)")
    p.add_argument("--seed", type=int, help="seed for the default mix's draws (reproducible runs)")
    p.add_argument("--grace", type=_positive_float, default=2.0, metavar="SECONDS",
                   help="on shutdown, how long calls in flight get before they are ended (default: %(default)s)")
    p.set_defaults(run=_cmd_serve)

    # -- call ---------------------------------------------------------------------------------
    p = sub.add_parser("call", help="make one scripted call, printing each client state as it is entered",
                       description="Make one scripted call and print each client state (C, Can, WComp, Comp, End) "
                                   "as it is entered, then the final code. Exit status 0 only for 0 RPC_S_OK, "
                                   "1 for any other final code, 2 for bad usage.",
                       epilog=EPILOG + """
examples:
  callstate call --outcome complete --reply-bytes 64
  callstate call --outcome abort --code 5001                       # the exact code reaches the client
  callstate call --outcome fatal                                   # 1726 RPC_S_CALL_FAILED
  callstate call --outcome hold --cancel-after 0.2                 # abortive cancel: 1818
  callstate call --outcome hold --cancel-after 0.2 --non-abortive --on-cancel complete   # reply arrives: 0
  callstate call --outcome hold --on-cancel ignore --cancel-after 0.2 --non-abortive --escalate-after 0.5
""", formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_target(p)
    p.add_argument("--outcome", choices=["complete", "abort", "fatal", "hold"], default="complete",
                   help="what the server's handler does (default: %(default)s)")
    p.add_argument("--dispatch-delay", type=float, default=0.0, metavar="SECONDS",
                   help="delay before the handler processes the call")
    p.add_argument("--delay", type=float, default=0.0, metavar="SECONDS", help="processing time before the outcome")
    p.add_argument("--reply-bytes", type=int, default=0, metavar="N", help="complete: size of the reply")
    p.add_argument("--payload", default="", help="request payload (text); with --echo it comes back")
    p.add_argument("--echo", action="store_true", help="complete: reply with the request payload")
    p.add_argument("--code", type=int, default=4242, help="abort: the exception code (default: %(default)s)")
    p.add_argument("--grpc-status", type=int, default=0, metavar="N",
                   help="abort: gRPC status code to send it with (default: ABORTED)")
    p.add_argument("--message", default="", help="abort: status message; fatal: exception text")
    p.add_argument("--on-cancel", choices=["abort", "complete", "ignore"], default="abort",
                   help="what the handler does when it sees a cancel (default: %(default)s)")
    p.add_argument("--cancel-after", type=_positive_float, metavar="SECONDS",
                   help="cancel the call this long after starting it (if not yet notified)")
    p.add_argument("--cancel-before-start", action="store_true", help="cancel in state C: the call never goes out")
    p.add_argument("--non-abortive", action="store_true",
                   help="cancel with a notice to the server and keep waiting for its answer (default: abortive)")
    p.add_argument("--escalate-after", type=_positive_float, metavar="SECONDS",
                   help="with --non-abortive: escalate to an abortive cancel after this long without an answer")
    p.add_argument("--json", action="store_true", help="print state entries as JSON lines")
    p.add_argument("--log-file", metavar="PATH", help="also append the client state log to this file")
    p.set_defaults(run=_cmd_call)

    # -- watch --------------------------------------------------------------------------------
    p = sub.add_parser("watch", help="follow the server's journal live",
                       description="Follow the server's state log live through callstate.v1.Journal/Watch. "
                                   "Stop with Ctrl-C.")
    _add_target(p)
    p.add_argument("--call-id", default="", help="only this call")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.add_argument("--counters", action="store_true", help="print the server's counters once and exit")
    p.add_argument("--count", type=_non_negative_int, default=0, metavar="N", help="stop after N entries")
    p.set_defaults(run=_cmd_watch)

    # -- health -------------------------------------------------------------------------------
    p = sub.add_parser("health", help="ask the server's gRPC health service (exit 0 when SERVING)")
    _add_target(p)
    p.add_argument("--service", default="", help="service name to ask about (default: the server as a whole)")
    p.set_defaults(run=_cmd_health)

    # -- check --------------------------------------------------------------------------------
    p = sub.add_parser("check", help="verify client and server state logs (SPEC invariants)",
                       description="Read client and server JSON-lines state logs (any number, any order), join them "
                                   "by call id and verify: legal transitions on each side (the same tables the "
                                   "server and client use), End exactly once and nothing after it, and that the "
                                   "client's final code agrees with the server's outcome. Exit status 1 on any "
                                   "violation, 2 when a file cannot be read.")
    p.add_argument("logs", nargs="+", metavar="LOG", help="state log files (JSON lines)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=_cmd_check)
    return parser


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="127.0.0.1:50051", help="server address HOST:PORT (default: %(default)s)")
    p.add_argument("--timeout", type=_positive_float, default=None, metavar="SECONDS",
                   help="gRPC deadline for the call (default: none)")


def _cmd_serve(opts: argparse.Namespace) -> int:
    from callstate.script import Limits
    from callstate.server import EmulatorConfig, ServerOptions, serve

    config = EmulatorConfig(mix=opts.mix, abort_code=opts.abort_code, max_hold=opts.max_hold,
                            max_in_flight=opts.max_in_flight, seed=opts.seed,
                            limits=Limits(max_delay_ms=int(opts.max_delay * 1000), max_reply_bytes=opts.max_reply_bytes))
    options = ServerOptions(bind=opts.bind, port=opts.port, log=None if opts.no_state_log else opts.log_file,
                            journal_size=opts.journal_size, emulator=config, grace=opts.grace)
    try:
        asyncio.run(serve(options, port_file=opts.port_file))
    except OSError as exc:
        print(f"callstate serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_call(opts: argparse.Namespace) -> int:
    from callstate.call_cli import run_call
    return asyncio.run(run_call(opts))


def _cmd_watch(opts: argparse.Namespace) -> int:
    from callstate.call_cli import run_watch
    try:
        return asyncio.run(run_watch(opts))
    except KeyboardInterrupt:
        return 0


def _cmd_check(opts: argparse.Namespace) -> int:
    import orjson

    from callstate.check import check_files
    from callstate.statelog import LogFormatError

    try:
        report = check_files(opts.logs)
    except (OSError, LogFormatError) as exc:
        print(f"callstate check: {exc}", file=sys.stderr)
        return 2
    print(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode() if opts.json else report.summary())
    return 0 if report.ok else 1


def _cmd_health(opts: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(opts.target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=opts.service), timeout=opts.timeout or 5.0)
        except grpc.RpcError as err:
            print(f"callstate health: {opts.target}: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    try:
        return int(opts.run(opts) or 0)
    except KeyboardInterrupt:
        return 130

