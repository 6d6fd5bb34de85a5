"""`callstate health`: ask the server's gRPC health service (the container health check)."""

from __future__ import annotations

import argparse
import sys

from callstate.cli import COMMANDS
from callstate.cli.options import add_target, channel_settings
from callstate.v1 import callstate_pb2 as pb

DEFAULT_TIMEOUT = 5.0
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
                        "once: after `callstate serve ... &`, the next command finds it serving")
    return p


def run(opts: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    settings = channel_settings(opts)
    with settings.sync_channel(opts.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=opts.service), timeout=opts.timeout or DEFAULT_TIMEOUT,
                               wait_for_ready=opts.wait)
            if not opts.service:   # any gRPC server may answer for itself: is this one callstate?
                stub.Check(health_pb2.HealthCheckRequest(service=EMULATOR), timeout=opts.timeout or DEFAULT_TIMEOUT)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND and not opts.service:
                print(f"callstate health: {opts.target} answers health checks but is not a callstate server "
                      f"(it does not know {EMULATOR})", file=sys.stderr)
                return 1
            if err.code() == grpc.StatusCode.NOT_FOUND:   # the health service answers with no details
                print(f"callstate health: {opts.target}: NOT_FOUND: it has no health status for --service "
                      f"{opts.service!r}", file=sys.stderr)
                return 1
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:   # a stalled server, or a blackholed address
                print(f"callstate health: {opts.target}: no answer within {opts.timeout or DEFAULT_TIMEOUT:g} s "
                      f"(DEADLINE_EXCEEDED; --timeout waits longer)", file=sys.stderr)
                return 1
            print(f"callstate health: {opts.target}: {err.code().name}: {settings.explain(err.code(), err.details())}",
                  file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
