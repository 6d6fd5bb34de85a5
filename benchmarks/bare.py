"""Baselines for the benchmarks: a bare grpc.aio server and clients doing the same work.

    python benchmarks/bare.py serve --port-file F [--cancel-log F] [--tls-cert PEM --tls-key PEM] [--token T]
        a grpc.aio server answering callstate.v1.Emulator/Call with the same messages,
        no lifecycle, no log, no journal: echo at once, or hold (script outcome HOLD)
        until cancelled; GetCounters reports its in-flight count (on asyncio's event loop, or
        uvloop's with --loop uvloop). With --token it checks
        `authorization: Bearer T` in the handler, the least a token check can cost.
    python benchmarks/bare.py serve --port-file F --floor LOG
        the contract's floor: the same server doing the least any emulator must (floor_emulator):
        the call id read or made (returned with the reply of a call answered at once, in the
        headers first of one that waits), the call's state-log lines written.
    python benchmarks/bare.py drive --target T --client bare|callstate|raw-call|raw-charge --concurrency N --duration S
                                    [--tls-ca PEM] [--token T] [--cancel-keys]
        a closed-loop client; prints JSON {"calls", "seconds", "cpu_s"}. --cancel-keys: the
        bare client sends a cancel key with each call, as callstate's clients do. raw-call and
        raw-charge send pre-serialized bytes (the same client work either way) to
        Emulator/Call or to a stand-in's shop.v1.Shop/Charge (tests/protos), the call id in metadata.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from callstate.v1 import callstate_pb2 as pb  # noqa: E402
from callstate.v1 import callstate_pb2_grpc as pb_grpc  # noqa: E402


class BareEmulator(pb_grpc.EmulatorServicer):
    def __init__(self, token: str | None = None) -> None:
        self.in_flight = 0
        self.cancelled_at: dict[str, float] = {}
        self.auth = f"Bearer {token}".encode() if token else None

    async def Call(self, request: pb.CallRequest, context: grpc.aio.ServicerContext) -> pb.CallReply:
        if self.auth is not None:
            given = dict(context.invocation_metadata()).get("authorization", "")
            if not hmac.compare_digest(given.encode(), self.auth):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "token")
        if request.script.outcome != pb.OUTCOME_HOLD:
            return pb.CallReply(call_id=request.call_id)
        self.in_flight += 1
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            self.cancelled_at[request.call_id] = time.time()
            raise
        finally:
            self.in_flight -= 1
        return pb.CallReply()  # pragma: no cover


    async def PipeOut(self, request: pb.PipeRequest, context: grpc.aio.ServicerContext) -> None:
        """The out pipe without a lifecycle: the scripted number of messages as fast as the
        stream takes them, or (hold) one every interval until the caller cancels."""
        script = request.script
        payload = bytes(script.message_bytes)
        hold = script.outcome == pb.OUTCOME_HOLD
        self.in_flight += 1
        try:
            seq = 0
            while hold or seq < script.messages:
                seq += 1
                await context.write(pb.PipeMessage(seq=seq, payload=payload))
                if hold:
                    await asyncio.sleep(script.interval_ms / 1000)
        except BaseException:   # CancelledError, or grpc's internal error on the write
            self.cancelled_at[request.call_id] = time.time()
            raise
        finally:
            self.in_flight -= 1


def floor_emulator(log: str) -> BareEmulator:
    """bare's server plus the least the contract asks of any emulator, whatever its design: the
    call's id read from the request or its metadata (made when the caller sent none, and returned
    with the reply of a call answered at once, in the headers first of one that waits), and the
    call's state-log lines written through callstate's StateLog (D, Comp, End for a completed
    call; D, then cancel_seen, A, End for a held call cancelled).
    No lifecycle table, journal, validation or dispatcher: what callstate serve does beyond this
    is its own cost. A lower bound, then (the contract still asks for the Journal's history, bad
    scripts refused, the default mix): a target this floor misses is out of reach on the same
    event loop; one it meets is not thereby in reach."""
    from callstate.lifecycle import (A, ABORT, ABORTED, ABORTIVE, CANCEL_SEEN, D, DISPATCH, END, ENTER, SERVER,
                                     server_end_code)
    from callstate.logfile import StateLog
    # the server's own builders of a call's D entry and a completed call's Comp and End: the floor's
    # lines are then the product's byte for byte, and as cheap to make (one positional tuple each)
    from callstate.server.calls import _comp_entry, _dispatch_entry, _end_entry
    from callstate.statelog import new_entry
    from callstate.wire import CALL_ID_KEY, new_call_id
    append = StateLog(log).append
    cancelled = server_end_code(ABORTED, 1818)

    class FloorEmulator(BareEmulator):
        async def Call(self, request: pb.CallRequest, context: grpc.aio.ServicerContext) -> pb.CallReply:
            call_id = request.call_id or next((v for k, v in context.invocation_metadata() or ()
                                               if k == CALL_ID_KEY), "")
            hold = request.script.outcome == pb.OUTCOME_HOLD
            if not call_id:   # made: with the reply for a call answered at once, else in the headers first
                call_id = new_call_id()
                if hold:
                    await context.send_initial_metadata(((CALL_ID_KEY, call_id),))
                else:
                    context.set_trailing_metadata(((CALL_ID_KEY, call_id),))
            append(_dispatch_entry(time.time(), call_id, DISPATCH, None, None))
            if not hold:
                append(_comp_entry(time.time(), call_id, None, None))
                append(_end_entry(time.time(), call_id, "OK", None, None))
                return pb.CallReply(call_id=call_id)
            try:
                return await super().Call(request, context)
            except asyncio.CancelledError:
                append(new_entry((time.time(), SERVER, call_id, D, D, CANCEL_SEEN, None, None, None, None, ABORTIVE,
                                  None, None, None, None, None)))
                append(new_entry((time.time(), SERVER, call_id, A, D, ENTER, ABORT, None, None, f"code={cancelled}",
                                  None, None, None, None, None, None)))
                append(new_entry((time.time(), SERVER, call_id, END, A, ENTER, ABORTED, cancelled, "CANCELLED",
                                  "cancelled by the caller (abortive)", None, None, None, None, None, None)))
                raise
    return FloorEmulator()


class BareJournal(pb_grpc.JournalServicer):
    def __init__(self, emulator: BareEmulator) -> None:
        self.emulator = emulator

    async def GetCounters(self, request: pb.CountersRequest, context: grpc.aio.ServicerContext) -> pb.Counters:
        return pb.Counters(in_flight=self.emulator.in_flight)


async def until_signalled(port: int, port_file: str) -> None:
    """Say the port in `port_file`, then serve until SIGINT or SIGTERM."""
    Path(port_file).write_text(str(port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve(port_file: str, cancel_log: str | None, tls_cert: str | None = None, tls_key: str | None = None,
                token: str | None = None, floor_log: str | None = None) -> None:
    server = grpc.aio.server()
    emulator = floor_emulator(floor_log) if floor_log else BareEmulator(token)
    pb_grpc.add_EmulatorServicer_to_server(emulator, server)
    pb_grpc.add_JournalServicer_to_server(BareJournal(emulator), server)
    if tls_cert and tls_key:
        creds = grpc.ssl_server_credentials([(Path(tls_key).read_bytes(), Path(tls_cert).read_bytes())])
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await until_signalled(port, port_file)
    await server.stop(1)
    if cancel_log:
        Path(cancel_log).write_text(json.dumps(emulator.cancelled_at))


async def drive(target: str, client: str, concurrency: int, duration: float, log: str | None,
                tls_ca: str | None = None, token: str | None = None, cancel_keys: bool = False) -> dict[str, float]:
    done = 0
    stop_at = 0.0
    if client == "bare":
        if tls_ca:
            channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(Path(tls_ca).read_bytes()))
        else:
            channel = grpc.aio.insecure_channel(target)
        stub = pb_grpc.EmulatorStub(channel)
        auth = (("authorization", f"Bearer {token}"),) if token else ()

        async def one() -> None:
            call_id = os.urandom(16).hex()
            key = os.urandom(16).hex() if cancel_keys else ""
            await stub.Call(pb.CallRequest(call_id=call_id, script=SCRIPT, cancel_key=key),
                            metadata=(("callstate-call-id", call_id),) + auth)
        closer = channel.close
    elif client in RAW:
        channel = grpc.aio.insecure_channel(target)
        path, body = RAW[client]
        rpc = channel.unary_unary(path)   # bytes in, bytes out: no (de)serialization on this side

        async def one() -> None:
            await rpc(body, metadata=(("callstate-call-id", os.urandom(16).hex()),))
        closer = channel.close
    else:
        from callstate.client import AsyncClient
        callstate_client = AsyncClient(target, log=log, tls_ca=tls_ca, token=token)

        async def one() -> None:
            await callstate_client.start(SCRIPT)
        closer = callstate_client.close

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await one()
            done += 1

    stop_at = time.perf_counter() + 0.5        # warm-up, not counted
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = 0
    cpu0 = _cpu()
    t0 = time.perf_counter()
    stop_at = t0 + duration
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - t0
    cpu = _cpu() - cpu0
    await closer()
    return {"calls": done, "seconds": seconds, "cpu_s": cpu}


SCRIPT = pb.Script(outcome=pb.OUTCOME_COMPLETE)
# shop.v1.ChargeRequest{order_id: "bench-1"} (field 1, a string), serialized by hand: the
# driver needs no code generated from the test proto
RAW = {"raw-call": ("/callstate.v1.Emulator/Call", pb.CallRequest(script=SCRIPT).SerializeToString()),
       "raw-charge": ("/shop.v1.Shop/Charge", b"\x0a\x07bench-1")}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port-file", required=True)
    s.add_argument("--cancel-log")
    s.add_argument("--tls-cert")
    s.add_argument("--tls-key")
    s.add_argument("--token")
    s.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    s.add_argument("--floor", metavar="LOG", help="the contract's floor (floor_emulator), its state log in LOG")
    d = sub.add_parser("drive")
    d.add_argument("--target", required=True)
    d.add_argument("--client", choices=["bare", "callstate", *RAW], default="bare")
    d.add_argument("--concurrency", type=int, default=64)
    d.add_argument("--duration", type=float, default=3.0)
    d.add_argument("--log", help="callstate client: state log file")
    d.add_argument("--tls-ca")
    d.add_argument("--token")
    d.add_argument("--cancel-keys", action="store_true")
    opts = parser.parse_args()
    if opts.cmd == "serve":
        if opts.loop == "uvloop":
            import uvloop
            uvloop.install()
        asyncio.run(serve(opts.port_file, opts.cancel_log, opts.tls_cert, opts.tls_key, opts.token, opts.floor))
    else:
        print(json.dumps(asyncio.run(drive(opts.target, opts.client, opts.concurrency, opts.duration, opts.log,
                                           opts.tls_ca, opts.token, opts.cancel_keys))))


if __name__ == "__main__":
    main()
