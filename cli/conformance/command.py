"""`callstate conformance`: does a gRPC proxy keep the call lifecycle? A fixed battery, direct vs proxied."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import textwrap
import time
from typing import Any, Callable, Coroutine, NoReturn, TextIO

from callstate.cli import COMMANDS
from callstate.cli.conformance.battery import BatteryConfig
from callstate.cli.conformance.calls import LOSS, POWER, detection
from callstate.cli.conformance.properties import PROPERTIES, RUNNING_EVERY
from callstate.arg_types import non_negative_float, positive_float, positive_int
from callstate.cli.options import add_access, channel_settings, concurrency, metadata_bytes, para, port, streams

_CFG = BatteryConfig()
PROGRESS_MODES = ("auto", "always", "never")   # --progress, as `callstate load --progress` spells them
DEFAULT_SERVE_BIND = "127.0.0.1"   # the address of the server --serve-port starts
DEFAULT_MAX_HOLD = 60.0   # s: --max-hold of the server --serve-port starts ...
HOLD_MARGIN = 10.0        # ... and at least this much over --hold-seconds, so it never ends a held call

EPILOG = """\
properties (one row each, direct to the server and through the proxy):
{properties}

examples:
  callstate conformance --serve-port 50051 --proxy 127.0.0.1:8080     # runs the server for the proxy
  callstate conformance --server 10.0.0.5:50051 --proxy 10.0.0.9:443 --report conformance.json \\
                        --junit-xml conformance.xml --hold-seconds 75   # that server's --max-hold over 75
""".format(properties="\n".join(textwrap.fill(f"{name}: {text}", 88, initial_indent="  ", subsequent_indent="      ",
                                              break_on_hyphens=False)
                                for name, text in PROPERTIES.items()))


def host_port(text: str) -> str:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return text


def property_names(text: str) -> tuple[str, ...]:
    """--only: property names, comma-separated, each one of the battery's."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in PROPERTIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{'no property named ' + repr(unknown[0]) if unknown else 'no property given'} "
            f"(the properties: {', '.join(PROPERTIES)})")
    return names


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser(
        "conformance", help=COMMANDS["conformance"].help,
        description=para("Run a fixed battery of lifecycle scenarios through a gRPC proxy (gateway, sidecar, load "
                         "balancer) to a callstate server, and the same battery straight to the server as the "
                         "baseline. Calls go through the proxy; what the server saw is read from the server's "
                         "journal directly. One row per property, pass/fail with its figures. Exit status 0 when "
                         "every property holds, 1 when one fails (named on the last line) or none could be tested "
                         "(every one asked for skipped), 2 for bad usage, an "
                         "unreachable proxy or server, or a report that cannot be written, 130 or 143 when interrupted (SIGINT, SIGTERM; the reports say "
                         "the run has no verdict)."),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--proxy", type=host_port, required=True, metavar="HOST:PORT",
                   help="the proxy under test; it must forward to the server")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", type=host_port, metavar="HOST:PORT",
                       help="the callstate server the proxy forwards to (its real address: the journal is read "
                            "there); graceful-stop is skipped, conformance cannot stop it")
    where.add_argument("--serve-port", type=port, metavar="N",
                       help="start a callstate server on this port for the proxy to forward to (and stop it "
                            "for graceful-stop): plaintext, without a token, so the access options go to the "
                            "proxy only (a gateway that terminates TLS)")
    p.add_argument("--serve-bind", metavar="ADDR",
                   help=f"with --serve-port: the address it listens on (default: {DEFAULT_SERVE_BIND})")
    p.add_argument("--calls", type=positive_int, default=_CFG.calls, metavar="N",
                   help="calls per scenario, made sequentially and then again concurrently: a row makes 2 x N. "
                        + (f"The default catches a proxy that loses {LOSS:.0%} of calls with probability "
                           f"{detection(_CFG.calls):.1%} per row (at least {POWER:.0%}: 1 - {1 - LOSS:g}^(2N)); "
                           "a smaller N is quicker and misses more").replace("%", "%%") + " (default: %(default)s)")
    p.add_argument("--concurrency", type=concurrency, default=_CFG.concurrency, metavar="N",
                   help="calls in flight in the concurrent half, and held calls (default: %(default)s)")
    p.add_argument("--hold-seconds", type=positive_float, default=_CFG.hold_seconds, metavar="SECONDS",
                   help="held calls last this long; above the proxy's idle timeout to test it "
                        "(default: %(default)s; nginx's grpc_read_timeout is 60)")
    p.add_argument("--cancel-bound-ms", type=positive_float, default=_CFG.cancel_bound_ms, metavar="MS",
                   help="cancel propagation (client cancel -> server sees it) must have its p99 within this "
                        "(default: %(default)s)")
    p.add_argument("--deadline", type=positive_float, default=_CFG.deadline, metavar="SECONDS",
                   help="client deadline of the deadline row's calls (default: %(default)s)")
    p.add_argument("--small-bytes", type=positive_int, default=_CFG.small_bytes, metavar="N",
                   help="complete-small: echoed payload size (default: %(default)s)")
    p.add_argument("--max-bytes", type=positive_int, default=_CFG.max_bytes, metavar="N",
                   help="complete-large: reply size, near gRPC's 4 MiB message limit; echoed random bytes up to "
                        "the server's largest request (1 MiB), a scripted reply beyond (default: %(default)s)")
    p.add_argument("--streams", type=streams, default=_CFG.streams, metavar="N",
                   help="many-streams: concurrent calls on one connection (default: %(default)s)")
    p.add_argument("--metadata-bytes", type=metadata_bytes, default=_CFG.metadata_bytes, metavar="N",
                   help="large-metadata: request header and abort message size, under gRPC's 8 KiB metadata "
                        "limit (default: %(default)s)")
    p.add_argument("--wait", type=positive_float, default=_CFG.wait, metavar="SECONDS",
                   help="bound on every single wait; what has not happened by then fails its row "
                        "(default: %(default)s)")
    p.add_argument("--max-hold", type=non_negative_float, metavar="SECONDS",
                   help="with --serve-port: the server's --max-hold, which ends calls whose cancel was lost; "
                        f"above --hold-seconds, or it ends the held calls first (default: {DEFAULT_MAX_HOLD:g}, or "
                        f"--hold-seconds + {HOLD_MARGIN:g} when that is longer)")
    p.add_argument("--only", type=property_names, default=(), metavar="PROPERTY[,PROPERTY...]",
                   help="judge only these properties (listed below), on both paths: to re-run the rows a "
                        "gateway failed while changing its configuration (default: all of them)")
    p.add_argument("--report", metavar="FILE.json", help="write every row and its figures as JSON")
    p.add_argument("--junit-xml", metavar="FILE", help="write JUnit XML: one test case per property and path")
    p.add_argument("--html", metavar="FILE.html",
                   help="write a self-contained HTML page to share (opens offline): the gateway under test (its "
                        "address, and what it calls itself in its server header), the verdict, every property on "
                        "both paths, and each row's evidence")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                       help="progress lines on stderr: one per row as it is judged, and one every "
                            f"{RUNNING_EVERY:g} s while a row runs. auto: only when stderr is a terminal; always: also "
                            "into a CI log or a file; never: none (default: %(default)s)")
    shown.add_argument("--quiet", "-q", action="store_true", help="no progress lines: --progress never")
    add_access(p)   # one set for the proxy and the server (--server); for the proxy only with --serve-port
    p.set_defaults(target_parser=p)
    return p


class Interrupted(Exception):
    """SIGINT or SIGTERM ended the run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def progress_line(out: TextIO, total: int = len(PROPERTIES)
                  ) -> tuple[Callable[[str, Any], None], Callable[[str, str, float, int], None]]:
    """One line per row as it is judged, for a person watching a run that takes minutes; and one
    now and then while a row runs (through a stalled proxy, each of its calls waits --wait)."""
    done = {"direct": 0, "proxy": 0}

    def show(path: str, row: Any) -> None:
        done[path] += 1
        out.write(f"[{path} {done[path]}/{total}] {row.prop} {row.verdict} ({row.seconds:.1f} s)"
                  f"{': ' + row.figures if row.figures else ''}\n")
        out.flush()

    def running(path: str, prop: str, seconds: float, ended: int) -> None:
        out.write(f"[{path} {done[path] + 1}/{total}] {prop} still running ({seconds:.0f} s"
                  f"{f', {ended} calls ended' if ended else ''})\n")
        out.flush()
    return show, running


def run(opts: argparse.Namespace) -> int:
    import orjson

    from callstate.cli.conformance import html_page
    from callstate.cli.conformance.report import holds, junit_xml, table, to_json, verdict_line
    from callstate.cli.conformance.run import Setup, run_battery
    from callstate.cli.conformance.server import ServerProcess
    from callstate.cli.outputs import output_problem
    from callstate.files import write_atomically

    cfg = BatteryConfig(calls=opts.calls, concurrency=opts.concurrency, small_bytes=opts.small_bytes,
                        max_bytes=opts.max_bytes, hold_seconds=opts.hold_seconds,
                        cancel_bound_ms=opts.cancel_bound_ms, deadline=opts.deadline, streams=opts.streams,
                        metadata_bytes=opts.metadata_bytes, wait=opts.wait, only=opts.only)
    setup = Setup(proxy=opts.proxy, server=opts.server or "")
    t0 = time.monotonic()

    def outputs(error: str = "") -> bool:
        """The report and JUnit, written whole on every way out: `error` says why there is no verdict.
        False when one could not be written (a full disk, say): one line each, and the other is still written."""
        seconds = time.monotonic() - t0
        server = setup.server or (f"port {opts.serve_port}" if opts.serve_port is not None else "")
        config = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
        written = True
        for flag, path, data in (
                ("--report", opts.report, lambda: orjson.dumps(to_json(setup.rows, opts.proxy, server, config, seconds,
                                                                       error), option=orjson.OPT_INDENT_2)),
                ("--junit-xml", opts.junit_xml, lambda: junit_xml(setup.rows, opts.proxy, server, seconds, error)),
                ("--html", opts.html, lambda: html_page.render(to_json(setup.rows, opts.proxy, server, config, seconds,
                                                                       error), verdict_line(setup.rows, opts.only),
                                                               setup.gateway).encode("utf-8"))):
            if not path:
                continue
            try:
                write_atomically(path, data())
            except OSError as exc:
                print(f"callstate conformance: {flag} {path}: cannot write it ({exc.strerror or exc})", file=sys.stderr)
                written = False
        return written

    def usage(why: str) -> int:
        print(f"callstate conformance: {why}", file=sys.stderr)
        outputs(why)
        return 2

    outs = (("--report", opts.report), ("--junit-xml", opts.junit_xml), ("--html", opts.html))
    if why := output_problem(tuple(path for _flag, path in outs), outs) or (opts.html and html_page.available()):
        print(f"callstate conformance: {why}", file=sys.stderr)   # before the run: nothing created or emptied
        return 2
    max_hold = opts.max_hold if opts.max_hold is not None else max(DEFAULT_MAX_HOLD, opts.hold_seconds + HOLD_MARGIN)
    settings = channel_settings(opts)
    if why := _settings_problem(opts, max_hold):
        return usage(why)
    from callstate.cli.conformance.calls import use_access
    own = ServerProcess(opts.serve_bind or DEFAULT_SERVE_BIND, opts.serve_port, max_hold) if opts.serve_port is not None else None
    use_access(settings, own.target if own is not None else None)   # the server it starts: plaintext, no token
    setup.own_server = own
    if shows_progress(opts, sys.stderr):
        setup.progress, setup.running = progress_line(sys.stderr, len(opts.only or PROPERTIES))
    try:
        rows = _run_interruptible(run_battery(setup, cfg), own)
    except ConnectionError as exc:
        return usage(str(exc))
    except Interrupted as stop:
        _end_interrupted(stop.signum, opts, setup, outputs, own)
    except Exception as exc:   # a fault of conformance itself: the outputs still say the run has no verdict
        outputs(f"conformance failed: {exc!r}")
        raise
    finally:
        if own is not None:
            own.cleanup()
    try:
        print(table(rows, opts.proxy, setup.server, opts.only, seconds=time.monotonic() - t0))
    except BrokenPipeError:   # stdout's reader went away (`| head`): what CI reads is still written
        outputs()
        raise
    if not outputs():
        return 2   # the verdict above stands, but what CI reads is missing
    return 0 if holds(rows) else 1   # nothing tested is never OK


def shows_progress(opts: argparse.Namespace, out: TextIO) -> bool:
    """--progress: auto shows the lines only on a terminal, always also in a log or a file; --quiet: never."""
    return not opts.quiet and (opts.progress == "always" or (opts.progress == "auto" and out.isatty()))


def _end_interrupted(signum: int, opts: argparse.Namespace, setup: Any, outputs: Callable[[str], bool],
                     own: Any) -> NoReturn:
    """SIGINT or SIGTERM: the outputs say the run has no verdict, stdout shows the rows judged until
    then (nothing measured is lost without --report), and the command exits 128 + the signal now."""
    from callstate.cli.conformance.report import table

    name = signal.Signals(signum).name
    why = f"interrupted by {name} before the run ended"
    print(f"callstate conformance: interrupted by {name}"
          + ("; the rows judged so far are in the report" if opts.report else ""), file=sys.stderr)
    try:
        outputs(why)
        print(table(setup.rows, opts.proxy, setup.server, opts.only, why))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        if own is not None:
            own.cleanup()
        os._exit(128 + signum)   # now: what is left of grpc's shutdown may not end in time


def _settings_problem(opts: argparse.Namespace, max_hold: float) -> str | None:
    """What in the options the run could not keep (a usage error before anything runs), or None."""
    from callstate.script import Limits

    limits = Limits()
    for flag, given in (("--max-hold", opts.max_hold), ("--serve-bind", opts.serve_bind)):
        if opts.serve_port is None and given is not None:   # they set the server conformance starts
            return (f"{flag} applies only with --serve-port (the server conformance starts); a server given as "
                    "--server keeps its own" + (" serve --max-hold" if flag == "--max-hold" else " address"))
    for flag, size in (("--small-bytes", opts.small_bytes), ("--max-bytes", opts.max_bytes)):
        if size > limits.max_reply_bytes:   # the client refuses such a script before sending it
            return f"{flag} {size} is over the largest reply ({limits.max_reply_bytes})"
    if opts.hold_seconds * 1000 > limits.max_delay_ms:   # the held calls' outcome delay: refused the same way
        return (f"--hold-seconds {opts.hold_seconds:g} is over the longest delay a script may ask for "
                f"({limits.max_delay_ms / 1000:g} s)")
    if opts.serve_port is not None and max_hold <= opts.hold_seconds:
        return (f"--max-hold {max_hold:g} would end the held calls before their --hold-seconds "
                f"{opts.hold_seconds:g}: give a longer --max-hold, or leave it out")
    return None


CLEANUP_SECONDS = 1.0   # after SIGINT/SIGTERM: how long the battery may take to close before the exit


def _run_interruptible(battery: Coroutine[Any, Any, Any], own: Any) -> Any:
    """Run the battery; SIGINT or SIGTERM kills the server conformance started at once, gives the
    battery CLEANUP_SECONDS to close, and raises Interrupted (the exit then comes within 2 s)."""
    async def supervise() -> Any:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(battery)
        got: list[int] = []
        stopped = asyncio.Event()

        def on_signal(signum: int) -> None:
            if not got:
                got.append(signum)
                logging.getLogger("asyncio").setLevel(logging.CRITICAL)   # no noise about the killed child
                if own is not None:
                    own.kill_now()
                stopped.set()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        waiter = asyncio.ensure_future(stopped.wait())
        await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
        if not got:
            waiter.cancel()
            return task.result()
        task.cancel()
        await asyncio.wait((task,), timeout=CLEANUP_SECONDS)
        raise Interrupted(got[0])
    runner = asyncio.Runner()
    try:
        result = runner.run(supervise())
    except Interrupted:
        raise   # the loop is left as it is: closing it would wait for what may not end in time
    except BaseException:
        runner.close()
        raise
    runner.close()
    return result
