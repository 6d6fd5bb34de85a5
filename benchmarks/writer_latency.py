"""How long the state log keeps the event loop waiting: the lateness of a 1 ms timer on a loop that
records entries at a steady rate while a `StateLog` writes them to /dev/null, against the same loop
recording nothing (what bare grpc.aio's loop has), and the CPU per entry.

    python benchmarks/writer_latency.py                          # 6,000 and 20,000 entries/s
    python benchmarks/writer_latency.py --rates 20000 --batches 512,128,1 --rounds 5

The loop makes the lines of the entries it appended, `BATCH` at a time (callstate/logfile.py;
batch 1: each line as its entry is appended): a timer that falls due while a run is made waits
for it. The writer thread joins the runs and writes them, letting go of the GIL for the write.
Each variant runs in a process of its own, rounds alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


async def _measure(batch: int, rate: int, seconds: float) -> dict[str, float]:
    import callstate.logfile as logfile
    from callstate.statelog import new_entry

    logfile.BATCH = batch or logfile.BATCH
    log = logfile.StateLog(open(os.devnull, "wb")) if batch else None
    sink = log.sink if log is not None else (lambda entry: None)
    per_ms, late, n = rate // 1000, [], 0
    cpu0, end = time.process_time(), time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        await asyncio.sleep(0.001)
        late.append(time.monotonic() - t0 - 0.001)
        for _ in range(per_ms):   # a server's Comp line, one call id each
            n += 1
            sink(new_entry((time.time(), "server", f"{n:032x}", "Comp", "D", "enter", "completed",
                            None, None, None, None, None, None, None, None, None)))
    if log is not None:
        log.close()
    late.sort()
    return {"p50": late[len(late) // 2] * 1e3, "p99": late[int(len(late) * 0.99)] * 1e3,
            "p999": late[int(len(late) * 0.999)] * 1e3, "cpu_us": (time.process_time() - cpu0) * 1e6 / max(n, 1)}


def _child(batch: int, rate: int, seconds: float) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", f"{batch},{rate},{seconds}"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="6000,20000", help="entries per second, comma-separated (default: %(default)s)")
    p.add_argument("--batches", default="128,1",
                   help="BATCH values to compare, comma-separated (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians printed (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of each round (default: %(default)s)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.child:
        batch, rate, seconds = opts.child.split(",")
        print(json.dumps(asyncio.run(_measure(int(batch), int(rate), float(seconds)))))
        return 0
    sys.path.insert(0, str(ROOT))
    from callstate.logfile import BATCH

    batches = [0] + [int(c) for c in opts.batches.split(",")]   # 0: no log at all (bare's loop)
    print(f"loop lateness of a 1 ms timer, ms (median of {opts.rounds} rounds of {opts.seconds:g} s); "
          f"BATCH is {BATCH} in this tree")
    for rate in (int(r) for r in opts.rates.split(",")):
        runs: dict[int, list[dict[str, float]]] = {c: [] for c in batches}
        for _ in range(opts.rounds):
            for batch in batches:
                runs[batch].append(_child(batch, rate, opts.seconds))
        base = statistics.median(r["p99"] for r in runs[0])
        for batch in batches:
            med = {k: statistics.median(r[k] for r in runs[batch]) for k in ("p50", "p99", "p999", "cpu_us")}
            name = "no log" if not batch else f"batch {batch}"
            print(f"  {rate:6d} entries/s  {name:9s}  p50 {med['p50']:.3f}  p99 {med['p99']:.3f} "
                  f"({med['p99'] / base:.2f}x no log)  p99.9 {med['p999']:.3f}  CPU {med['cpu_us']:.2f} us/entry")
    return 0


if __name__ == "__main__":
    sys.exit(main())
