"""How `callstate check` scales with the length of a run: generate N calls' state logs (both
sides, as a load against a callstate server writes them) in a temporary folder, check them, and
print the checker's max RSS and seconds per N. Memory should stay about flat as N grows: the
checker holds the calls in flight and those that ended lately, not the whole run.

    python benchmarks/check_scale.py                    # 100k and 300k calls at 3,000 calls/s
    python benchmarks/check_scale.py --calls 10000 1000000 --rate 3000
    python benchmarks/check_scale.py --callstate /other/venv/bin/callstate   # another version, to compare

The calls follow the shapes (and shares) of a real `callstate load` run with the default mix:
completed, aborted, cancelled before or after the server saw them, cancels the server saw.
Needs GNU time (/usr/bin/time) for the max RSS.
"""

from __future__ import annotations

import argparse
import heapq
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Iterator

import orjson

C_END_OK = {"move": "completed", "code": 0, "grpc_status": "OK"}
CANCELLED = {"move": "completed", "code": 1818, "grpc_status": "CANCELLED", "detail": "cancelled by the caller"}
ABORTED = {"code": 4242, "grpc_status": "ABORTED", "detail": "aborted with 4242 APPLICATION_ERROR_4242"}
NON_ABORTIVE = "cancelled by the caller (non-abortive)"

# (share, client entries, server entries): (µs after the call's start, state, prev, event, fields)
SHAPES: list[tuple[int, list[tuple], list[tuple]]] = [
    (1211, [(0, "C", None, "enter", {"move": "call"}), (180, "WComp", "C", "enter", {"move": "started"}),
            (20200, "Comp", "WComp", "enter", {"move": "complete"}), (20210, "End", "Comp", "enter", C_END_OK)],
     [(16700, "D", None, "enter", {"move": "dispatch"}), (16720, "Comp", "D", "enter", {"move": "complete"}),
      (16725, "End", "Comp", "enter", {"move": "completed", "code": 0, "grpc_status": "OK"})]),
    (434, [(0, "C", None, "enter", {"move": "call"}), (60, "WComp", "C", "enter", {"move": "started"}),
           (30500, "Comp", "WComp", "enter", {"move": "complete"}),
           (30510, "End", "Comp", "enter", {"move": "completed", **ABORTED})],
     [(30200, "D", None, "enter", {"move": "dispatch"}), (30230, "A", "D", "enter", {"move": "abort", "detail": "code=4242"}),
      (30240, "End", "A", "enter", {"move": "aborted", **ABORTED})]),
    (411, [(0, "C", None, "enter", {"move": "call"}), (90, "WComp", "C", "enter", {"move": "started"}),
           (5500, "Can", "WComp", "enter", {"move": "cancel", "cancel": "abortive"}),
           (5520, "WComp", "Can", "enter", {"move": "cancel_issued"}),
           (5800, "Comp", "WComp", "enter", {"move": "complete"}), (5810, "End", "Comp", "enter", CANCELLED)], []),
    (236, [(0, "C", None, "enter", {"move": "call"}), (20, "Can", "C", "enter", {"move": "cancel", "cancel": "abortive"}),
           (30, "WComp", "Can", "enter", {"move": "cancel_issued", "detail": "before start"}),
           (50, "Comp", "WComp", "enter", {"move": "complete"}),
           (60, "End", "Comp", "enter", {**CANCELLED, "detail": "cancelled before start"})], []),
    (250, [(0, "C", None, "enter", {"move": "call"}), (60, "WComp", "C", "enter", {"move": "started"}),
           (90, "Can", "WComp", "enter", {"move": "cancel", "cancel": "non-abortive"}),
           (100, "WComp", "Can", "enter", {"move": "cancel_issued"}),
           (11300, "WComp", "WComp", "cancel_sent", {"detail": "delivered: kept for the dispatch"}),
           (42100, "Comp", "WComp", "enter", {"move": "complete"}),
           (42110, "End", "Comp", "enter", {**CANCELLED, "detail": NON_ABORTIVE})],
     [(34600, "D", None, "enter", {"move": "dispatch"}), (34610, "D", "D", "cancel_seen", {"cancel": "non-abortive"}),
      (34630, "A", "D", "enter", {"move": "abort", "detail": "code=1818"}),
      (34635, "End", "A", "enter", {"move": "aborted", "code": 1818, "grpc_status": "CANCELLED", "detail": NON_ABORTIVE})]),
    (71, [(0, "C", None, "enter", {"move": "call"}), (60, "WComp", "C", "enter", {"move": "started"}),
          (5500, "Can", "WComp", "enter", {"move": "cancel", "cancel": "non-abortive"}),
          (5520, "WComp", "Can", "enter", {"move": "cancel_issued"}),
          (12200, "WComp", "WComp", "cancel_sent", {"detail": "delivered: kept for the dispatch"}),
          (13500, "Comp", "WComp", "enter", {"move": "complete"}), (13520, "End", "Comp", "enter", C_END_OK)],
     [(11500, "D", None, "enter", {"move": "dispatch"}), (11510, "D", "D", "cancel_seen", {"cancel": "non-abortive"}),
      (11550, "Comp", "D", "enter", {"move": "complete"}),
      (11555, "End", "Comp", "enter", {"move": "completed", "code": 0, "grpc_status": "OK"})]),
]


def _ts(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1e6) % 1_000_000:06d}Z"


def _deck() -> list[int]:
    """The shapes in their shares, shuffled the same way every time (a fixed stride)."""
    deck = [i for i, (share, _, _) in enumerate(SHAPES) for _ in range(share)]
    return [deck[(k * 7919) % len(deck)] for k in range(len(deck))]


def _lines(call_id: str, start: float, side: str, entries: list[tuple]) -> Iterator[tuple[float, bytes]]:
    for us, state, prev, event, fields in entries:
        t = start + us / 1e6
        yield t, orjson.dumps({"ts": _ts(t), "side": side, "call_id": call_id, "state": state, "prev": prev,
                               "event": event, **fields}) + b"\n"


def generate(folder: Path, calls: int, rate: float, t0: float = 1_780_000_000.0) -> tuple[Path, Path]:
    """N calls started at `rate` a second: client.jsonl and server.jsonl, each in time order."""
    deck = _deck()
    paths = folder / "client.jsonl", folder / "server.jsonl"
    with open(paths[0], "wb") as cli, open(paths[1], "wb") as srv:
        pending: list[list[tuple[float, bytes]]] = [[], []]
        for i in range(calls):
            start = t0 + i / rate
            _, client, server = SHAPES[deck[i % len(deck)]]
            for heap, side, entries in ((pending[0], "client", client), (pending[1], "server", server)):
                for item in _lines(f"{i:032x}", start, side, entries):
                    heapq.heappush(heap, item)
            _flush(cli, pending[0], start)
            _flush(srv, pending[1], start)
        _flush(cli, pending[0], float("inf"))
        _flush(srv, pending[1], float("inf"))
    return paths


def _flush(out: IO[bytes], heap: list[tuple[float, bytes]], before: float) -> None:
    """Write the lines earlier than `before` (no later call has an entry before its start)."""
    while heap and heap[0][0] < before:
        out.write(heapq.heappop(heap)[1])


def measure(callstate: str, logs: tuple[Path, Path]) -> tuple[float, float, int, int]:
    """(seconds, CPU seconds, max RSS in KB, exit status) of `callstate check` on the logs (CPU
    seconds: what a busy machine changes least)."""
    proc = subprocess.run(["/usr/bin/time", "-v", callstate, "check", *map(str, logs)],
                          capture_output=True, text=True)
    figures = {name: re.search(pattern, proc.stderr) for name, pattern in (
        ("rss", r"Maximum resident set size \(kbytes\): (\d+)"), ("user", r"User time \(seconds\): ([\d.]+)"),
        ("sys", r"System time \(seconds\): ([\d.]+)"),
        ("wall", r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)"))}
    if not all(figures.values()):
        raise SystemExit(f"check_scale: no figures from /usr/bin/time -v: {proc.stderr[-500:]}")
    wall = figures["wall"]
    assert wall is not None
    seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
    cpu = sum(float(figures[k].group(1)) for k in ("user", "sys"))   # type: ignore[union-attr]
    return seconds, cpu, int(figures["rss"].group(1)), proc.returncode   # type: ignore[union-attr]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, nargs="+", default=[100_000, 300_000], metavar="N")
    ap.add_argument("--rate", type=float, default=3000.0, help="calls started a second (default: %(default)s)")
    ap.add_argument("--callstate", default=shutil.which("callstate") or "callstate",
                    help="the callstate command to measure (default: the one on PATH)")
    ap.add_argument("--keep", metavar="DIR", help="write the logs here and keep them (else a temporary folder)")
    args = ap.parse_args()
    if not Path("/usr/bin/time").exists():
        print("check_scale: needs GNU time at /usr/bin/time", file=sys.stderr)
        return 2
    print(f"{'calls':>10} {'lines':>10} {'MB':>8} {'seconds':>8} {'CPU s':>8} {'max RSS MB':>11} {'KB/call':>8}  exit")
    for n in args.calls:
        with tempfile.TemporaryDirectory(prefix="check_scale-") as tmp:
            folder = Path(args.keep or tmp) / str(n)
            folder.mkdir(parents=True, exist_ok=True)
            logs = generate(folder, n, args.rate)
            size = sum(os.path.getsize(p) for p in logs)
            lines = sum(sum(1 for _ in open(p, "rb")) for p in logs)
            seconds, cpu, rss_kb, status = measure(args.callstate, logs)
            print(f"{n:>10} {lines:>10} {size / 1e6:>8.1f} {seconds:>8.1f} {cpu:>8.1f} {rss_kb / 1024:>11.0f} "
                  f"{rss_kb * 1024 / n / 1000:>8.2f}  {status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
