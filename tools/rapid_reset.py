"""HTTP/2 rapid reset against `callstate serve`, per --max-concurrent-streams bound.

    python tools/rapid_reset.py 4096 100      # one 6 s run per bound

For each bound: a server on loopback; one raw connection sends HEADERS + DATA + RST_STREAM
(CANCEL) for held calls as fast as it can (reconnecting when the server closes it, and reading
what the server sends) while another client makes unary calls one after another. Prints that
client's p50/p99 idle and under attack, its failures, and how many calls reached a handler.
Traffic stays on 127.0.0.1; the server is stopped at the end of each run.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from callstate.v1 import callstate_pb2 as pb  # noqa: E402
from callstate.v1 import callstate_pb2_grpc as pb_grpc  # noqa: E402
from tests.rawh2 import (CANCEL, DATA, END_HEADERS, END_STREAM, HEADERS, PREFACE, RST_STREAM, SETTINGS,  # noqa: E402
                         frame, grpc_message, headers_block)

SECONDS = 6.0
COMPLETE = pb.CallRequest(script=pb.Script(outcome=pb.OUTCOME_COMPLETE))


def _start(streams: int, folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = folder / f"port-{streams}"
    port_file.unlink(missing_ok=True)
    srv = subprocess.Popen([sys.executable, "-m", "callstate", "serve", "--port", "0", "--port-file", str(port_file),
                            "--no-state-log", "--max-concurrent-streams", str(streams)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not (port_file.exists() and port_file.read_text().strip()):
        if srv.poll() is not None or time.monotonic() > deadline:
            srv.kill()
            raise SystemExit("callstate serve did not start")
        time.sleep(0.05)
    return srv, int(port_file.read_text())


def _attack(port: int, stop: threading.Event, sent: list[int]) -> None:
    held = grpc_message(pb.CallRequest(script=pb.Script(outcome=pb.OUTCOME_HOLD)).SerializeToString())
    block = headers_block("/callstate.v1.Emulator/Call", f"127.0.0.1:{port}")
    while not stop.is_set():
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(PREFACE + frame(SETTINGS, 0, 0, b""))
        threading.Thread(target=_drain, args=(sock,), daemon=True).start()
        stream = 1
        while not stop.is_set():
            burst = bytearray()
            for _ in range(200):
                burst += (frame(HEADERS, END_HEADERS, stream, block) + frame(DATA, END_STREAM, stream, held)
                          + frame(RST_STREAM, 0, stream, struct.pack(">I", CANCEL)))
                stream += 2
            try:
                sock.sendall(burst)
            except OSError:
                break
            sent[0] += 200
        sock.close()


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def _ms(values: list[float], q: float) -> float:
    return sorted(values)[int(q * (len(values) - 1))] * 1000 if values else float("nan")


def run(streams: int, folder: Path) -> None:
    srv, port = _start(streams, folder)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.EmulatorStub(channel)
        idle: list[float] = []
        busy: list[float] = []
        failed: dict[str, int] = {}
        for i in range(250):
            t = time.perf_counter()
            stub.Call(COMPLETE, timeout=10)
            if i >= 50:   # after a warm-up
                idle.append(time.perf_counter() - t)
        stop, sent = threading.Event(), [0]
        attacker = threading.Thread(target=_attack, args=(port, stop, sent))
        attacker.start()
        end = time.monotonic() + SECONDS
        while time.monotonic() < end:
            t = time.perf_counter()
            try:
                stub.Call(COMPLETE, timeout=10)
                busy.append(time.perf_counter() - t)
            except grpc.RpcError as err:
                failed[err.code().name] = failed.get(err.code().name, 0) + 1
        stop.set()
        attacker.join(30)
        dispatched = pb_grpc.JournalStub(channel).GetCounters(pb.CountersRequest(), timeout=10).dispatched
        channel.close()
        print(f"--max-concurrent-streams {streams}: idle p50 {_ms(idle, .5):.2f} ms; under attack "
              f"({sent[0] / SECONDS:,.0f} resets/s): p50 {_ms(busy, .5):.2f} ms p99 {_ms(busy, .99):.1f} ms, "
              f"{len(busy)} calls, failed: {failed or 0}; calls dispatched {dispatched}, of them the other "
              f"client's {250 + len(busy)} and its failed ones", flush=True)
    finally:
        srv.terminate()
        srv.wait(30)


def main() -> None:
    bounds = [int(a) for a in sys.argv[1:]] or [4096, 100]
    with tempfile.TemporaryDirectory() as folder:
        for streams in bounds:
            run(streams, Path(folder))


if __name__ == "__main__":
    main()
