"""Attribute callstate serve's extra CPU per call against bare grpc.aio, one feature at a time.

    python benchmarks/attribute.py run [--rounds 3] [--duration 3] [--variants callstate,nolog,...]
        alternating rounds: bare, then each variant, each a fresh server driven by the same bare
        client (benchmarks/bare.py drive, concurrency 64); prints the server's CPU per call (and
        its main thread's) and calls/s, median over rounds, each against bare.
    python benchmarks/attribute.py run --driver k6 ...
        the same, driven by k6 (64 VUs, a connection each) sending the id (k6-noid: none).
    python benchmarks/attribute.py serve VARIANT --port-file F --log-file L
        one server of a variant (what `run` starts).

Environment: PIN=1 pins the server to CPU 1 and the driver to CPU 0 (less noise from the
scheduler on a shared machine); TIMED=1 times the Emulator's Call handler in the server by
its thread CPU time (printed as "handler"); GCSTAT=1 writes the garbage collector's time
beside the log (printed per call as "gc"); BASE_TREE=DIR makes a variant named base-X run X
from another copy of the tree laid out as installed (callstate/, callstate/server/, ... and
benchmarks/), for before and after figures from one run. docs/performance.md says what these found.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
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
sys.path.insert(0, str(ROOT / "benchmarks"))

VARIANTS = {
    "callstate": "EmulatorServer as `callstate serve` builds it (state log, journal), on asyncio's loop",
    "cli": "`python -m callstate serve` itself",
    "nolog": "no state log",
    "nojournal": "journal size 0",
    "noopts": "grpc server options dropped (so_reuseport, keepalive, max receive)",
    "onlyemu": "only the Emulator service (no Journal, health, reflection)",
    "barehandler": "callstate's server with bare.py's Call handler in place of the emulator's",
    "floor": "bare.py's floor_emulator in place of the emulator's: the call id read (or made, and returned with the "
             "reply) and the call's state-log lines written, nothing else: the contract's floor",
    "bareheaders": "barehandler sending a made call id in the response headers when the caller sent none (the contract)",
    "barecode": "barehandler calling CODE_FUNCS (default 45) distinct small Python functions per call",
    "uvloop": "callstate on uvloop's event loop, as `callstate serve` runs by default (--loop auto)",
    "bareuvloop": "bare.py's server on uvloop's event loop",
    "lifenolog": "lifeonly without the state log",
    "lifenojournal": "lifeonly with journal size 0",
    "lifeonly": "bare.py's handler plus the call's dispatch, two moves and release (ServerCall, journal, log)",
    "barespin": "barehandler spinning SPIN_US (default 25) microseconds of pure Python per call",
    "bareimports": "bare.py's server in a process that imported callstate's server and cli",
    "gcfreeze": "gc.freeze() once started",
    "loopdrain": "no writer thread: the event loop writes the state log's lines in chunks every 50 ms",
    "novalidate": "the request's validation skipped",
    "lean": "no state log, journal size 0, no validation",
    "baretimed": "barehandler, its Call handler timed in situ",
    "timed": "callstate, its Call handler timed in situ (printed to stderr at exit)",
}


async def _serve_variant(variant: str, port_file: str, log_file: str) -> None:
    import grpc

    if variant in ("bareimports", "bareuvloop"):
        for name in ("callstate.cli", "callstate.server.app"):   # the process's heap as callstate serve's
            importlib.import_module(name)
        import bare
        server = grpc.aio.server()
        emulator = bare.BareEmulator()
        from callstate.v1 import callstate_pb2_grpc as pb_grpc
        pb_grpc.add_EmulatorServicer_to_server(emulator, server)
        pb_grpc.add_JournalServicer_to_server(bare.BareJournal(emulator), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await _run(port, port_file, server.stop)
        return
    from callstate.server import app
    options = app.ServerOptions(port=0, log=log_file, max_concurrent_streams=0)
    if variant in ("nolog", "lean"):
        options.log = None
    if variant in ("nojournal", "lean"):
        options.journal_size = 0
    if variant in ("novalidate", "lean"):
        from callstate.server import emulator
        emulator.validate_request = lambda request, limits: None   # type: ignore
    if variant == "noopts":
        real = grpc.aio.server
        app.grpc.aio.server = lambda options=None, interceptors=None: real(interceptors=interceptors)   # type: ignore
    if variant == "onlyemu":
        app.pb_grpc.add_JournalServicer_to_server = lambda *a: None   # type: ignore
        app.health_pb2_grpc.add_HealthServicer_to_server = lambda *a: None   # type: ignore
        app.EmulatorServer._add_standin = lambda self, server: ()   # type: ignore
    if variant == "barecode":
        import bare
        n = int(os.environ.get("CODE_FUNCS", "45"))
        src = "\n".join(f"def f{i}(a, b):\n    c = a + {i}\n    d = (a, b, c, {i})\n    if c > b:\n        return len(d) + c\n    return c - b\n" for i in range(n))
        ns: dict[str, Any] = {}
        exec(src, ns)
        funcs = [ns[f"f{i}"] for i in range(n)]

        class Coded(bare.BareEmulator):
            async def Call(self, request: Any, context: Any) -> Any:   # type: ignore[override]
                x = 1
                for f in funcs:
                    x = f(x, 3) & 0xff
                return await super().Call(request, context)
        real_code_add = app.pb_grpc.add_EmulatorServicer_to_server
        app.pb_grpc.add_EmulatorServicer_to_server = lambda servicer, server: real_code_add(Coded(), server)  # type: ignore
    if variant == "lifenolog":
        options.log = None
    if variant == "lifenojournal":
        options.journal_size = 0
    if variant.startswith("life"):
        from callstate.server.emulator import EmulatorServicer
        from callstate.lifecycle import COMPLETE, COMPLETED, server_end_code
        from callstate.v1 import callstate_pb2 as pb

        async def life(self: Any, request: Any, context: Any, answer: Any = None) -> Any:
            d = self.dispatcher
            call = d.dispatch(request.call_id, request.cancel_key, "complete", context)
            try:
                call.move(COMPLETE)
                call.move(COMPLETED, server_end_code(COMPLETED), "OK")
                return pb.CallReply(call_id=request.call_id)
            finally:
                d.release(request.call_id)
        EmulatorServicer.Call = life   # type: ignore
    if variant == "barespin":
        import bare
        spin = float(os.environ.get("SPIN_US", "25")) / 1e6

        class Spinning(bare.BareEmulator):
            async def Call(self, request: Any, context: Any) -> Any:   # type: ignore[override]
                end = time.perf_counter() + spin
                while time.perf_counter() < end:
                    pass
                return await super().Call(request, context)
        real_spin_add = app.pb_grpc.add_EmulatorServicer_to_server
        app.pb_grpc.add_EmulatorServicer_to_server = lambda servicer, server: real_spin_add(Spinning(), server)  # type: ignore
    if variant == "bareheaders":   # bare's handler, plus the contract's headers for a caller that sent no id
        import bare
        from callstate.wire import CALL_ID_KEY, new_call_id

        class Headers(bare.BareEmulator):
            async def Call(self, request: Any, context: Any) -> Any:   # type: ignore[override]
                if not request.call_id and not any(k == CALL_ID_KEY for k, _ in context.invocation_metadata() or ()):
                    await context.send_initial_metadata(((CALL_ID_KEY, new_call_id()),))
                return await super().Call(request, context)
        real_headers_add = app.pb_grpc.add_EmulatorServicer_to_server
        app.pb_grpc.add_EmulatorServicer_to_server = lambda servicer, server: real_headers_add(Headers(), server)  # type: ignore
    if variant == "floor":   # what any emulator keeping the contract does per call (bare.py floor_emulator)
        import bare
        options.log = None   # the server's own log stays off: the floor's is the only one
        real_floor_add = app.pb_grpc.add_EmulatorServicer_to_server
        app.pb_grpc.add_EmulatorServicer_to_server = (   # type: ignore
            lambda servicer, server: real_floor_add(bare.floor_emulator(log_file), server))
    if variant == "barehandler":
        import bare
        real_add = app.pb_grpc.add_EmulatorServicer_to_server
        app.pb_grpc.add_EmulatorServicer_to_server = lambda servicer, server: real_add(bare.BareEmulator(), server)  # type: ignore
    if os.environ.get("GCSTAT"):
        import atexit
        gcs = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
        started = [0.0]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = time.thread_time()
            else:
                gcs[info["generation"]][0] += 1
                gcs[info["generation"]][1] += time.thread_time() - started[0]
        gc.callbacks.append(on_gc)
        atexit.register(lambda: Path(log_file + ".gc").write_text(
            ", ".join(f"gen{g}: {n} collections {t * 1000:.1f} ms" for g, (n, t) in gcs.items()) + f"; tracked now {len(gc.get_objects())}"))
    if variant in ("timed", "baretimed") or os.environ.get("TIMED"):
        if variant == "baretimed":
            import bare
            real_add = app.pb_grpc.add_EmulatorServicer_to_server
            app.pb_grpc.add_EmulatorServicer_to_server = lambda servicer, server: real_add(bare.BareEmulator(), server)  # type: ignore
            EmulatorServicer = bare.BareEmulator
        else:
            from callstate.server.emulator import EmulatorServicer
        real_call = EmulatorServicer.Call
        spent = [0, 0]

        async def timed(self, request, context, answer=None):   # type: ignore[no-untyped-def]
            t = time.thread_time_ns()
            try:
                return await (real_call(self, request, context, answer) if answer else real_call(self, request, context))
            finally:
                spent[0] += time.thread_time_ns() - t
                spent[1] += 1
        EmulatorServicer.Call = timed   # type: ignore
        import atexit
        atexit.register(lambda: Path(log_file + ".timed").write_text(f"{spent[0] / max(spent[1], 1) / 1000:.1f} us per call in Call, {spent[1]} calls"))
    srv = app.EmulatorServer(options)
    await srv.start()
    if variant == "loopdrain":
        import threading
        log = srv.log
        log._interval, log._wake = 1e9, threading.Event()   # the writer thread sleeps until close()
        loop = asyncio.get_running_loop()
        chunk = int(os.environ.get("CHUNK", "256"))

        def tick() -> None:
            queue, out = log._queue, log._out
            n = min(len(queue), chunk)
            if n and out is not None:
                out.write("".join([queue.popleft() for _ in range(n)]).encode())   # lines: made by append
            if queue:
                loop.call_soon(tick)
            else:
                if out is not None:
                    out.flush()
                loop.call_later(0.05, tick)
        loop.call_later(0.05, tick)
    if variant == "gcfreeze":
        gc.freeze()
    await _run(srv.port, port_file, srv.stop)


async def _run(port: int, port_file: str, stop_server: Any) -> None:
    import bare
    await bare.until_signalled(port, port_file)
    await stop_server()


def _start(variant: str, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = tmp / f"{variant}-{time.monotonic_ns()}.port"
    log = tmp / f"{variant}-{time.monotonic_ns()}.jsonl"
    if variant == "bare":
        cmd = [sys.executable, str(ROOT / "benchmarks" / "bare.py"), "serve", "--port-file", str(port_file)]
    elif variant == "cli":
        cmd = [sys.executable, "-m", "callstate", "serve", "--port", "0", "--port-file", str(port_file),
               "--log-file", str(log), "--max-concurrent-streams", "0"]
    elif variant.startswith("base-"):   # the same variant from another tree (BASE_TREE: a copy laid out as installed)
        cmd = [sys.executable, os.path.join(os.environ["BASE_TREE"], "benchmarks", "attribute.py"), "serve",
               variant[5:], "--port-file", str(port_file), "--log-file", str(log)]
    else:
        cmd = [sys.executable, __file__, "serve", variant, "--port-file", str(port_file), "--log-file", str(log)]
    if os.environ.get("PIN"):
        cmd = ["taskset", "-c", "1", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 20
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{variant} server did not start")
        time.sleep(0.02)
    proc.log = log   # type: ignore[attr-defined]
    return proc, f"127.0.0.1:{port_file.read_text().strip()}"


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _threads(pid: int) -> dict[int, float]:
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        out[-int(task.name)] = int(fields[12]) / os.sysconf("SC_CLK_TCK")   # its system time
    return out


def _drive(driver: str, target: str, concurrency: int, duration: float, tmp: Path) -> dict[str, float]:
    """One driver run against `target`: {"calls", "seconds"}. python: bare.py's client (one
    channel, the id as metadata); k6 / k6-noid: k6 with `concurrency` VUs (a connection each),
    the id as metadata / none (the server makes one and sends it in the response headers)."""
    pin = ["taskset", "-c", "0"] if os.environ.get("PIN") else []
    if driver == "python":
        out = subprocess.run(pin + [sys.executable, str(ROOT / "benchmarks" / "bare.py"), "drive", "--target", target,
                                    "--concurrency", str(concurrency), "--duration", str(duration)],
                             capture_output=True, text=True, timeout=duration + 60, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    from run import K6_SCRIPT, k6_binary
    summary = tmp / f"k6-{time.monotonic_ns()}.json"
    subprocess.run(pin + [k6_binary(), "run", "--quiet", "--no-color", "-e", f"TARGET={target}",
                          "-e", f"CALL_ID={int(driver == 'k6')}", "-e", f"PROTO_DIR={ROOT / 'protos'}",
                          "--vus", str(concurrency), "--duration", f"{duration:g}s", "--summary-export", str(summary),
                          str(K6_SCRIPT)], capture_output=True, text=True, timeout=duration + 120, check=True, cwd=ROOT)
    iterations = json.loads(summary.read_text())["metrics"]["iterations"]
    return {"calls": iterations["count"], "seconds": iterations["count"] / iterations["rate"]}


def _server_figures(log: str, calls: float, handler: list[float], gcs: list[float]) -> None:
    """What a server wrote beside its log at exit: TIMED=1's handler time per call, GCSTAT=1's
    garbage collection (all generations, its callback's thread time) per call."""
    timed = Path(log + ".timed")
    if timed.exists():
        handler.append(float(timed.read_text().split()[0]))
    collected = Path(log + ".gc")
    if collected.exists():
        ms = sum(float(part.split()[-2]) for part in collected.read_text().split(";")[0].split(","))
        gcs.append(round(ms / calls * 1000, 2))


def run(variants: list[str], rounds: int, duration: float, concurrency: int, driver: str = "python") -> None:
    kinds = ["bare", *variants]
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    rate: dict[str, list[float]] = {k: [] for k in kinds}
    threads: dict[str, list[dict[int, int]]] = {k: [] for k in kinds}
    handler: dict[str, list[float]] = {k: [] for k in kinds}
    gcs: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for kind in kinds:
                proc, target = _start(kind, Path(tmp))
                try:
                    c0 = _cpu(proc.pid)
                    t0 = _threads(proc.pid)
                    res = _drive(driver, target, concurrency, duration, Path(tmp))
                    c1 = _cpu(proc.pid)
                    t1 = _threads(proc.pid)
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)
                # bare.py's warm-up (0.5 s) is in the server's CPU: count its calls at the timed rate
                calls = res["calls"] * (1 + 0.5 / res["seconds"]) if driver == "python" else res["calls"]
                _server_figures(str(proc.log), calls, handler[kind], gcs[kind])   # type: ignore[attr-defined]
                cpu[kind].append((c1 - c0) / calls * 1e6)
                per = {(tid - proc.pid if tid > 0 else f"sys{-tid - proc.pid}"): round((t1[tid] - t0.get(tid, 0)) / calls * 1e6) for tid in t1}
                threads[kind].append({k: v for k, v in per.items() if v})
                rate[kind].append(res["calls"] / res["seconds"])
            print(f"round {r + 1}: " + ", ".join(f"{k} {cpu[k][-1]:.0f}us main {threads[k][-1].get(0)}" for k in kinds), flush=True)
    b_cpu, b_rate = statistics.median(cpu["bare"]), statistics.median(rate["bare"])
    print(f"{'bare':<12} cpu/call {b_cpu:7.1f} us  calls/s {b_rate:8.1f}")
    for k in variants:
        c, q = statistics.median(cpu[k]), statistics.median(rate[k])
        h = f"  handler {statistics.median(handler[k]):.1f} us {handler[k]}" if handler[k] else ""
        h += f"  gc {statistics.median(gcs[k]):.2f} us {gcs[k]}" if gcs[k] else ""
        print(f"{k:<12} cpu/call {c:7.1f} us (+{c - b_cpu:6.1f}, ratio {b_cpu / c:.3f})  "
              f"calls/s {q:8.1f} (ratio {q / b_rate:.3f})   {VARIANTS.get(k.removeprefix('base-'))}{h}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("variant", choices=list(VARIANTS))
    s.add_argument("--port-file", required=True)
    s.add_argument("--log-file", required=True)
    r = sub.add_parser("run")
    r.add_argument("--variants", default="callstate,nolog,noopts,onlyemu,barehandler,bareimports")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--duration", type=float, default=3.0)
    r.add_argument("--concurrency", type=int, default=64)
    r.add_argument("--driver", choices=("python", "k6", "k6-noid"), default="python",
                   help="what drives the servers: bare.py's client, or k6 sending the call id / none")
    opts = parser.parse_args()
    if opts.cmd == "serve":
        if opts.variant in ("uvloop", "bareuvloop"):
            import uvloop
            uvloop.install()
        asyncio.run(_serve_variant(opts.variant, opts.port_file, opts.log_file))
    else:
        run(opts.variants.split(","), opts.rounds, opts.duration, opts.concurrency, opts.driver)


if __name__ == "__main__":
    main()
