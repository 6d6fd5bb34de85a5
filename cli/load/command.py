"""`callstate load`: load-test the cancellation paths and check both sides of every call."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from callstate.cli import COMMANDS
from callstate.cli.live.view import MODES, choose
from callstate.cli.method_options import LOAD_METHOD_EXAMPLES, Drive, DriveError, add_method_options, drive_of
from callstate.cli.load.run import LONGEST_CALL_S, STREAMS_PER_CHANNEL, LoadConfig, LoadRun, channels_for
from callstate.cli.observe_options import (METRICS_BIND, add_metrics, add_otel, metrics_options_unused, shutdown_tracing,
                                           tracer_provider)
from callstate.cli.outputs import output_problem
from callstate.files import write_atomically
from callstate.arg_types import (bounded_int, cancel_points, cancel_poll, cancel_shares, non_negative_float,
                                 on_cancel_mix, outcome_mix, pipe_cancel_points, pipe_shares,
                                 positive_float, positive_int)
from callstate.cli.options import (abort_code, add_target, channel_settings, channels, concurrency, message_count, para,
                                   rate)
from callstate.scenario import (DEFAULT_CANCEL, DEFAULT_CANCEL_AT, DEFAULT_MIX, DEFAULT_ON_CANCEL,
                                DEFAULT_PIPE_CANCEL_AT, Scenario, every_call_a_pipe,
                                kinds_without_point, unreachable_pipe_points)
from callstate.cancel_points import PIPE as PIPE_POINTS, UNARY as UNARY_POINTS
from callstate.lifecycle import UNARY
from callstate.schema.drive import unary_method
from callstate.script import ABORT_CODE_RULE, Limits, Mix

_LOAD, _SCENARIO, _LIMITS = LoadConfig(), Scenario(), Limits()
DEFAULT_CALLS = 1000

EPILOG = f"""\
cancel points (--cancel-at, comma-separated; each cancelled call picks one at random):
{UNARY_POINTS.listing()}
Held calls that are not in the cancelled share get an abortive cancel after --hold-for.

pipes (--pipes in=10,out=10,both=10: percent of calls that are asynchronous pipes): each side
pushes --pipe-messages messages; a cancelled pipe is cancelled at one of --pipe-cancel-at:
  {PIPE_POINTS.usage()}
(only the points that apply to its kind); held pipes not in the cancelled share are
cancelled abortively at one of them after their start (counted as hold-for).

examples:
  callstate load --calls 5000 --concurrency 64
  callstate load --duration 30 --rate 2000 --cancel abortive=40,non-abortive=30 --report report.json
  callstate load --calls 20000 --mix complete=100 --cancel none     # plain throughput
  callstate load --calls 5000 --html report.html                    # and look at it in a browser
  callstate load --calls 2000 --pipes in=15,out=15,both=20 --pipe-cancel-at after-sent:2,after-received:3
"""


# the settings of /metrics, each with its default: given without --metrics-port, no endpoint uses them
METRICS_OPTIONS = (("--metrics-bind", "metrics_bind", METRICS_BIND), ("--metrics-linger", "metrics_linger", 0.0))


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("load", help=COMMANDS["load"].help,
                       description=para("Drive many scripted calls against a server: a mix of outcomes, a share of "
                                        "them cancelled (abortive or non-abortive) at chosen points. While it runs, "
                                        "the server's journal is followed; at the end both sides' entries are "
                                        "checked with the same rules as `callstate check`, including the server's "
                                        "in-flight count back at zero. Prints calls/s, latency percentiles per final "
                                        "code, counts per path and the cancel propagation time (client cancel -> "
                                        "server sees it). Exit status 1 when an invariant fails or the run proved "
                                        "nothing (no call reached the server, or every call was refused), 2 for bad "
                                        "usage or an unreachable server, 130 after Ctrl-C (SIGINT; the calls in "
                                        "flight are finished and checked first; a second SIGINT or SIGTERM cancels "
                                        "them)."),
                       epilog=EPILOG + LOAD_METHOD_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target(p, timeout_help="gRPC deadline of each call, not of the run (default: none)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--calls", type=positive_int, metavar="N", help=f"stop after N calls (default: {DEFAULT_CALLS})")
    stop.add_argument("--duration", type=positive_float, metavar="SECONDS",
                      help="start calls for this long; the calls then in flight end first (still in flight "
                           "a second later: said on stderr, and SIGINT or SIGTERM cancels them)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--concurrency", type=concurrency, default=_LOAD.concurrency, metavar="N",
                      help="closed loop: N calls in flight at all times (default: %(default)s)")
    pace.add_argument("--rate", type=rate, metavar="CALLS_PER_S",
                      help="open loop: start calls at this rate whatever the latency")
    p.add_argument("--channels", type=channels, metavar="N",
                   help="gRPC channels (connections) to spread calls over (default: one per "
                        f"{STREAMS_PER_CHANNEL:,} calls that can be in flight at once: --concurrency, or for "
                        f"--rate the fewer of --max-in-flight and {LONGEST_CALL_S:g} s of calls; a server "
                        "refuses calls over its --max-concurrent-streams on one connection)")
    p.add_argument("--mix", type=outcome_mix, default=outcome_mix(DEFAULT_MIX), metavar="MIX",
                   help=f"outcome weights (default: {DEFAULT_MIX})")
    p.add_argument("--cancel", type=cancel_shares, default=cancel_shares(DEFAULT_CANCEL), metavar="SHARES",
                   help=f"percent of calls cancelled by kind, e.g. abortive=30,non-abortive=20, or none "
                        f"(default: {DEFAULT_CANCEL})")
    p.add_argument("--cancel-at", type=cancel_points, default=cancel_points(DEFAULT_CANCEL_AT), metavar="POINTS",
                   help=f"where the cancels of unary calls happen (pipes: --pipe-cancel-at; default: {DEFAULT_CANCEL_AT})")
    p.add_argument("--on-cancel", type=on_cancel_mix, default=on_cancel_mix(DEFAULT_ON_CANCEL), metavar="MIX",
                   help=f"what the server does on a cancel, as weights (default: {DEFAULT_ON_CANCEL})")
    p.add_argument("--escalate-after", type=positive_float, default=_SCENARIO.escalate_after, metavar="SECONDS",
                   help="a non-abortive cancel escalates to abortive after this long without an answer "
                        "(default: %(default)s)")
    p.add_argument("--hold-for", type=positive_float, default=_SCENARIO.hold_for, metavar="SECONDS",
                   help="uncancelled held calls are cancelled abortively after this long (default: %(default)s)")
    p.add_argument("--delay", type=non_negative_float, default=_LOAD.delay, metavar="SECONDS",
                   help="server processing time before complete/abort/fatal (default: %(default)s)")
    p.add_argument("--payload", type=bounded_int(0, _LIMITS.max_payload_bytes, "what a server accepts by default"),
                   default=_LOAD.payload, metavar="BYTES",
                   help=f"request payload and reply size, at most {_LIMITS.max_payload_bytes} (default: %(default)s)")
    p.add_argument("--abort-code", type=abort_code, default=_SCENARIO.abort_code, metavar="CODE",
                   help=f"exception code of aborts: {ABORT_CODE_RULE} (default: %(default)s)")
    p.add_argument("--pipes", type=pipe_shares, default={}, metavar="SHARES",
                   help="percent of calls that are pipes, by kind, e.g. in=10,out=10,both=10 (default: none)")
    p.add_argument("--pipe-cancel-at", type=pipe_cancel_points, default=pipe_cancel_points(DEFAULT_PIPE_CANCEL_AT),
                   metavar="POINTS", help=f"where cancelled pipes are cancelled, counted in messages "
                                          f"(default: {DEFAULT_PIPE_CANCEL_AT})")
    p.add_argument("--pipe-messages", type=message_count, default=_SCENARIO.pipe_messages, metavar="N",
                   help="messages each side pushes on a pipe (default: %(default)s)")
    p.add_argument("--cancel-poll", type=cancel_poll, default=None, metavar="MIX",
                   help="how often the server's handlers test for a cancel, as weights of intervals in ms, e.g. "
                        "0=50,100=50 (0: at once; default: the server's --cancel-poll-ms)")
    p.add_argument("--seed", type=int, help="seed the draws (reproducible plans)")
    p.add_argument("--report", metavar="FILE.json", help="write the full report as JSON")
    p.add_argument("--html", metavar="FILE.html",
                   help="write an HTML report of the run (one self-contained file, opens offline; needs "
                        "callstate[report]): latency per final code, in flight and cancels over time, cancel "
                        "propagation, counts per path, the check with example histories of both sides")
    p.add_argument("--log-file", metavar="PATH", help="write the client's state log (JSON lines)")
    p.add_argument("--no-verify", action="store_true", help="do not follow the server's journal or check invariants")
    p.add_argument("--max-in-flight", type=positive_int, default=_LOAD.max_in_flight, metavar="N",
                   help="open loop: never more than N calls in flight; starts beyond it are skipped and reported "
                        "(default: %(default)s)")
    p.add_argument("--settle", type=non_negative_float, default=_LOAD.settle, metavar="SECONDS",
                   help="after the run, how long to wait for the server to end every call (SIGINT/SIGTERM end the wait; "
                        "default: %(default)s)")
    p.add_argument("--progress", choices=MODES, default="auto",
                   help="live view on stderr: calls/s per final code, in flight, recent cancels and their "
                        "propagation. auto: a live dashboard on a terminal, nothing otherwise; always: also plain "
                        "lines (one a second; after the run, while it waits for the server, only when they change) "
                        "when not on a terminal; never: none. Default: %(default)s")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the summary")
    add_metrics(p, "the client side (calls, states, cancels, cancel propagation)")
    p.add_argument("--metrics-linger", type=non_negative_float, default=METRICS_OPTIONS[1][2], metavar="SECONDS",
                   help="after the run, keep /metrics up this long so a scraper collects the final counts "
                        "(SIGINT/SIGTERM ends it early; default: %(default)s)")
    add_otel(p)
    add_method_options(p, data_file_help="one JSON request per line, used in turn (cycled)")
    return p


def run(opts: argparse.Namespace) -> int:
    from callstate.observe import ObserveError

    provider = None
    opts.settings = channel_settings(opts)
    if why := metrics_options_unused(opts, METRICS_OPTIONS):
        opts.target_parser.error(why)
    if opts.method and opts.payload:   # a user's method sends --data: the payload would be dropped unsaid
        opts.target_parser.error(f"--payload applies without --method only: {opts.method} sends its requests "
                                 "from --data or --data-file")
    if opts.no_script and opts.method and (given := _script_options(opts)):   # they would be dropped unsaid
        opts.target_parser.error(f"{' and '.join(given)}: with --no-script no script is sent, the server decides "
                                 "each call's outcome")
    try:
        opts.drive = _drive(opts, opts.settings)
    except DriveError as exc:
        print(f"callstate load: {exc}", file=sys.stderr)
        return 2
    _check_pipe_settings(opts)
    try:
        provider = tracer_provider(opts, "callstate-load")
        return _run(opts, provider)
    except ObserveError as exc:
        print(f"callstate load: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown_tracing(provider, "callstate load")


def _check_pipe_settings(opts: argparse.Namespace) -> None:
    """The pipe options and the unary cancel points, read together: a usage error (exit 2) for one
    that no call of the run would use, or a point no pipe reaches."""
    if opts.pipes and (late := unreachable_pipe_points(opts.pipe_cancel_at, opts.pipe_messages)):
        opts.target_parser.error(f"--pipe-cancel-at {late[0]} is never reached with --pipe-messages "
                                 f"{opts.pipe_messages}: each side pushes that many")
    stray = [flag for flag, given in (("--pipe-cancel-at", opts.pipe_cancel_at != pipe_cancel_points(DEFAULT_PIPE_CANCEL_AT)),
                                      ("--pipe-messages", opts.pipe_messages != _SCENARIO.pipe_messages)) if given]
    if stray and not opts.pipes:   # no call is a pipe: they would be dropped without a word
        opts.target_parser.error(f"{' and '.join(stray)} {'apply' if len(stray) > 1 else 'applies'} to pipes: " + (
            unary_method(opts.method) if opts.drive
            else "add --pipes (e.g. in=10,out=10,both=10)"))
    if kinds := kinds_without_point(opts.pipe_cancel_at, opts.pipes):
        opts.target_parser.error(f"--pipe-cancel-at {','.join(map(str, opts.pipe_cancel_at))}: none of its points "
                                 f"applies to an {kinds[0]} pipe (add one that does)")
    if opts.cancel_at != cancel_points(DEFAULT_CANCEL_AT) and every_call_a_pipe(opts.pipes):
        # no call is unary: its points (seconds from the start) would be dropped without a word
        from callstate.client.any_method import shape
        every = (f"{opts.method} is {shape(opts.drive.method.kind)}" if opts.drive
                 else "--pipes " + ",".join(f"{kind}={share:g}" for kind, share in opts.pipes.items()))
        opts.target_parser.error(f"--cancel-at places the cancels of unary calls, and every call is a pipe ({every}): "
                                 "a pipe is cancelled at --pipe-cancel-at points, counted in messages")


def _drive(opts: argparse.Namespace, settings: Any) -> Drive | None:
    """--method: the method and requests; a streaming method makes every call a pipe of its shape."""
    from callstate.client.any_method import shape

    drive = drive_of(opts, settings)
    if drive is not None:
        if opts.pipes:
            opts.target_parser.error(f"--pipes: the calls on {opts.method} are {shape(drive.method.kind)}: "
                                     "the method's shape decides")
        if drive.method.kind != UNARY:
            opts.pipes = {drive.method.kind: 100.0}
    return drive


def _script_options(opts: argparse.Namespace) -> list[str]:
    """The script's options given other than as their defaults."""
    given = (("--mix", opts.mix, _SCENARIO.mix), ("--on-cancel", opts.on_cancel, _SCENARIO.on_cancel),
             ("--delay", opts.delay, _LOAD.delay), ("--abort-code", opts.abort_code, _SCENARIO.abort_code),
             ("--hold-for", opts.hold_for, _SCENARIO.hold_for), ("--cancel-poll", opts.cancel_poll, None))
    return [flag for flag, value, default in given if value != default]


class _Stop(Exception):
    """A run that cannot go on: its one line, exit status 2."""


def _run(opts: argparse.Namespace, provider: object) -> int:
    import orjson

    from callstate.cli.load.run import summary

    try:
        load_run = _prepare(opts, _config(opts, provider))
        report = _drive_run(load_run, opts)
        if opts.html:
            _write_html(load_run, report, opts.html)
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() if opts.json else summary(report), flush=True)
        if opts.report:   # after the verdict: a file that cannot be written does not hide it
            _write_json(report, opts.report)
    except _Stop as exc:
        print(f"callstate load: {exc}", file=sys.stderr)
        return 2
    if load_run.metrics is not None and opts.metrics_linger:
        _linger(opts.metrics_linger)
        load_run.metrics.close()
    return _exit_status(report)


def _config(opts: argparse.Namespace, provider: object) -> LoadConfig:
    # --no-script: every plan completes as far as the client knows (it plans no hold to end)
    scenario = Scenario(mix=Mix() if opts.no_script else opts.mix, cancel=opts.cancel, cancel_at=opts.cancel_at,
                        on_cancel=opts.on_cancel, hold_for=opts.hold_for, escalate_after=opts.escalate_after,
                        abort_code=opts.abort_code, pipes=opts.pipes, pipe_cancel_at=opts.pipe_cancel_at,
                        pipe_messages=opts.pipe_messages, cancel_poll=opts.cancel_poll)
    return LoadConfig(
        target=opts.target, calls=opts.calls if opts.calls is not None or opts.duration else DEFAULT_CALLS,
        duration=opts.duration, concurrency=opts.concurrency, rate=opts.rate,
        channels=opts.channels or channels_for(opts.concurrency, opts.rate, opts.max_in_flight),
        scenario=scenario, delay=opts.delay, payload=opts.payload, seed=opts.seed,
        log_file=opts.log_file, verify=not opts.no_verify, max_in_flight=opts.max_in_flight, settle=opts.settle,
        timeout=opts.timeout, settings=opts.settings, metrics_port=opts.metrics_port, metrics_bind=opts.metrics_bind,
        drive=opts.drive, no_script=opts.no_script, tracing=provider if provider is not None else False,
        view=choose(opts.progress, sys.stderr), collect_report=bool(opts.html))


def _prepare(opts: argparse.Namespace, config: LoadConfig) -> LoadRun:
    """The run, its outputs checked first: fail now, not after the run, when one cannot be written."""
    from callstate.cli.report import html_report

    if opts.html and (why := html_report.available()):
        raise _Stop(why)
    if why := output_problem((opts.report, opts.html),
                             (("--log-file", opts.log_file), ("--report", opts.report), ("--html", opts.html))):
        raise _Stop(why)   # nothing is created or emptied, and the state log is never written over
    try:
        load_run = LoadRun(config)
    except OSError as exc:
        raise _Stop(str(exc)) from None
    if load_run.metrics is not None:
        print(f"callstate load: metrics on {load_run.metrics.url}", file=sys.stderr, flush=True)
    return load_run


def _drive_run(load_run: LoadRun, opts: argparse.Namespace) -> dict[str, Any]:
    try:
        return asyncio.run(load_run.run())
    except ConnectionError as exc:
        raise _Stop(str(exc)) from None
    finally:
        if load_run.metrics is not None and not opts.metrics_linger:
            load_run.metrics.close()


def _write_html(load_run: LoadRun, report: dict[str, Any], path: str) -> None:
    from callstate.cli.report import html_report

    try:
        html_report.write(load_run.html_report(report), path)
    except OSError as exc:
        raise _Stop(f"--html {path}: cannot write the report ({exc.strerror or exc})") from None
    print(f"callstate load: HTML report written to {os.path.abspath(path)}", file=sys.stderr, flush=True)


def _write_json(report: dict[str, Any], path: str) -> None:
    import orjson

    try:
        write_atomically(path, orjson.dumps(report, option=orjson.OPT_INDENT_2))
    except OSError as exc:   # a full disk, say: the run's verdict printed stands, the file does not
        raise _Stop(f"--report {path}: cannot write the report ({exc.strerror or exc})") from None


def _exit_status(report: dict[str, Any]) -> int:
    """0 when the check holds, 1 when not. A run Ctrl-C stopped early, or whose wait for the
    server it cut short (everything recorded is written by now), exits 130, as shells expect of
    an interrupted command; SIGTERM is the orderly stop of containers and supervisors, judged by
    the check like a finished run."""
    import signal

    if signal.SIGINT.name in (report.get("interrupted"), report.get("settle_cut")):
        return 128 + signal.SIGINT
    return 0 if report["check"]["ok"] else 1


def _linger(seconds: float) -> None:
    """Keep the process (and its /metrics) up for `seconds`, or until SIGINT/SIGTERM."""
    import signal
    import threading

    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(f"callstate load: /metrics stays up for {seconds:g} s (SIGINT/SIGTERM ends it)", file=sys.stderr, flush=True)
    done.wait(seconds)
