"""The Python work of one unary call on each side, in this process, without gRPC: CPU time per
call (every thread: the state log's writer is counted until its close()).

    python benchmarks/handler_cost.py server --calls 20000 --rounds 5
    python benchmarks/handler_cost.py client --calls 20000 --rounds 5

server  `Emulator.Call` awaited on a stand-in context for requests as benchmarks/bare.py's driver
        sends them (the id in the request and as metadata, a complete script), the journal at its
        default size, the state log writing a file (`file`) or keeping its entries (`sink`).
client  `AsyncClient.start(script)` awaited on a stand-in channel whose call has its reply at once
        (no suspension), the client's state log writing a file (`file`), keeping its entries
        (`sink`) or none (`none`).

    python benchmarks/handler_cost.py lines --rounds 7
    python benchmarks/handler_cost.py kept

lines   the state log's formatting (`format_line`) of the entries the server's `Emulator.Call` logs,
        per line: call ids as callstate makes them (`hex`) and as k6_call.js sends them (`dashed`:
        not alphanumeric, so escaped by orjson).
kept    what each ended call leaves in the journal at its default size: bytes (tracemalloc) and
        objects the garbage collector tracks, beyond what the same calls leave with journal size 0.

    python benchmarks/handler_cost.py drive --rounds 7

drive   not in process: benchmarks/bare.py's server on CPU 1, and on CPU 0 its bare client, then
        callstate's asyncio client from BASE_TREE (when set: a tree laid out as installed), then
        this tree's, alternating (64 in flight, 3 s each, the callstate clients with their state
        log); the client process's CPU per call, medians over rounds, each against bare.

It imports the tree it sits in: copy it into another tree laid out as installed (BASE_TREE in
benchmarks/attribute.py) and run both, alternating, for before and after figures
(docs/performance.md, session 36).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import run as R  # noqa: E402   benchmarks/run.py: the stub context and the kept log
from callstate.logfile import StateLog  # noqa: E402
from callstate.v1 import callstate_pb2 as pb  # noqa: E402

SCRIPT = pb.Script(outcome=pb.OUTCOME_COMPLETE)
DEFAULT_VARIANTS = {"server": "file,sink", "client": "file,sink,none", "lines": "hex,dashed"}


def _emulator(log_append: Any, journal_size: int = 10_000) -> Any:
    from callstate.script import Mix
    from callstate.server.emulator import EmulatorConfig, EmulatorServicer
    from callstate.server.journal import Journal
    return EmulatorServicer(EmulatorConfig(mix=Mix.parse("complete=100")), Journal(journal_size), log_append)


def _calls(emulator: Any, ids: list[str]) -> None:
    """`ids`' common calls, one after the other (none suspends)."""
    async def go() -> None:
        for i in ids:
            await emulator.Call(pb.CallRequest(call_id=i, script=SCRIPT), R.StubContext((("callstate-call-id", i),)))
    asyncio.run(go())


def server_round(n: int, mode: str, tmp: Path) -> float:
    log: Any = StateLog(tmp / "server.jsonl") if mode == "file" else R.ListLog()
    emulator = _emulator(log.append)
    ids = [os.urandom(16).hex() for _ in range(n)]
    work = [(pb.CallRequest(call_id=i, script=SCRIPT), R.StubContext((("callstate-call-id", i),))) for i in ids]

    async def go() -> float:
        c0 = time.process_time()
        for request, context in work:
            await emulator.Call(request, context)
        if mode == "file":
            log.close()
        return (time.process_time() - c0) / n * 1e6

    return asyncio.run(go())


class _Rpc:
    """A grpc.aio unary call whose reply is in: awaiting it does not suspend."""

    __slots__ = ("reply",)

    def __init__(self, reply: Any) -> None:
        self.reply = reply

    def __await__(self) -> Any:
        return self.reply
        yield  # pragma: no cover - makes this a generator

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return True


class _Channel:
    _loop = None   # grpc.aio's record of its loop: none, the client is usable on any

    def unary_unary(self, path: str, *args: Any, **kwargs: Any) -> Any:
        def call(request: Any, metadata: Any = None, timeout: Any = None) -> _Rpc:
            return _Rpc(pb.CallReply(call_id=request.call_id))
        return call

    def __getattr__(self, name: str) -> Any:   # the stub's streaming methods: never called here
        return self.unary_unary

    async def close(self) -> None:
        pass


def client_round(n: int, mode: str, tmp: Path) -> float:
    from callstate.client.aio import AsyncClient

    class Client(AsyncClient):
        _open_channel = staticmethod(lambda settings, target, options: _Channel())   # type: ignore[assignment]

    async def go() -> float:
        log: Any = tmp / "client.jsonl" if mode == "file" else R.ListLog() if mode == "sink" else None
        client = Client("127.0.0.1:1", log=log)
        start = client.start
        c0 = time.process_time()
        for _ in range(n):
            await start(SCRIPT)
        await client.close()   # its log's last lines written
        return (time.process_time() - c0) / n * 1e6

    return asyncio.run(go())


def drive_ab(rounds: int, duration: float = 3.0) -> dict[str, float]:
    """`drive`: the client's CPU per call, this tree's callstate client against BASE_TREE's and bare's."""
    import json
    import subprocess
    trees = {"bare": ROOT, "callstate": ROOT}
    if os.environ.get("BASE_TREE"):
        trees = {"bare": ROOT, "base-callstate": Path(os.environ["BASE_TREE"]), "callstate": ROOT}
    cpu: dict[str, list[float]] = {v: [] for v in trees}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        port_file = tmp / "port"
        server = subprocess.Popen(["taskset", "-c", "1", sys.executable, str(ROOT / "benchmarks" / "bare.py"), "serve",
                                   "--port-file", str(port_file), "--cancel-log", str(tmp / "cancels.json")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while not (port_file.exists() and port_file.read_text().strip()):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the bare server did not start")
                time.sleep(0.05)
            target = f"127.0.0.1:{port_file.read_text().strip()}"
            for _ in range(rounds):
                for v, tree in trees.items():
                    log = [] if v == "bare" else ["--log", str(tmp / f"{v}.jsonl")]
                    cmd = ["taskset", "-c", "0", sys.executable, str(tree / "benchmarks" / "bare.py"), "drive",
                           "--target", target, "--client", "bare" if v == "bare" else "callstate",
                           "--concurrency", "64", "--duration", str(duration), *log]
                    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, cwd=tmp)
                    if done.returncode != 0:
                        raise RuntimeError(done.stderr)
                    r = json.loads(done.stdout.strip().splitlines()[-1])
                    cpu[v].append(r["cpu_s"] / r["calls"] * 1e6)
        finally:
            server.terminate()
            server.wait(30)
    bare = statistics.median(cpu["bare"])
    for v, runs in cpu.items():
        m = statistics.median(runs)
        print(f"{v:<15} client CPU per call {m:6.1f} us (ratio {bare / m:.3f})   rounds {[round(x, 1) for x in runs]}")
    return {v: statistics.median(r) for v, r in cpu.items()}


def lines_round(n: int, mode: str, tmp: Path) -> float:
    """`lines`: CPU per line of `format_line` over the entries of `n` common calls."""
    from callstate.statelog import format_line
    log = R.ListLog()
    ids = [os.urandom(16).hex() if mode == "hex" else f"{os.urandom(6).hex()}-{i % 64}-{i}" for i in range(n)]
    _calls(_emulator(log.append), ids)
    c0 = time.process_time()
    "".join([format_line(e) for e in log.entries])
    return (time.process_time() - c0) / len(log.entries) * 1e6


def kept(n: int) -> None:
    """`kept`: bytes and tracked objects per ended call the journal keeps (`n` calls into a journal
    of `n`), against the same calls with journal size 0."""
    import tracemalloc
    emulators = {size: _emulator(lambda e: None, size) for size in (0, n)}
    for size, emulator in emulators.items():
        _calls(emulator, [f"{size:08x}{0:024x}"])   # what the first call makes once (known scripts)
    tracemalloc.start()
    grown = {}
    for size, emulator in emulators.items():
        gc.collect()
        m0, t0 = tracemalloc.get_traced_memory()[0], len(gc.get_objects())
        _calls(emulator, [f"{size:08x}{i + 1:024x}" for i in range(n - 1)])
        gc.collect()
        grown[size] = (tracemalloc.get_traced_memory()[0] - m0, len(gc.get_objects()) - t0)
    tracemalloc.stop()
    calls = n - 1
    print(f"per kept call: {(grown[n][0] - grown[0][0]) / calls:.0f} bytes, "
          f"{(grown[n][1] - grown[0][1]) / calls:.2f} objects the garbage collector tracks "
          f"(journal size 0: {grown[0][0] / calls:.0f} bytes a call, the journal's memory of ended ids)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=("server", "client", "lines", "kept", "drive"))
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", help="server: file,sink; client: file,sink,none; lines: hex,dashed (the default: all)")
    parser.add_argument("--json", action="store_true", help="one JSON line of medians (for a driver script)")
    args = parser.parse_args()
    if args.which == "drive":
        drive_ab(args.rounds)
        return 0
    if args.which == "kept":
        kept(10_000)
        return 0
    if os.environ.get("PIN"):
        os.sched_setaffinity(0, {int(os.environ["PIN"])})
    variants = (args.variants or DEFAULT_VARIANTS[args.which]).split(",")
    fn = {"server": server_round, "client": client_round, "lines": lines_round}[args.which]
    runs: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as name:
        for _ in range(args.rounds):
            for v in variants:
                gc.collect()
                runs[v].append(fn(args.calls, v, Path(name)))
    if args.json:
        import json
        print(json.dumps({v: statistics.median(r) for v, r in runs.items()}))
        return 0
    per = "line" if args.which == "lines" else "call"
    for v, cpu in runs.items():
        rounds = [round(x, 2) for x in cpu]
        print(f"{args.which} {v:<5} CPU per {per} {statistics.median(cpu):6.2f} us   rounds {rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
