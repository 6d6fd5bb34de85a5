"""The data behind a run's HTML report, built from state logs (both sides, any number of files).

`callstate report LOG...` and `callstate load --html` both build it with `ReportBuilder`:
`report` feeds it the files, `load` feeds it both sides' entries as the run goes (and spools
them to disk). The builder runs the checker (the verdict is `callstate check`'s) and keeps
no entries: a small summary per call until the call has ended on both sides, then a few
numbers in arrays. At the end the full histories of one example call per violation kind,
the only entries the report shows, are read back from the files (`collect_examples`).
"""

from __future__ import annotations

import math
import time
from array import array
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from callstate import codes
from callstate.check import EXAMPLES_PER_KIND, KINDS, Checker, CheckReport, percentiles
from callstate.lifecycle import (CAN, CANCEL_SEEN, CLIENT, END, ENTER, SERVER, cancel_kind_of)
from callstate.statelog import Entry, format_ts, parse_ts
from callstate.logfile import feed_files

LATENCY_BINS = 40       # log-spaced histogram bins for latency and propagation
TIMELINE_BUCKETS = 120  # at most this many time buckets for the over-time chart
UNKNOWN_KIND = "unknown"
OTHER = "other"   # an example's entries whose side is neither (a bad entry)


def per_second(n: int, seconds: float) -> float:
    """A run's calls/s as its JSON report gives it: to 0.1 from 10/s, to three significant digits
    below (a slow run's 0.02 calls/s is not 0.0)."""
    if not seconds:
        return 0.0
    rate = n / seconds
    return round(rate, 1) if rate >= 10 else float(f"{rate:.3g}")


class CallSummary:
    """One call, both sides, as little as the report needs (no entries are kept)."""

    __slots__ = ("client_path", "server_path", "c_t0", "c_t1", "s_t0", "s_t1", "c_code", "s_code",
                 "cancel_t", "cancel_kind", "seen_t", "seen_kind")

    def __init__(self) -> None:
        self.client_path: list[str] = []
        self.server_path: list[str] = []
        self.c_t0 = self.c_t1 = self.s_t0 = self.s_t1 = None  # type: float | None
        self.c_code = self.s_code = None  # type: int | None
        self.cancel_t: float | None = None   # client: first Can
        self.cancel_kind: str | None = None
        self.seen_t: float | None = None     # server: first cancel_seen
        self.seen_kind: str | None = None

    def add(self, side: str, state: str, event: str, t: float, code: Any, cancel: Any, detail: Any) -> None:
        if side == CLIENT:
            if event == ENTER:
                self.client_path.append(state)
                self.c_t0 = t if self.c_t0 is None else self.c_t0
                if state == END:
                    self.c_t1, self.c_code = t, code if isinstance(code, int) else None
                elif state == CAN and self.cancel_t is None:
                    self.cancel_t, self.cancel_kind = t, cancel_kind_of(cancel, detail) or UNKNOWN_KIND
        elif side == SERVER:
            if event == ENTER:
                self.server_path.append(state)
                self.s_t0 = t if self.s_t0 is None else self.s_t0
                if state == END:
                    self.s_t1, self.s_code = t, code if isinstance(code, int) else None
            elif event == CANCEL_SEEN and self.seen_t is None:
                self.seen_t, self.seen_kind = t, cancel_kind_of(cancel, detail) or UNKNOWN_KIND

    # the call as one run sees it: the client's view when the client logged its End (or no side
    # did), else the server's; the checker's rule for a call's final code (`Checker._finish_call`)
    @property
    def span(self) -> tuple[float | None, float | None]:
        if self.c_t0 is not None and (self.c_t1 is not None or self.s_t1 is None):
            return self.c_t0, self.c_t1
        return self.s_t0, self.s_t1

    @property
    def final_code(self) -> int | None:
        return self.c_code if self.c_t1 is not None else self.s_code

    @property
    def cancel(self) -> tuple[float | None, str | None]:
        if self.cancel_t is not None:
            return self.cancel_t, self.cancel_kind
        return self.seen_t, self.seen_kind


def _entry_time(e: Mapping[str, Any]) -> float | None:
    ts = e.get("ts")
    if isinstance(ts, float):
        return ts
    try:
        return parse_ts(ts) if isinstance(ts, str) else None
    except ValueError:
        return None


def _log_edges(values: Iterable[float], bins: int = LATENCY_BINS) -> list[float]:
    """Log-spaced bin edges covering `values` (ms), so fast and slow calls share one axis."""
    vals = [v for v in values if v > 0]
    if not vals:
        return [0.001, 1.0]
    lo, hi = min(vals), max(vals)
    lo = max(10 ** (math.floor(math.log10(lo) * 4) / 4), 1e-3)   # a quarter decade below the fastest
    hi = max(hi * 1.0001, lo * 10)
    step = (math.log10(hi) - math.log10(lo)) / bins
    return [10 ** (math.log10(lo) + i * step) for i in range(bins + 1)]


def _histogram(values: Iterable[float], edges: Sequence[float]) -> list[int]:
    counts = [0] * (len(edges) - 1)
    lo, hi = math.log10(edges[0]), math.log10(edges[-1])
    width = (hi - lo) / len(counts)
    for v in values:
        i = 0 if v <= edges[0] else min(len(counts) - 1, int((math.log10(v) - lo) / width))
        counts[i] += 1
    return counts


def _nice_step(raw: float) -> float:
    """The smallest 1/2/5 x 10^n at or above `raw` (bucket widths people can read)."""
    if raw <= 0:
        return 0.001
    exp = 10 ** math.floor(math.log10(raw))
    return next(m * exp for m in (1, 2, 5, 10) if m * exp >= raw)


def _rounded(stats: Mapping[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}


class _Totals:
    """The calls already summed up: per call only a few floats in arrays, paths as counts."""

    def __init__(self) -> None:
        self.latency: dict[int, array[float]] = defaultdict(lambda: array("d"))
        self.client_paths: Counter[str] = Counter()
        self.server_paths: Counter[str] = Counter()
        self.starts: array[float] = array("d")
        self.ends: array[float] = array("d")      # NaN: the call never ended
        self.cancels: dict[str, array[float]] = defaultdict(lambda: array("d"))

    def add(self, c: CallSummary) -> None:
        if c.client_path:
            self.client_paths[" → ".join(c.client_path)] += 1
        if c.server_path:
            self.server_paths[" → ".join(c.server_path)] += 1
        t0, t1 = c.span
        code = c.final_code
        if t0 is not None:
            self.starts.append(t0)
            self.ends.append(math.nan if t1 is None else t1)
            if t1 is not None and code is not None:
                self.latency[code].append((t1 - t0) * 1000)
        ct, kind = c.cancel
        if ct is not None:
            self.cancels[kind or UNKNOWN_KIND].append(ct)


_SUMMED = CallSummary()   # stands for a call already in the totals (an entry after both Ends adds nothing)


class ReportBuilder:
    """Feed entries (dicts in the state-log format, or `Entry`), then `finish()` and `build()`;
    the checker runs alongside."""

    def __init__(self) -> None:
        self.checker = Checker()
        self.calls: dict[str, CallSummary] = {}   # calls not yet ended on both sides, or _SUMMED
        self.totals = _Totals()
        self.check: CheckReport | None = None

    def _call(self, call_id: str) -> CallSummary:
        c = self.calls.get(call_id)
        if c is None:
            c = self.calls[call_id] = CallSummary()
        return c

    def _sum_up_if_ended(self, call_id: str, c: CallSummary) -> None:
        if c.c_t1 is not None and c.s_t1 is not None and c is not _SUMMED:
            self.totals.add(c)
            self.calls[call_id] = _SUMMED

    def add(self, e: Mapping[str, Any], where: str = "") -> None:
        self.checker.add(e, where)
        call_id, t = e.get("call_id"), _entry_time(e)
        if isinstance(call_id, str) and t is not None and (c := self._call(call_id)) is not _SUMMED:
            c.add(e.get("side"), e.get("state"), e.get("event"), t,  # type: ignore[arg-type]
                  e.get("code"), e.get("cancel"), e.get("detail"))
            self._sum_up_if_ended(call_id, c)

    def add_entry(self, e: Entry) -> None:
        """One entry as recorded in memory (`callstate load` feeds its client's entries live)."""
        self.checker.add_entry(e)
        c = self._call(e.call_id)
        if c is not _SUMMED:
            c.add(e.side, e.state, e.event, e.t, e.code, e.cancel, e.detail)
            self._sum_up_if_ended(e.call_id, c)

    def finish(self, server_in_flight: int | None = None, server_lost: str = "") -> CheckReport:
        """Run the checker's end-of-run rules (once); the verdict names the example calls to read back."""
        if self.check is None:
            self.check = self.checker.finish(server_in_flight=server_in_flight, server_lost=server_lost)
        return self.check

    def example_ids(self) -> set[str]:
        """One call id per violation kind (the first one naming a call), whose histories the report shows."""
        seen: dict[str, str] = {}
        for v in self.finish().violations:
            if v.kind not in seen and v.call_id in self.checker.tracks:
                seen[v.kind] = v.call_id
        return set(seen.values())

    def build(self, examples: Mapping[str, Mapping[str, list[dict[str, Any]]]] | None = None, *,
              run: Mapping[str, Any] | None = None, title: str = "callstate run",
              allow_one_side: bool = False) -> dict[str, Any]:
        """The report as a JSON-able dict. `examples` maps call ids to their entries by side
        (`collect_examples` of `example_ids`); `run` is `callstate load`'s own summary."""
        check = self.finish()
        totals = self.totals
        for call_id, c in self.calls.items():   # calls that did not end on both sides (or had one side)
            if c is not _SUMMED:
                totals.add(c)
                self.calls[call_id] = _SUMMED
        lat_by_code = totals.latency
        client_paths, server_paths = totals.client_paths, totals.server_paths
        edges = _log_edges(x for v in lat_by_code.values() for x in v)
        by_code = [{"code": code, "name": codes.name(code), "describe": codes.describe(code), "count": len(v),
                    "latency_ms": _rounded(percentiles(v)), "hist": _histogram(v, edges)}
                   for code, v in sorted(lat_by_code.items())]
        prop = check.cancel_propagation_ms
        prop_edges = _log_edges(prop)
        report: dict[str, Any] = {
            "title": title,
            "generated": format_ts(time.time()),
            "files": list(check.files),
            "run": dict(run) if run else None,
            "calls": check.calls,
            "entries": check.entries,
            "by_side": dict(sorted(check.by_side.items())),
            "bad_entries": check.bad_entries,   # entries of no known side: with by_side they add up to entries
            "ended": sum(row["count"] for row in by_code),
            "latency_edges_ms": [round(x, 4) for x in edges],
            "by_code": by_code,
            "timeline": _timeline(totals.starts, totals.ends, totals.cancels),
            "propagation": {"ms": _rounded(percentiles(prop)), "edges_ms": [round(x, 4) for x in prop_edges],
                            "hist": _histogram(prop, prop_edges),
                            # handlers that poll for cancels, apart: their figure includes the wait for the poll
                            "polled_ms": _rounded(percentiles(check.cancel_propagation_polled_ms)),
                            "poll_wait_ms": _rounded(percentiles(check.cancel_poll_wait_ms))},
            "paths": {CLIENT: client_paths.most_common(), SERVER: server_paths.most_common()},
            "check": _check_section(check, examples or {}, allow_one_side, run),
            "server_only": check.server_only,   # calls no client log given has: their client side unchecked
            "warnings": list(check.warnings),   # reading the logs: a last line cut short, skipped
        }
        return report


def _timeline(starts: Sequence[float], ends: Sequence[float], cancels: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """Calls in flight at each time bucket's end and the most at once within it, calls ended
    and cancels in each bucket (at most TIMELINE_BUCKETS buckets of a 1/2/5 x 10^n width).
    `ends` holds NaN for a call that never ended."""
    if not starts:
        return {"t0": None, "bucket_s": 0, "in_flight": [], "in_flight_peak": [], "ended": [], "cancels": {}}
    # an End earlier than its call's first state (a wall clock stepped back; `time_order`, which the
    # check reports) is drawn at that first state: a bucket before the first call's is out of range
    ends = [end if math.isnan(end) else max(end, start) for start, end in zip(starts, ends)]
    t0 = min(starts)
    t_end = max(max(starts), max((t for t in ends if not math.isnan(t)), default=t0))
    width = _nice_step(max(t_end - t0, 1e-3) / TIMELINE_BUCKETS)
    n = int((t_end - t0) / width) + 1
    delta, ended = [0] * (n + 1), [0] * n
    for start, end in zip(starts, ends):
        delta[int((start - t0) / width)] += 1
        if not math.isnan(end):   # in flight at a bucket's end: started by then and not yet ended
            i = int((end - t0) / width)
            delta[i] -= 1
            ended[i] += 1
    in_flight, running = [], 0
    for i in range(n):
        running += delta[i]
        in_flight.append(running)
    by_kind = {}
    for kind, times in sorted(cancels.items()):
        row = by_kind[kind] = [0] * n
        for t in times:
            row[min(n - 1, max(0, int((t - t0) / width)))] += 1
    return {"t0": format_ts(t0), "bucket_s": width, "in_flight": in_flight,
            "in_flight_peak": _peaks(starts, ends, t0, width, n), "ended": ended, "cancels": by_kind}


def _peaks(starts: Sequence[float], ends: Sequence[float], t0: float, width: float, n: int) -> list[int]:
    """The most calls in flight at once within each bucket: a burst between two bucket ends shows
    (the count at a bucket's end misses it). At one instant, an End counts before a start."""
    events = sorted([(t, 1) for t in starts] + [(t, -1) for t in ends if not math.isnan(t)])
    peaks, running, j = [], 0, 0
    for i in range(n):
        peak = running   # the calls in flight as the bucket begins
        while j < len(events) and int((events[j][0] - t0) / width) <= i:
            running += events[j][1]
            peak = max(peak, running)
            j += 1
        peaks.append(peak)
    return peaks


def _check_section(check: CheckReport, examples: Mapping[str, Mapping[str, list[dict[str, Any]]]],
                   allow_one_side: bool = False, run: Mapping[str, Any] | None = None) -> dict[str, Any]:
    kinds = []
    for kind, vs in sorted(check.by_kind().items()):
        example = next((v for v in vs if v.call_id in examples), None)
        kinds.append({
            "kind": kind, "meaning": KINDS.get(kind, ""), "count": len(vs),
            "examples": [v.example() for v in vs[:EXAMPLES_PER_KIND]],
            "example": None if example is None else {
                **example.example(),
                CLIENT: examples[example.call_id].get(CLIENT, []),
                SERVER: examples[example.call_id].get(SERVER, []),
                # an entry of no known side (a bad_entry's own, often): shown apart, never dropped
                OTHER: examples[example.call_id].get(OTHER, [])},
        })
    not_judged = check.not_judged(allow_one_side)
    # as `callstate check` shows it: violations a log still being written explains are no FAILED
    verdict = _verdict(check.ok or check.shown_not_judged(allow_one_side) is not None, not_judged, run)
    # `ok` as `callstate check --json` has it: the verdict is OK (no violation, and something was judged)
    return {"ok": verdict["verdict"] == OK, "violations": len(check.violations), "kinds": kinds,
            "not_judged": not_judged, **verdict}


def _verdict(ok: bool, not_judged: str | None, run: Mapping[str, Any] | None) -> dict[str, Any]:
    """The page's verdict, the one the command gives: `verdict` (OK, FAILED or NOT JUDGED) and
    `why`. A `callstate load` run (`run`) is judged by the load's own check, which also fails a
    run with no violation that proved nothing (no call reached the server, entries dropped)."""
    run_check = (run or {}).get("check") or {}
    if not ok:
        return {"verdict": FAILED, "why": ""}
    if run_check.get("ok") is False:
        return {"verdict": FAILED, "why": run_check.get("note") or ""}
    if run_check.get("skipped"):
        return {"verdict": NOT_JUDGED, "why": "the run was not checked (--no-verify)"}
    if not_judged is not None:
        return {"verdict": NOT_JUDGED, "why": not_judged}
    return {"verdict": OK, "why": ""}


OK, FAILED, NOT_JUDGED = "OK", "FAILED", "NOT JUDGED"


def _unsaid(text: str) -> None:
    """A cut last line met again: it was told of on the first reading."""


def collect_examples(paths: Iterable[str | Path], ids: set[str]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every entry of the calls in `ids`, by call id and side, in the order the check read them
    (the files merged by time: a call split over a rotated log reads in its order)."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    if not ids:
        return out

    def keep(e: dict[str, Any], _where: str, _pos: int) -> None:
        if e.get("call_id") in ids:
            side = e.get("side") if e.get("side") in (CLIENT, SERVER) else OTHER
            out.setdefault(e["call_id"], {}).setdefault(side, []).append(e)

    feed_files(paths, Checker(), keep, _unsaid)
    return out


def build_from_files(paths: Sequence[str | Path], warn: Callable[[str], None] | None = None,
                     **build_args: Any) -> dict[str, Any]:
    """The report of any state logs: LogFormatError / OSError when one cannot be read. `warn`:
    told about a last line cut short, which is then skipped, as `callstate check` does (else
    it is an error)."""
    builder = ReportBuilder()
    # merged by time, as `callstate check` reads them: the same verdict in any order of the files
    # (a rotated client log named before its older part failed every call it split)
    mark_live = feed_files(paths, builder.checker, lambda e, where, _pos: builder.add(e, where), warn)
    mark_live(builder.finish(build_args.pop("server_in_flight", None), build_args.pop("server_lost", "")))
    return builder.build(collect_examples(paths, builder.example_ids()), **build_args)
