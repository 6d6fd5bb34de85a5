"""`callstate conformance`: does a gRPC proxy keep the call lifecycle? A fixed battery, direct vs proxied."""

from __future__ import annotations

import argparse
import asyncio
import sys
import textwrap
import time

from callstate.cli.conformance_battery import BatteryConfig
from callstate.cli.conformance_properties import PROPERTIES
from callstate.cli.options import (add_access, channel_settings, concurrency, metadata_bytes, non_negative_float, para,
                                   port, positive_float, positive_int, streams)

_CFG = BatteryConfig()

EPILOG = """\
properties (one row each, direct to the server and through the proxy):
{properties}

examples:
  callstate conformance --serve-port 50051 --proxy 127.0.0.1:8080     # runs the server for the proxy
  callstate conformance --server 10.0.0.5:50051 --proxy 10.0.0.9:443 --report conformance.json \\
                        --junit-xml conformance.xml --hold-seconds 75
""".format(properties="\n".join(textwrap.fill(f"{name}: {text}", 88, initial_indent="  ", subsequent_indent="      ",
                                              break_on_hyphens=False)
                                for name, text in PROPERTIES.items()))


def host_port(text: str) -> str:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return text


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser(
        "conformance", help="test a gRPC proxy: does it keep every call's lifecycle? (direct vs proxied)",
        description=para("Run a fixed battery of lifecycle scenarios through a gRPC proxy (gateway, sidecar, load "
                         "balancer) to a callstate server, and the same battery straight to the server as the "
                         "baseline. Calls go through the proxy; what the server saw is read from the server's "
                         "journal directly. One row per property, pass/fail with its figures. Exit status 0 when "
                         "every property holds, 1 when one fails (named on the last line), 2 for bad usage or an "
                         "unreachable proxy or server."),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--proxy", type=host_port, required=True, metavar="HOST:PORT",
                   help="the proxy under test; it must forward to the server")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", type=host_port, metavar="HOST:PORT",
                       help="the callstate server the proxy forwards to (its real address: the journal is read "
                            "there); graceful-stop is skipped, conformance cannot stop it")
    where.add_argument("--serve-port", type=port, metavar="N",
                       help="start a callstate server on this port for the proxy to forward to (and stop it "
                            "for graceful-stop)")
    p.add_argument("--serve-bind", default="127.0.0.1", metavar="ADDR",
                   help="with --serve-port: the address it listens on (default: %(default)s)")
    p.add_argument("--calls", type=positive_int, default=_CFG.calls, metavar="N",
                   help="calls per scenario, made sequentially and then again concurrently (default: %(default)s)")
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
    p.add_argument("--max-hold", type=non_negative_float, default=60.0, metavar="SECONDS",
                   help="with --serve-port: the server's --max-hold, which ends calls whose cancel was lost "
                        "(default: %(default)s)")
    p.add_argument("--report", metavar="FILE.json", help="write every row and its figures as JSON")
    p.add_argument("--junit-xml", metavar="FILE", help="write JUnit XML: one test case per property and path")
    add_access(p)   # one set for the proxy and the server (--server); --serve-port starts a plaintext one
    p.set_defaults(target_parser=p)
    return p


def run(opts: argparse.Namespace) -> int:
    import orjson

    from callstate.cli.conformance_report import failed, junit_xml, table, to_json
    from callstate.cli.conformance_run import Setup, run_battery
    from callstate.cli.conformance_server import ServerProcess

    cfg = BatteryConfig(calls=opts.calls, concurrency=opts.concurrency, small_bytes=opts.small_bytes,
                        max_bytes=opts.max_bytes, hold_seconds=opts.hold_seconds,
                        cancel_bound_ms=opts.cancel_bound_ms, deadline=opts.deadline, streams=opts.streams,
                        metadata_bytes=opts.metadata_bytes, wait=opts.wait)
    from callstate.script import Limits
    if opts.max_bytes > Limits().max_reply_bytes:   # the client refuses such a script before sending it
        print(f"callstate conformance: --max-bytes {opts.max_bytes} is over the largest reply "
              f"({Limits().max_reply_bytes})", file=sys.stderr)
        return 2
    for path in filter(None, (opts.report, opts.junit_xml)):
        try:   # fail now, not after the run, when an output cannot be written
            open(path, "ab").close()
        except OSError as exc:
            print(f"callstate conformance: {exc}", file=sys.stderr)
            return 2
    from callstate.cli.conformance_calls import use_access
    settings = channel_settings(opts)
    if opts.serve_port is not None and (settings.secure or settings.token):
        opts.target_parser.error("--serve-port starts a plaintext server without a token: to test a locked-down "
                                 "server, start it yourself and pass --server with the TLS and token options")
    use_access(settings)
    own = ServerProcess(opts.serve_bind, opts.serve_port, opts.max_hold) if opts.serve_port is not None else None
    setup = Setup(proxy=opts.proxy, server=opts.server or "", own_server=own)
    t0 = time.monotonic()
    try:
        rows = asyncio.run(run_battery(setup, cfg))
    except ConnectionError as exc:
        print(f"callstate conformance: {exc}", file=sys.stderr)
        return 2
    finally:
        if own is not None:
            own.cleanup()
    seconds = time.monotonic() - t0
    print(table(rows, opts.proxy, setup.server))
    print(f"({seconds:.1f} s)")
    if opts.report:
        config = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
        with open(opts.report, "wb") as f:
            f.write(orjson.dumps(to_json(rows, opts.proxy, setup.server, config, seconds), option=orjson.OPT_INDENT_2))
    if opts.junit_xml:
        with open(opts.junit_xml, "wb") as f:
            f.write(junit_xml(rows, opts.proxy, setup.server, seconds))
    return 1 if failed(rows) else 0
