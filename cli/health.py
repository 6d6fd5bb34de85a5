"""`callstate health`: ask the server's gRPC health service (the container health check)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from callstate.cli import COMMANDS
from callstate.cli.options import add_target, channel_settings
from callstate.v1 import callstate_pb2 as pb

DEFAULT_TIMEOUT = 5.0
# With --wait, how long the one call made after --timeout (to learn why no connection was made) may take:
# it fails at once after a refused connection; a longer wait is a connection attempt still under way.
WHY_NOT_READY_TIMEOUT = 1.0
REFUSED = "Connection refused"   # in gRPC's details when a connection attempt was refused (ECONNREFUSED)
EMULATOR = pb.DESCRIPTOR.services_by_name["Emulator"].full_name   # a callstate server reports it SERVING


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("health", help=COMMANDS["health"].help,
                       description="Ask grpc.health.v1.Health/Check. Exit status 0 when the answer is SERVING, "
                                   "1 otherwise (NOT_SERVING, unreachable, no answer within --timeout). The health "
                                   "service needs no token; TLS options apply as for every client command.")
    add_target(p, timeout_help=f"how long to wait for each answer (default: {DEFAULT_TIMEOUT:g})")
    p.add_argument("--service", default="", help="service name to ask about (default: the server as a whole)")
    p.add_argument("--wait", action="store_true",
                   help="a server not listening yet is waited for, up to --timeout, rather than unreachable at "
                        "once: after `callstate serve ... &`, the next command finds it serving (a port still "
                        "refusing connections at --timeout is said so: nothing is listening there)")
    return p


def run(opts: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2

    settings = channel_settings(opts)
    waited = opts.timeout or DEFAULT_TIMEOUT
    with settings.sync_channel(opts.target) as channel:
        try:
            reply = _ask(channel, opts, waited, wait_for_ready=opts.wait)
        except grpc.RpcError as err:
            print(f"callstate health: {_failure(opts, settings, err, waited)}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _ask(channel: Any, opts: argparse.Namespace, timeout: float, wait_for_ready: bool) -> Any:
    """The server's health status, and (for the server as a whole) whether it is callstate.
    With --wait, a call still waiting for a connection at --timeout ends DEADLINE_EXCEEDED, which
    hides why none was made: asked once more without waiting, gRPC answers at once with the last
    attempt's failure (a refused connection, a TLS mismatch), else that call's deadline passes too."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=opts.service), timeout=timeout,
                           wait_for_ready=wait_for_ready)
    except grpc.RpcError as err:
        if not (wait_for_ready and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED):
            raise
        # no connection within --timeout; this call fails at once when the last attempt failed
        return _ask(channel, opts, min(timeout, WHY_NOT_READY_TIMEOUT), wait_for_ready=False)
    if not opts.service:   # any gRPC server may answer for itself: is this one callstate?
        stub.Check(health_pb2.HealthCheckRequest(service=EMULATOR), timeout=timeout)
    return reply


def _failure(opts: argparse.Namespace, settings: Any, err: Any, waited: float) -> str:
    """The one line saying why the health check failed."""
    import grpc

    code, details = err.code(), err.details() or ""
    if code == grpc.StatusCode.NOT_FOUND and not opts.service:
        return f"{opts.target} answers health checks but is not a callstate server (it does not know {EMULATOR})"
    if code == grpc.StatusCode.NOT_FOUND:   # the health service answers with no details
        return f"{opts.target}: NOT_FOUND: it has no health status for --service {opts.service!r}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:   # a stalled server, or a blackholed address
        return f"{opts.target}: no answer within {waited:g} s (DEADLINE_EXCEEDED; --timeout waits longer)"
    if code == grpc.StatusCode.UNAVAILABLE and REFUSED in details and opts.wait:
        return f"nothing is listening at {opts.target} (connection refused) after waiting {waited:g} s"
    return f"{opts.target}: {code.name}: {settings.explain(code, details)}"
