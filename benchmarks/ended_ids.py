"""What remembering ended call ids costs the server per call (serve --max-retained-ids).

In-process, interleaved rounds, CPU time (time.process_time, so a busy machine's preemption is
not counted): a call's End remembered (`EndedIds.add`, steady state at 10,000 ends/s, so the
oldest ids are let go as new ones come) next to a no-op method call; the dispatch's check of a
fresh id (a miss) against the ended ids next to the journal lookup it replaced; the memory one
remembered id takes.

    python benchmarks/ended_ids.py
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from typing import Any

from callstate.server.ended_ids import DEFAULT_MAX_ENDED_IDS, EndedIds
from callstate.server.journal import Journal
from callstate.wire import new_call_id

N = 200_000
ROUNDS = 9
ENDS_PER_S = 10_000


class _NoOp:
    def add(self, call_id: str, t: float) -> None:
        return None


def add_round(memory: Any, ids: list[str], t: float) -> float:
    """CPU ns per End remembered."""
    start = time.process_time()
    for cid in ids:
        memory.add(cid, t)
        t += 1 / ENDS_PER_S
    return (time.process_time() - start) / len(ids) * 1e9


def lookup_round(journal: Journal, ids: list[str], new: bool) -> float:
    """CPU ns per fresh id of the dispatch's check: the ended ids (new) or the journal's record (before)."""
    start = time.process_time()
    if new:
        ended_at = journal.ended_ids.ended_at   # as the dispatcher holds it
        for cid in ids:
            ended_at(cid)
    else:
        for cid in ids:
            rec = journal.get(cid)
            if rec is not None:
                rec.final
    return (time.process_time() - start) / len(ids) * 1e9


def main() -> None:
    ids, fresh = [new_call_id() for _ in range(N)], [new_call_id() for _ in range(N)]
    for cid in ids + fresh:
        hash(cid)   # the server has hashed each id (its live-call table) before it looks it up or it ends
    memory, noop, t = EndedIds(60.0), _NoOp(), 1e9
    added, called = [], []
    for _ in range(ROUNDS):
        called.append(add_round(noop, ids, t))
        added.append(add_round(memory, ids, t))
        t += N / ENDS_PER_S
    print(f"an End remembered: {statistics.median(added):.0f} ns of CPU (a no-op method call: "
          f"{statistics.median(called):.0f} ns); {len(memory)} ids remembered ({ROUNDS} rounds of {N} ends)")

    journal = Journal(10_000)
    new, old = [], []
    for _ in range(ROUNDS):
        old.append(lookup_round(journal, fresh, False))
        new.append(lookup_round(journal, fresh, True))
    print(f"the dispatch's check of a fresh id: {statistics.median(new):.0f} ns (the journal lookup it replaced: "
          f"{statistics.median(old):.0f} ns)")

    tracemalloc.start()
    sized = EndedIds(1e9, DEFAULT_MAX_ENDED_IDS)
    t = time.time()
    for cid in ids:
        sized.add(cid, t + 0.0)   # a float of its own per id, as each End's time is
        t += 1e-6
    size = tracemalloc.get_traced_memory()[0]
    print(f"memory: {size / N:.0f} bytes per remembered id ({N} ids: {size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
