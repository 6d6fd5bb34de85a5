"""callstate benchmarks: every figure is a ratio against bare grpc.aio, run side by side.

    python benchmarks/run.py                 # all of them (about 8 minutes on 2 cores)
    python benchmarks/run.py server client   # some of them
    python benchmarks/run.py million --million 200000

server   callstate serve (state log + journal on, completing at once) vs a bare grpc.aio
         server, same bare client and concurrency: calls/s and server CPU per call
client   the callstate asyncio client (state log on) vs a bare grpc.aio client, same bare
         server: calls/s and client CPU per call
cancel   1,000 held calls in flight, cancelled one by one: client cancel -> server sees
         it, p50/p99/max, callstate vs bare
held     10,000 held calls on one server: server memory per held call vs bare; then
         cancel them all: time until every call ended on both sides
million  1,000,000 calls through one callstate server: its memory stays flat (the
         journal is bounded), bare server for reference
pipes    out pipes (server-streaming): messages/s of callstate serve (state log on) vs a
         bare grpc.aio streaming server, same bare client; of the callstate asyncio pipe
         client (state log on) vs a bare client, same bare server; and cancel propagation
         of held pipes cancelled after their 3rd message, callstate vs bare
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from callstate.v1 import callstate_pb2 as pb  # noqa: E402
from callstate.v1 import callstate_pb2_grpc as pb_grpc  # noqa: E402

PY = sys.executable
BARE = str(ROOT / "benchmarks" / "bare.py")
TICK = os.sysconf("SC_CLK_TCK")


class Server:
    """A server process: callstate serve or the bare baseline."""

    def __init__(self, kind: str, tmp: Path, *extra: str) -> None:
        self.kind = kind
        port_file = tmp / f"{kind}-{time.monotonic_ns()}.port"
        self.log = tmp / f"{kind}-server.jsonl"
        self.cancel_log = tmp / f"{kind}-cancels.json"
        if kind == "callstate":
            cmd = [PY, "-m", "callstate", "serve", "--port", "0", "--port-file", str(port_file),
                   "--log-file", str(self.log), *extra]
        else:
            cmd = [PY, BARE, "serve", "--port-file", str(port_file), "--cancel-log", str(self.cancel_log)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} server did not start")
            time.sleep(0.02)
        self.target = f"127.0.0.1:{port_file.read_text().strip()}"

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def drive(target: str, client: str, concurrency: int, duration: float, log: Path | None = None,
          server: Server | None = None) -> dict[str, float]:
    cmd = [PY, BARE, "drive", "--target", target, "--client", client, "--concurrency", str(concurrency),
           "--duration", str(duration)] + (["--log", str(log)] if log else [])
    cpu0 = server.cpu() if server else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["calls_per_s"] = result["calls"] / result["seconds"]
    result["cpu_us_per_call"] = result["cpu_s"] / result["calls"] * 1e6
    if server:
        # server CPU over the whole driver run (0.5 s warm-up included, in both kinds alike)
        result["server_cpu_s"] = server.cpu() - cpu0
    return result


def ratio_line(name: str, bare: float, ours: float, unit: str, higher_is_better: bool = True) -> str:
    r = ours / bare if higher_is_better else bare / ours
    return f"  {name:<34} bare {bare:10.1f} {unit:<10} callstate {ours:10.1f} {unit:<10} ratio {r:5.2f}"


def bench_server(tmp: Path, rounds: int, concurrency: int, duration: float) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {"bare": [], "callstate": []}
    for _ in range(rounds):
        for kind in ("bare", "callstate"):
            srv = Server(kind, tmp)
            try:
                runs[kind].append(drive(srv.target, "bare", concurrency, duration, server=srv))
            finally:
                srv.stop()
    return _summarize("server", runs, server_cpu=True)


def bench_client(tmp: Path, rounds: int, concurrency: int, duration: float) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {"bare": [], "callstate": []}
    srv = Server("bare", tmp)
    try:
        for _ in range(rounds):
            for kind in ("bare", "callstate"):
                log = tmp / "client.jsonl" if kind == "callstate" else None
                runs[kind].append(drive(srv.target, kind, concurrency, duration, log=log))
    finally:
        srv.stop()
    return _summarize("client", runs, server_cpu=False)


def _summarize(name: str, runs: dict[str, list[dict[str, float]]], server_cpu: bool) -> dict[str, Any]:
    med = {k: statistics.median(r["calls_per_s"] for r in v) for k, v in runs.items()}
    if server_cpu:
        cpu = {k: statistics.median(r["server_cpu_s"] / r["calls"] * 1e6 for r in v) for k, v in runs.items()}
    else:
        cpu = {k: statistics.median(r["cpu_us_per_call"] for r in v) for k, v in runs.items()}
    out = {"calls_per_s": med, "cpu_us_per_call": cpu,
           "throughput_ratio": med["callstate"] / med["bare"], "cpu_ratio": cpu["bare"] / cpu["callstate"],
           "rounds": {k: [round(r["calls_per_s"]) for r in v] for k, v in runs.items()}}
    print(f"{name}: median of {len(runs['bare'])} alternating rounds")
    print(ratio_line("calls/s", med["bare"], med["callstate"], "calls/s"))
    print(ratio_line(f"{name} CPU per call", cpu["bare"], cpu["callstate"], "us", higher_is_better=False))
    print(f"  rounds: {out['rounds']}")
    return out


async def _hold_calls(kind: str, target: str, n: int, log: Path | None) -> Any:
    """Start n held calls; returns (ids, calls, cancel(call) -> time, wait_all()).

    Started in batches of 500, each once the server holds the previous ones: a burst of
    thousands at once overflows grpc core's queue of calls the application has not taken
    yet (grpc.server.max_pending_requests_hard_limit, 3000), and core cancels the excess,
    bare server or not."""
    hold = pb.Script(outcome=pb.OUTCOME_HOLD)
    ids = [os.urandom(16).hex() for _ in range(n)]
    if kind == "callstate":
        from callstate.client import AsyncClient
        client = AsyncClient(target, log=log)
        start = lambda call_id: client.start(hold, call_id=call_id)  # noqa: E731
        close = client.close
    else:
        channel = grpc.aio.insecure_channel(target)
        stub = pb_grpc.EmulatorStub(channel)
        start = lambda call_id: stub.Call(pb.CallRequest(call_id=call_id, script=hold))  # noqa: E731
        close = channel.close
    calls: list[Any] = []
    for i in range(0, n, 500):
        calls.extend(start(call_id) for call_id in ids[i:i + 500])
        await _wait_in_flight(target, len(calls), 60)   # the server took them all: next batch

    def cancel(call: Any) -> float:
        call.cancel()   # abortive in both: callstate's cancel() is a gRPC cancel
        return time.time()

    async def wait_all() -> None:
        for c in calls:
            try:
                await c
            except BaseException:   # CallError 1818 / asyncio.CancelledError
                pass
        await close()
    return ids, calls, cancel, wait_all


async def _wait_in_flight(target: str, want: int, timeout: float) -> float:
    t0 = time.perf_counter()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.JournalStub(channel)
        while time.perf_counter() - t0 < timeout:
            in_flight = (await stub.GetCounters(pb.CountersRequest())).in_flight
            if (in_flight >= want) if want else in_flight == 0:
                return time.perf_counter() - t0
            await asyncio.sleep(0.01)
    raise TimeoutError(f"server in flight never reached {want}")


def _cancel_times(kind: str, srv: Server) -> dict[str, float]:
    if kind == "bare":
        return json.loads(srv.cancel_log.read_text())
    from callstate.statelog import read_log
    from datetime import datetime
    return {e["call_id"]: datetime.fromisoformat(e["ts"]).timestamp()
            for _, e in read_log(srv.log) if e["event"] == "cancel_seen"}


def bench_cancel(tmp: Path, n: int, gap: float) -> dict[str, Any]:
    from callstate.check import percentiles
    out = {}
    for kind in ("bare", "callstate"):
        srv = Server(kind, tmp, "--max-hold", "600")

        async def go() -> dict[str, float]:
            ids, calls, cancel, wait_all = await _hold_calls(kind, srv.target, n, tmp / f"{kind}-cancel-client.jsonl")
            await _wait_in_flight(srv.target, n, 60)
            sent = {}
            for call_id, call in zip(ids, calls):
                sent[call_id] = cancel(call)
                await asyncio.sleep(gap)
            await wait_all()
            return sent
        try:
            sent = asyncio.run(go())
        finally:
            srv.stop()
        seen = _cancel_times(kind, srv)
        delays = [(seen[i] - t) * 1000 for i, t in sent.items() if i in seen]
        out[kind] = percentiles(delays)
        out[kind]["missing"] = len(sent) - len(delays)
    b, c = out["bare"], out["callstate"]
    print(f"cancel propagation with {n} calls in flight, cancelled {gap * 1000:g} ms apart (client cancel -> server sees it)")
    for q in ("p50", "p99", "max"):
        print(f"  {q:<5} bare {b[q]:7.3f} ms   callstate {c[q]:7.3f} ms")
    print(f"  seen by the server: bare {b['count']}/{n}, callstate {c['count']}/{n}")
    return out


def bench_held(tmp: Path, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("bare", "callstate"):
        srv = Server(kind, tmp, "--max-hold", "600")
        try:
            time.sleep(0.5)

            async def go() -> dict[str, float]:
                # warm the server up with a few calls so idle RSS includes grpc's own start-up
                ids, calls, cancel, wait_all = await _hold_calls(kind, srv.target, 50, None)
                await _wait_in_flight(srv.target, 50, 30)
                for c in calls:
                    cancel(c)
                await wait_all()
                await _wait_in_flight(srv.target, 0, 30)
                idle = srv.rss()
                ids, calls, cancel, wait_all = await _hold_calls(kind, srv.target, n, tmp / f"{kind}-held-client.jsonl")
                await _wait_in_flight(srv.target, n, 120)
                await asyncio.sleep(0.5)
                held = srv.rss()
                t0 = time.perf_counter()
                for c in calls:
                    cancel(c)
                await wait_all()
                client_done = time.perf_counter() - t0
                await _wait_in_flight(srv.target, 0, 60)
                both_done = time.perf_counter() - t0
                return {"idle_rss": idle, "held_rss": held, "per_call_bytes": (held - idle) / n,
                        "client_all_ended_s": client_done, "all_ended_s": both_done}
            out[kind] = asyncio.run(go())
        finally:
            srv.stop()
    b, c = out["bare"], out["callstate"]
    out["memory_ratio"] = c["per_call_bytes"] / b["per_call_bytes"]
    print(f"{n} held calls on one server")
    print(f"  server memory per held call: bare {b['per_call_bytes'] / 1024:.1f} KiB, "
          f"callstate {c['per_call_bytes'] / 1024:.1f} KiB: {out['memory_ratio']:.2f}x bare")
    print(f"  cancel all, until every call ended on both sides: bare {b['all_ended_s']:.2f} s, "
          f"callstate {c['all_ended_s']:.2f} s")
    return out


def bench_million(tmp: Path, calls: int, concurrency: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("bare", "callstate"):
        extra = ("--log-file", "/dev/null") if kind == "callstate" else ()
        srv = Server(kind, tmp)
        if kind == "callstate":   # state log on, but to /dev/null: this measures memory, not disk
            srv.stop()
            srv = Server(kind, tmp, *extra)
        samples = []
        try:
            proc = subprocess.Popen([PY, "-c", MILLION_DRIVER, srv.target, str(calls), str(concurrency)],
                                    stdout=subprocess.PIPE, text=True, cwd=ROOT)
            t0 = time.perf_counter()
            for line in proc.stdout:  # type: ignore[union-attr]
                done = int(line)
                samples.append((done, srv.rss()))
            proc.wait()
            elapsed = time.perf_counter() - t0
        finally:
            srv.stop()
        first = samples[0][1]
        out[kind] = {"samples": samples, "calls_per_s": calls / elapsed,
                     "rss_first_mib": first / 2**20, "rss_last_mib": samples[-1][1] / 2**20,
                     "growth": samples[-1][1] / first}
    print(f"{calls} calls through one server (RSS sampled every {calls // 10})")
    for kind in ("bare", "callstate"):
        o = out[kind]
        print(f"  {kind:<9} RSS after 10%: {o['rss_first_mib']:6.1f} MiB, after 100%: {o['rss_last_mib']:6.1f} MiB "
              f"(x{o['growth']:.2f}); {o['calls_per_s']:.0f} calls/s")
    return out


async def _pull_streams(target: str, client: str, streams: int, messages: int, log: Path | None) -> dict[str, float]:
    """`streams` out pipes at once, each pulling `messages` messages of 64 bytes to the end."""
    script = pb.PipeScript(outcome=pb.OUTCOME_COMPLETE, messages=messages, message_bytes=64)
    if client == "bare":
        channel = grpc.aio.insecure_channel(target)
        stub = pb_grpc.EmulatorStub(channel)

        async def one() -> int:
            call_id = os.urandom(16).hex()
            call = stub.PipeOut(pb.PipeRequest(call_id=call_id, script=script), metadata=(("callstate-call-id", call_id),))
            n = 0
            while await call.read() is not grpc.aio.EOF:   # read(): the same calls the pipe client makes
                n += 1
            return n
        close = channel.close
    else:
        from callstate.client import AsyncClient
        cs = AsyncClient(target, log=log)

        async def one() -> int:
            pipe = cs.pipe("out", script).start()
            async for _ in pipe:
                pass
            await pipe.result()
            return pipe.received
        close = cs.close
    await asyncio.gather(*(one() for _ in range(streams)))   # warm-up
    t0, cpu0 = time.perf_counter(), time.process_time()
    got = await asyncio.gather(*(one() for _ in range(streams)))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await close()
    return {"messages": sum(got), "seconds": seconds, "messages_per_s": sum(got) / seconds,
            "client_cpu_us_per_message": cpu / sum(got) * 1e6}


async def _cancel_pipes(kind: str, target: str, n: int, log: Path | None) -> dict[str, float]:
    """n held out pipes one after the other, each cancelled (abortively) after its 3rd message."""
    script = pb.PipeScript(outcome=pb.OUTCOME_HOLD, interval_ms=1)
    sent: dict[str, float] = {}
    if kind == "bare":
        channel = grpc.aio.insecure_channel(target)
        stub = pb_grpc.EmulatorStub(channel)
        for _ in range(n):
            call_id = os.urandom(16).hex()
            call = stub.PipeOut(pb.PipeRequest(call_id=call_id, script=script))
            for _ in range(3):
                await call.read()
            sent[call_id] = time.time()
            call.cancel()
            try:
                await call
            except BaseException:   # asyncio.CancelledError
                pass
        await channel.close()
    else:
        from callstate.client import AsyncClient, CallError
        async with AsyncClient(target, log=log) as client:
            for _ in range(n):
                pipe = client.pipe("out", script).start()
                for _ in range(3):
                    await pipe.pull()
                sent[pipe.call_id] = time.time()
                pipe.cancel()
                try:
                    await pipe.result()
                except CallError:
                    pass
    return sent


def bench_pipes(tmp: Path, rounds: int, streams: int, messages: int, cancels: int) -> dict[str, Any]:
    from callstate.check import percentiles
    server_runs: dict[str, list[dict[str, float]]] = {"bare": [], "callstate": []}
    for _ in range(rounds):
        for kind in ("bare", "callstate"):
            srv = Server(kind, tmp)
            try:
                cpu0 = srv.cpu()
                run = asyncio.run(_pull_streams(srv.target, "bare", streams, messages, None))
                # server CPU over warm-up and timed part (2 x the messages), in both kinds alike
                run["server_cpu_us_per_message"] = (srv.cpu() - cpu0) / (2 * run["messages"]) * 1e6
                server_runs[kind].append(run)
            finally:
                srv.stop()
    client_runs: dict[str, list[dict[str, float]]] = {"bare": [], "callstate": []}
    srv = Server("bare", tmp)
    try:
        for _ in range(rounds):
            for kind in ("bare", "callstate"):
                log = tmp / "pipe-client.jsonl" if kind == "callstate" else None
                client_runs[kind].append(asyncio.run(_pull_streams(srv.target, kind, streams, messages, log)))
    finally:
        srv.stop()

    def med(runs: dict[str, list[dict[str, float]]], key: str) -> dict[str, float]:
        return {k: statistics.median(r[key] for r in v) for k, v in runs.items()}
    out: dict[str, Any] = {"server": med(server_runs, "messages_per_s"),
                           "server_cpu_us": med(server_runs, "server_cpu_us_per_message"),
                           "client": med(client_runs, "messages_per_s"),
                           "client_cpu_us": med(client_runs, "client_cpu_us_per_message"),
                           "rounds": {"server": server_runs, "client": client_runs}}
    for kind in ("bare", "callstate"):
        srv = Server(kind, tmp, "--max-hold", "600")
        try:
            sent = asyncio.run(_cancel_pipes(kind, srv.target, cancels, tmp / "pipe-cancel-client.jsonl"))
        finally:
            srv.stop()
        seen = _cancel_times(kind, srv)
        delays = [(seen[i] - t) * 1000 for i, t in sent.items() if i in seen]
        out[f"cancel_{kind}"] = percentiles(delays) | {"missing": len(sent) - len(delays)}
    print(f"out pipes: {streams} streams of {messages} messages (64 bytes) at once; median of {rounds} alternating rounds")
    print(ratio_line("server messages/s (state log on)", out["server"]["bare"], out["server"]["callstate"], "msg/s"))
    print(ratio_line("server CPU per message", out["server_cpu_us"]["bare"], out["server_cpu_us"]["callstate"], "us",
                     higher_is_better=False))
    print(ratio_line("client messages/s (state log on)", out["client"]["bare"], out["client"]["callstate"], "msg/s"))
    print(ratio_line("client CPU per message", out["client_cpu_us"]["bare"], out["client_cpu_us"]["callstate"], "us",
                     higher_is_better=False))
    print(f"  rounds (msg/s): server {[[round(r['messages_per_s']) for r in v] for v in server_runs.values()]}, "
          f"client {[[round(r['messages_per_s']) for r in v] for v in client_runs.values()]}")
    b, c = out["cancel_bare"], out["cancel_callstate"]
    print(f"cancel propagation: {cancels} held out pipes, each cancelled after its 3rd message (client cancel -> "
          f"server sees it)")
    for q in ("p50", "p99", "max"):
        print(f"  {q:<5} bare {b[q]:7.3f} ms   callstate {c[q]:7.3f} ms")
    print(f"  p99 ratio {c['p99'] / b['p99']:.2f}x bare; seen by the server: bare {b['count']}/{cancels}, "
          f"callstate {c['count']}/{cancels}")
    return out


MILLION_DRIVER = """
import asyncio, os, sys
import grpc
sys.path.insert(0, os.getcwd())
from callstate.v1 import callstate_pb2 as pb, callstate_pb2_grpc as pb_grpc
target, total, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
async def main():
    done = 0
    step = max(1, total // 10)
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.EmulatorStub(ch)
        script = pb.Script(outcome=pb.OUTCOME_COMPLETE)
        async def worker():
            nonlocal done
            while done < total:
                done += 1
                await stub.Call(pb.CallRequest(call_id=os.urandom(16).hex(), script=script))
                if done % step == 0:
                    print(done, flush=True)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
asyncio.run(main())
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="*", metavar="BENCH",
                        help="server, client, cancel, held, million, pipes (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--in-flight", type=int, default=1000, help="cancel: calls in flight")
    parser.add_argument("--held", type=int, default=10_000)
    parser.add_argument("--million", type=int, default=1_000_000)
    parser.add_argument("--streams", type=int, default=8, help="pipes: out pipes at once")
    parser.add_argument("--messages", type=int, default=20_000, help="pipes: messages per out pipe")
    parser.add_argument("--pipe-cancels", type=int, default=300, help="pipes: held pipes cancelled")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    opts = parser.parse_args()
    everything = ["server", "client", "cancel", "held", "million", "pipes"]
    unknown = [w for w in opts.which if w not in everything]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(everything)}")
    opts.which = opts.which or everything
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for which in opts.which:
            t0 = time.perf_counter()
            if which == "server":
                results[which] = bench_server(tmp, opts.rounds, opts.concurrency, opts.duration)
            elif which == "client":
                results[which] = bench_client(tmp, opts.rounds, opts.concurrency, opts.duration)
            elif which == "cancel":
                results[which] = bench_cancel(tmp, opts.in_flight, 0.001)
            elif which == "held":
                results[which] = bench_held(tmp, opts.held)
            elif which == "pipes":
                results[which] = bench_pipes(tmp, opts.rounds, opts.streams, opts.messages, opts.pipe_cancels)
            else:
                results[which] = bench_million(tmp, opts.million, opts.concurrency)
            print(f"  ({time.perf_counter() - t0:.0f} s)\n", flush=True)
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
