"""The `callstate` command line: serve, call, watch, health, load, check."""

from __future__ import annotations

import argparse
import asyncio
import sys
import textwrap
from typing import Sequence

from callstate import __version__

EPILOG = """\
MS-RPC codes: 0 RPC_S_OK, 87 RPC_S_INVALID_ARG, 997 RPC_S_ASYNC_CALL_PENDING,
1460 RPC_S_TIMEOUT, 1722 RPC_S_SERVER_UNAVAILABLE, 1723 RPC_S_SERVER_TOO_BUSY,
1726 RPC_S_CALL_FAILED, 1818 RPC_S_CALL_CANCELLED, 1914 RPC_S_INVALID_ASYNC_HANDLE.
"""


def _para(text: str) -> str:
    """Wrap a description for the raw formatter (which keeps the examples' layout)."""
    return textwrap.fill(" ".join(text.split()), 88)


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


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _positive_float_nonzero(text: str) -> float:
    value = _positive_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _cancel_points(text: str):  # type: ignore[no-untyped-def]
    from callstate.load import CancelPoint
    try:
        points = tuple(CancelPoint.parse(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not points:
        raise argparse.ArgumentTypeError("needs at least one cancel point")
    return points


def _port(text: str) -> int:
    value = _non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535; 0 picks a free one)")
    return value


def _weights(kind: str):  # type: ignore[no-untyped-def]
    """An argparse type for NAME=WEIGHT lists: outcome mixes, on-cancel mixes, cancel shares.
    Their one parser (`Mix.parse`) names what is wrong; argparse turns it into a usage error."""
    def parse(text: str):  # type: ignore[no-untyped-def]
        from callstate.load import parse_cancel_shares
        from callstate.script import ON_CANCEL, Mix, MixError
        try:
            if kind == "cancel":
                return parse_cancel_shares(text)
            return Mix.parse(text, tuple(ON_CANCEL)) if kind == "on-cancel" else Mix.parse(text)
        except MixError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


_mix, _on_cancel_mix, _cancel_shares = _weights("outcome"), _weights("on-cancel"), _weights("cancel")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callstate",
        description=_para("Emulate the MS-RPC asynchronous call lifecycle over gRPC: a scripted server, "
                    "scripted calls, a load generator and a checker for both sides' state logs."),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"callstate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # -- serve --------------------------------------------------------------------------------
    p = sub.add_parser("serve", help="run the emulator server (Emulator, Journal, health, reflection)",
                       description=_para("Run the gRPC emulator. Each call follows its script: dispatch delay, then "
                                   "complete, abort with a code, fail fatally, or hold until cancelled. Every state "
                                   "entered is written to the state log as a JSON line. Stops gracefully on "
                                   "SIGINT/SIGTERM, ending every call in flight and flushing the log."),
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
                       description=_para("Make one scripted call and print each client state (C, Can, WComp, Comp, End) "
                                   "as it is entered, then the final code. Exit status 0 only for 0 RPC_S_OK, "
                                   "1 for any other final code, 2 for bad usage."),
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

    # -- load ---------------------------------------------------------------------------------
    p = sub.add_parser("load", help="load-test the cancellation paths and verify both sides' lifecycles",
                       description=_para("Drive many scripted calls against a server: a mix of outcomes, a share of them "
                                   "cancelled (abortive or non-abortive) at chosen points. While it runs, the server's "
                                   "journal is followed; at the end both sides' entries are checked with the same "
                                   "rules as `callstate check`, including the server's in-flight count back at zero. "
                                   "Prints calls/s, latency percentiles per final code, counts per path and the cancel "
                                   "propagation time (client cancel -> server sees it). Exit status 1 when an "
                                   "invariant fails, 2 for bad usage or an unreachable server."),
                       epilog="""\
cancel points (--cancel-at, comma-separated; each cancelled call picks one at random):
  before-start      cancel in state C: the call never goes out
  after-start       cancel right after the call is made
  after:SECONDS     cancel after a fixed delay (if not yet notified)
  random:SECONDS    cancel after a uniformly random delay up to SECONDS
  held:SECONDS      script the call to hold, cancel it after SECONDS
Held calls that are not in the cancelled share get an abortive cancel after --hold-for.

examples:
  callstate load --calls 5000 --concurrency 64
  callstate load --duration 30 --rate 2000 --cancel abortive=40,non-abortive=30 --report report.json
  callstate load --calls 20000 --mix complete=100 --cancel none     # plain throughput
""", formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_target(p)
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--calls", type=_non_negative_int, metavar="N", help="stop after N calls (default: 1000)")
    stop.add_argument("--duration", type=_positive_float, metavar="SECONDS", help="stop after this long")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--concurrency", type=_positive_int, default=32, metavar="N",
                      help="closed loop: N calls in flight at all times (default: %(default)s)")
    pace.add_argument("--rate", type=_positive_float_nonzero, metavar="CALLS_PER_S",
                      help="open loop: start calls at this rate whatever the latency")
    p.add_argument("--channels", type=_positive_int, default=1, metavar="N",
                   help="gRPC channels (connections) to spread calls over (default: %(default)s)")
    p.add_argument("--mix", type=_mix, default=_mix("complete=60,abort=20,fatal=10,hold=10"), metavar="MIX",
                   help="outcome weights (default: complete=60,abort=20,fatal=10,hold=10)")
    p.add_argument("--cancel", type=_cancel_shares, default=_cancel_shares("abortive=20,non-abortive=10"),
                   metavar="SHARES", help="percent of calls cancelled by kind, e.g. abortive=30,non-abortive=20, "
                                          "or none (default: abortive=20,non-abortive=10)")
    p.add_argument("--cancel-at", type=_cancel_points, default=_cancel_points("before-start,after-start,random:0.005,held:0.005"),
                   metavar="POINTS", help="where cancels happen (default: before-start,after-start,random:0.005,held:0.005)")
    p.add_argument("--on-cancel", type=_on_cancel_mix, default=_on_cancel_mix("abort=70,complete=20,ignore=10"),
                   metavar="MIX", help="what the server does on a cancel, as weights (default: abort=70,complete=20,ignore=10)")
    p.add_argument("--escalate-after", type=_positive_float, default=0.05, metavar="SECONDS",
                   help="a non-abortive cancel escalates to abortive after this long without an answer (default: %(default)s)")
    p.add_argument("--hold-for", type=_positive_float, default=0.005, metavar="SECONDS",
                   help="uncancelled held calls are cancelled abortively after this long (default: %(default)s)")
    p.add_argument("--delay", type=_positive_float, default=0.0, metavar="SECONDS",
                   help="server processing time before complete/abort/fatal (default: 0)")
    p.add_argument("--payload", type=_non_negative_int, default=0, metavar="BYTES",
                   help="request payload and reply size (default: 0)")
    p.add_argument("--abort-code", type=int, default=4242, metavar="CODE", help="exception code of aborts (default: %(default)s)")
    p.add_argument("--seed", type=int, help="seed the draws (reproducible plans)")
    p.add_argument("--report", metavar="FILE.json", help="write the full report as JSON")
    p.add_argument("--log-file", metavar="PATH", help="write the client's state log (JSON lines)")
    p.add_argument("--no-verify", action="store_true", help="do not follow the server's journal or check invariants")
    p.add_argument("--max-in-flight", type=_positive_int, default=10_000, metavar="N",
                   help="open loop: never more than N calls in flight; starts beyond it are skipped and reported "
                        "(default: %(default)s)")
    p.add_argument("--settle", type=_positive_float, default=15.0, metavar="SECONDS",
                   help="after the run, how long to wait for the server to end every call (default: %(default)s)")
    p.add_argument("--progress", choices=["auto", "always", "never"], default="auto",
                   help="live progress line on stderr (default: only on a terminal)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the summary")
    p.set_defaults(run=_cmd_load)

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
    try:
        return asyncio.run(run_call(opts))
    except OSError as exc:   # e.g. --log-file in a folder that does not exist
        print(f"callstate call: {exc}", file=sys.stderr)
        return 2


def _cmd_watch(opts: argparse.Namespace) -> int:
    from callstate.call_cli import run_watch
    try:
        return asyncio.run(run_watch(opts))
    except KeyboardInterrupt:
        return 0


def _cmd_load(opts: argparse.Namespace) -> int:
    import orjson

    from callstate.load import LoadConfig, LoadRun, summary

    config = LoadConfig(
        target=opts.target, calls=opts.calls if opts.calls is not None or opts.duration else 1000,
        duration=opts.duration, concurrency=opts.concurrency, rate=opts.rate, channels=opts.channels, mix=opts.mix,
        cancel=opts.cancel, cancel_at=opts.cancel_at, on_cancel=opts.on_cancel, escalate_after=opts.escalate_after,
        hold_for=opts.hold_for, delay=opts.delay, payload=opts.payload, abort_code=opts.abort_code, seed=opts.seed,
        log_file=opts.log_file, verify=not opts.no_verify, max_in_flight=opts.max_in_flight, settle=opts.settle,
        timeout=opts.timeout,
        progress=opts.progress == "always" or (opts.progress == "auto" and sys.stderr.isatty()))
    try:
        if opts.report:   # fail now, not after the run, when the report cannot be written
            open(opts.report, "ab").close()
        run = LoadRun(config)
    except OSError as exc:
        print(f"callstate load: {exc}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(run.run())
    except ConnectionError as exc:
        print(f"callstate load: {exc}", file=sys.stderr)
        return 2
    if opts.report:
        with open(opts.report, "wb") as f:
            f.write(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() if opts.json else summary(report))
    return 0 if report["check"]["ok"] else 1


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

