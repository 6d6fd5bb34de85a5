"""What the asyncio client's cancel-all costs per call, measured in CPU time (which a shared
machine's load inflates far less than the wall time `run.py held` reads).

    python benchmarks/cancel_cost.py fake --calls 10000 --rounds 5
    python benchmarks/cancel_cost.py held --calls 5000 --rounds 6 --pin

fake   no gRPC: AsyncCalls on a stand-in RPC, each cancelled (abortive), awaited (CallError 1818)
       and its log written; CPU per call with no log (`none`), entries kept in a list (`sink`: made,
       never formatted) and a StateLog writing a file (`file`, counted until its close()).
held   `callstate serve --no-state-log` holding the calls (on CPU 1 with --pin, this process on
       CPU 0): each variant starts --calls held calls, then cancels them all, awaits each and
       closes its client. Prints wall and CPU (this process, every thread) per call from the
       first cancel to the client closed: `bare` (grpc.aio), `log` (the callstate client with
       its state log), `lazy` (the same log, its writer woken only by close()), `nolog`.

Run it from two copies of the tree, alternating, to compare code (docs/performance.md, session 35).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import run as R  # noqa: E402   benchmarks/run.py: its servers and held calls

from callstate.client.aio import AsyncCall  # noqa: E402
from callstate.client.call_core import CallCore  # noqa: E402
from callstate.errors import CallError  # noqa: E402
from callstate.logfile import StateLog  # noqa: E402


class _Rpc:
    """A grpc.aio call's cancel() and cancelled(), nothing else."""

    _cancelled = False

    def cancel(self) -> bool:
        self._cancelled = True
        return True

    def cancelled(self) -> bool:
        return self._cancelled


class _Client:
    closed = False

    def __init__(self) -> None:
        self._live: set[Any] = set()

    def unusable(self) -> None:
        return None


def fake_round(n: int, mode: str, tmp: Path) -> float:
    """CPU µs per call to cancel, await and complete n started calls (and write their log)."""
    client = _Client()
    log: Any = StateLog(tmp / "fake.jsonl") if mode == "file" else R.ListLog() if mode == "sink" else None
    calls = []
    for i in range(n):
        call = AsyncCall.__new__(AsyncCall)
        CallCore.__init__(call, "%032x" % i, log, client=client)
        call._driver, call._starting, call._rpc = None, True, _Rpc()
        call.started()
        calls.append(call)
    if mode == "file":
        log.flush()   # the start's lines are not counted
    c0 = time.process_time()
    for call in calls:
        call.cancel()
    for call in calls:
        step = call.__await__()
        try:
            next(step)
        except (StopIteration, CallError):
            pass
    if mode == "file":
        log.close()
    return (time.process_time() - c0) / n * 1e6


async def held_round(variant: str, target: str, n: int, tmp: Path) -> dict[str, float]:
    path = tmp / f"held-{variant}.jsonl"
    path.unlink(missing_ok=True)
    log: Any = None if variant in ("bare", "nolog") else path
    if variant == "lazy":
        log = StateLog(path, flush_interval=3600)
    _, calls, cancel, wait_all = await R._hold_calls("bare" if variant == "bare" else "callstate", target, n, log)
    await R._wait_in_flight(target, n, 120)
    if isinstance(log, StateLog):
        log.flush()   # the start's lines are not counted
    c0, t0 = time.process_time(), time.perf_counter()
    for call in calls:
        cancel(call)
    await wait_all()   # each awaited, then the client closed (its log with it)
    if isinstance(log, StateLog):
        log.close()
    out = {"wall_us": (time.perf_counter() - t0) / n * 1e6, "cpu_us": (time.process_time() - c0) / n * 1e6}
    await R._wait_in_flight(target, 0, 60)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=("fake", "held"))
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", help="fake: none,sink,file; held: bare,log,lazy,nolog (the default: all)")
    parser.add_argument("--pin", action="store_true", help="held: the server on CPU 1, this process on CPU 0")
    args = parser.parse_args()
    default = "none,sink,file" if args.which == "fake" else "bare,log,lazy,nolog"
    variants = (args.variants or default).split(",")
    runs: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        if args.which == "fake":
            for _ in range(args.rounds):
                for v in variants:
                    runs[v].append(fake_round(args.calls, v, tmp))
            for v, cpu in runs.items():
                print(f"{v:<6} CPU per call {statistics.median(cpu):6.2f} us   rounds {[round(x, 1) for x in cpu]}")
            return 0
        if args.pin:
            R.SERVER_PREFIX[:] = ["taskset", "-c", "1"]
            os.sched_setaffinity(0, {0})
        srv = R.Server("callstate", tmp, "--max-hold", "600", "--no-state-log")
        held: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        try:
            for _ in range(args.rounds):   # alternating: the machine's noise falls on every variant alike
                for v in variants:
                    held[v].append(asyncio.run(held_round(v, srv.target, args.calls, tmp)))
        finally:
            srv.stop()
    for v, rs in held.items():
        print(f"{v:<6} per call: wall {statistics.median(r['wall_us'] for r in rs):6.1f} us, "
              f"CPU {statistics.median(r['cpu_us'] for r in rs):6.1f} us   CPU rounds {[round(r['cpu_us'], 1) for r in rs]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
