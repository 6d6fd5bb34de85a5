"""`callstate load`: hammer the cancellation paths and prove every call ended legally.

Each call draws an outcome (complete/abort/fatal/hold), whether and how it is
cancelled (abortive or non-abortive) and at which point (before start, right
after start, after a fixed or random delay, while held). While it runs, the
server's journal is followed (Journal/Follow), and both sides' entries are fed
to the same checker as `callstate check`: at the end the run's invariants are
verified, including the server's in-flight count back at zero.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, TextIO

import grpc
import orjson

from callstate import codes
from callstate.check import Checker, CheckReport, counted, percentiles
from callstate.propagation import figures_text, polled_text
from callstate.cli.options import DEFAULT_TARGET
from callstate.client import AsyncClient, CallError
from callstate.cli.live.stats import LiveStats, rate_text
from callstate.cli.live.view import LiveView
from callstate.cli.report.run_report import ReportBuilder, collect_examples, per_second
from callstate.cli.terminal import open_state_log
from callstate.client.channel import ChannelSettings
from callstate.client.pipe_drive import drive_pipe
from callstate.client.unary_drive import PlanScripts, drive_call
from callstate.cancel_points import BEFORE_START
from callstate.lifecycle import (ABORTIVE, CAN, CANCEL_SEEN, CLIENT, DISPATCH, ENTER, END, NON_ABORTIVE, PIPE_INITIAL_MOVE,
                                 LifecycleError,
                                 SERVER, C)
from callstate.scenario import Plan, Scenario, pipe_cancel, pipe_script
from callstate.statelog import Entry, parse_ts, parse_ts_or, proto_to_dict
from callstate.logfile import StateLog
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc

_DISPATCH_MOVES = frozenset({DISPATCH, *PIPE_INITIAL_MOVE[SERVER].values()})
NO_SCRIPT = "no-script"   # the path of a call sent with no script (--no-script): its outcome is the server's
HOLD_FOR = "hold-for"     # the path of a held call the generator ended itself (not a cancel asked for)
STOP_CANCEL = "cancel-at-stop"   # the path of a call in flight a second SIGINT/SIGTERM cancelled
_STOP_SIGNALS = frozenset({signal.SIGINT.name, signal.SIGTERM.name})
# --duration is up and calls are still in flight this much later (held, slow, or a stalled
# server): the run says what it waits for, and the first SIGINT/SIGTERM cancels them
DURATION_TAIL_S = 1.0
# the server still runs calls of ours this long after the client ended them all (it ignored their
# cancels, or is slow): the run says it waits for them (--settle), not to look hung
SETTLE_NOTICE_S = 1.0


# Calls in flight per channel when --channels is not given: a server refuses streams over its
# --max-concurrent-streams (4096 by default) on one connection (HTTP/2 REFUSED_STREAM, 1722 at
# the caller, measured with 6,000 held calls on one channel), so a load spreads them, with room.
STREAMS_PER_CHANNEL = 2_000
# An open loop's calls in flight are bounded by --max-in-flight and by how long a call can last:
# the server's default --max-hold ends every call within 30 s.
LONGEST_CALL_S = 30.0


def channels_for(concurrency: int, rate: float | None, max_in_flight: int) -> int:
    """The channels a load opens by default: one per STREAMS_PER_CHANNEL calls it can have in flight."""
    in_flight = concurrency if not rate else min(max_in_flight, rate * LONGEST_CALL_S)
    return max(1, math.ceil(in_flight / STREAMS_PER_CHANNEL))


@dataclass
class LoadConfig:
    target: str = DEFAULT_TARGET
    calls: int | None = None
    duration: float | None = None
    concurrency: int = 32
    rate: float | None = None
    channels: int = 1
    scenario: Scenario = field(default_factory=Scenario)
    delay: float = 0.0
    payload: int = 0
    seed: int | None = None
    log_file: str | None = None
    verify: bool = True
    max_in_flight: int = 10_000
    settle: float = 15.0        # how long to wait for the server to end every call after the run
    timeout: float | None = None   # per-call gRPC deadline
    view: str = ""              # live.view.LIVE, LINES, or "" for no live view
    collect_report: bool = False   # keep what the HTML report needs (`html_report`)
    metrics_port: int | None = None   # serve the client side's Prometheus /metrics (callstate[metrics])
    metrics_bind: str = "127.0.0.1"
    tracing: Any = False              # an OpenTelemetry TracerProvider: a span per call (callstate[otel])
    settings: ChannelSettings = field(default_factory=ChannelSettings)   # TLS, token, keepalive
    drive: Any = None   # --method: any service's method and its requests (cli/method_options.Drive)
    no_script: bool = False   # --method --no-script: no script header, the server decides each outcome


# Without the HTML report the run's checker retires each call some seconds after both sides
# ended (see Checker), so a soak's memory follows the calls in flight, not its length. The
# server's entries come later than the client's (the journal stream): they may trail by this much.
STREAM_LAG_S = 5.0
ADVANCE_EVERY_S = 0.5   # between two looks at what can be retired (the log time a call's End is due by)


class _Sink:
    """Client entries go straight to the checker (through the report builder when there is
    one), to a log file when asked, and to the live view."""

    enabled = True

    def __init__(self, checker: Checker | None, log: StateLog | None, builder: ReportBuilder | None = None,
                 spool: StateLog | None = None, live: LiveStats | None = None) -> None:
        self._checker, self._log, self._builder, self._spool, self._live = checker, log, builder, spool, live
        self._next_advance = -math.inf
        self.server_time = -math.inf   # the time of the latest server entry the journal stream brought

    def append(self, e: Entry) -> None:
        if self._builder is not None:
            self._builder.add_entry(e)
        elif self._checker is not None:
            if e.t >= self._next_advance:   # the calls ended long enough ago are judged and let go
                # only as far as the server's stream has come: a stream that lags keeps its calls
                self._checker.advance(min(e.t, self.server_time) - STREAM_LAG_S, e.t)
                self._next_advance = e.t + ADVANCE_EVERY_S
            self._checker.add_entry(e)
        if self._log is not None:
            self._log.append(e)
        if self._spool is not None:
            self._spool.append(e)
        if self._live is not None:
            self._live.entry(e.side, e.call_id, e.state, e.event, e.t, e.code, e.cancel, e.detail)


class LoadRun:
    def __init__(self, config: LoadConfig, out: TextIO | None = None) -> None:
        self.cfg = config
        self.out = out if out is not None else sys.stderr   # the stderr of the run, not of this module's import
        self.rng = random.Random(config.seed)   # the plans, drawn in the order the calls start
        # the cancel delays, drawn as each call starts: with an open loop the starts interleave
        # with the next plans' draws as the event loop runs them, so one stream would make the
        # plans of a --seed depend on timing
        self.delay_rng = random.Random(None if config.seed is None else f"{config.seed}-cancel-delays")
        # The HTML report's builder checks as it goes: with it, its checker is the run's checker.
        self.builder = ReportBuilder() if config.collect_report else None
        self.checker = (self.builder.checker if self.builder else Checker(retire=True)) if config.verify else None
        self.log = open_state_log(config.log_file) if config.log_file else None
        # Both sides' entries are spooled to disk for the report (it reads back the few
        # example calls' histories at the end), so a long run keeps no entries in memory.
        self._spool_dir = tempfile.TemporaryDirectory(prefix="callstate-load-") if self.builder else None
        self._spool_paths: list[str] = []
        client_spool: StateLog | None = None
        self._server_spool: Any = None
        if self._spool_dir is not None:
            if config.log_file:
                self._spool_paths.append(config.log_file)
            else:
                self._spool_paths.append(os.path.join(self._spool_dir.name, "client.jsonl"))
                client_spool = StateLog(self._spool_paths[-1])
            if config.verify:
                self._spool_paths.append(os.path.join(self._spool_dir.name, "server.jsonl"))
                self._server_spool = open(self._spool_paths[-1], "wb")
        self._client_spool = client_spool
        self.live = (LiveStats(CLIENT, total=config.calls, duration=config.duration, owner_counts_cancels=True)
                     if config.view else None)
        self.sink: Any = _Sink(self.checker, self.log, self.builder, client_spool, self.live)
        self._entries = self.sink   # the sink itself, whatever observes it (--metrics wraps it)
        self.metrics: Any = None       # the /metrics endpoint (its .url), when metrics are on
        self.propagation: Any = None   # client Can -> server cancel_seen, for the metrics
        if config.metrics_port is not None:
            self._start_metrics()
        self.ids: set[str] = set()
        self.started = 0
        self.finished = 0
        self.in_flight = 0
        self.by_code: Counter[int] = Counter()
        self.latency: dict[int, list[float]] = defaultdict(list)
        self.paths: Counter[str] = Counter()
        self.skipped = 0
        self.attempted = 0        # calls that tried to go out (not cancelled in state C)
        self.start_failed = 0     # ... and were refused before leaving (C -> End)
        self.stream_dropped = 0   # entries our own journal stream lost (the server tells us on it)
        self._script = PlanScripts(config.scenario, config.delay, config.payload)
        self._our_server_ends = 0
        self._our_server_dispatches = 0
        self._barrier_id = ""
        self._barrier: asyncio.Future[None] | None = None
        self._t0 = 0.0
        self._stop_at = float("inf")
        self.interrupted = ""
        self._overrun = False   # --duration is up, calls still in flight: said, a signal cancels them
        self._stopped: asyncio.Event | None = None   # set by stop(): wakes the open loop's pause
        self._flying: dict[str, Any] = {}   # our calls and pipes in flight, by id: a second signal cancels them
        self._cut_ids: set[str] = set()     # ... those it cancelled
        self._view: LiveView | None = None
        self.settle_cut = ""      # the signal that ended the wait for the server (all our calls had ended)
        self._cut: asyncio.Event | None = None   # made when that wait starts, set by stop() during it
        self.server_lost = ""
        # --method: the requests, in turn; and why only the client side is judged, against a
        # server that is not callstate (no Journal to follow)
        self._requests = itertools.cycle(config.drive.requests) if config.drive is not None else None
        self.one_sided = ""

    def _start_metrics(self) -> None:
        from callstate.observe import ObservedLog
        from callstate.observe.metrics import Metrics, MetricsEndpoint

        metrics = Metrics()
        self.propagation = metrics.cancel_propagation()
        self.sink = ObservedLog(self.sink, [metrics.side(CLIENT).observe, self.propagation.client])
        self.metrics = MetricsEndpoint(metrics.registry, self.cfg.metrics_bind, self.cfg.metrics_port or 0)

    def stop(self, reason: str) -> None:
        """Start no more calls; the ones in flight finish and are checked as usual. Called again
        while some are in flight (a second SIGINT or SIGTERM), it cancels them, abortively: a
        held call would otherwise keep the run for its whole hold. Once all of ours have ended
        (the run waits for the server to end them too), it ends that wait: the check judges what
        the server had ended by then. The first reason is the one reported."""
        if self._cut is not None or (self.in_flight == 0 and not self._more()):
            self.settle_cut = reason
            if self._cut is not None:
                self._cut.set()
            return
        signalled = reason in _STOP_SIGNALS
        if self._overrun and signalled and not self.interrupted:   # nothing left to start: cut them at once
            self.interrupted = reason
        if self.interrupted:
            if signalled:   # not a lost server's stop: its calls end by themselves
                self._cancel_flying(reason)
            return
        self.interrupted = reason
        self._stop_at = 0.0
        if self._stopped is not None:
            self._stopped.set()   # an open loop waiting for its next call's time wakes now
        if self.in_flight:
            self._say(f"callstate load: {reason}: starting no more calls; waiting for the {counted(self.in_flight, 'call')} "
                      f"in flight to end (SIGINT or SIGTERM{' again' if signalled else ''} cancels them)")

    def _duration_overrun(self) -> None:
        """--duration was up DURATION_TAIL_S ago and calls are still in flight: the run outlasts
        it, so say why (without a word it looked hung) and let the next signal cancel them."""
        if self.in_flight and not self.interrupted:
            self._overrun = True
            self._say(f"callstate load: --duration {self.cfg.duration:g} s is up: starting no more calls; waiting for the "
                      f"{counted(self.in_flight, 'call')} still in flight to end (SIGINT or SIGTERM cancels them)")

    def _cancel_flying(self, reason: str) -> None:
        """Cancel our calls in flight that no cancel has reached yet (abortive: no waiting for the
        server's answer); they end, are counted and checked like any other."""
        cut = 0
        for call_id, call in list(self._flying.items()):
            if call.done() or CAN in call.history or call.state == C:
                continue
            try:
                call.cancel(abortive=True)
            except (CallError, LifecycleError):
                continue   # it ended meanwhile
            self._cut_ids.add(call_id)
            cut += 1
        self._say(f"callstate load: {reason}: cancelling the {counted(cut, 'call')} in flight")

    def _say(self, line: str) -> None:
        if self._view is not None:
            self._view.say(line)
        else:
            print(line, file=self.out, flush=True)

    async def _pause(self, seconds: float) -> None:
        """The open loop's wait for its next call: short ones slept, long ones (a slow --rate)
        cut short by stop(), so SIGINT/SIGTERM act at once at any rate."""
        if seconds < 0.05:
            await asyncio.sleep(seconds)
            return
        if self._stopped is None:
            self._stopped = asyncio.Event()
        try:
            await asyncio.wait_for(self._stopped.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    # -- planning -----------------------------------------------------------------------------
    def plan(self) -> Plan:
        return self.cfg.scenario.plan(self.rng)

    # -- one call ------------------------------------------------------------------------------
    def _claim(self) -> bool:
        """Count a call as started before it runs, so bounds hold however far behind the loop is."""
        if not self._more():
            return False
        self.started += 1
        self.in_flight += 1
        return True

    async def one(self, client: AsyncClient, plan: Plan, payload: bytes) -> None:
        """One call, already counted by `_claim`."""
        if plan.pipe is not None:
            return await self.one_pipe(client, plan)
        t0 = time.perf_counter()
        if self._requests is None:
            call = client.prepare(self._script(plan), payload=payload)
        else:
            script = None if self.cfg.no_script else self._script(plan)
            call = client.prepare(script, method=self.cfg.drive.method, request=next(self._requests))
        self.ids.add(call.call_id)
        self._flying[call.call_id] = call
        try:
            end = await drive_call(call, plan, self.delay_rng, escalate_after=self.cfg.scenario.escalate_after)
        finally:
            self.in_flight -= 1
            del self._flying[call.call_id]
            self._count_paths(plan, CAN in call.history, call.call_id)
        self.attempted += end.attempted
        self.start_failed += end.start_refused
        self._record(end.code, t0)

    def _outcome_path(self, plan: Plan) -> str:
        """The path a call's outcome is counted under: the plan's, or no-script (the server's)."""
        return NO_SCRIPT if self.cfg.no_script else plan.outcome

    def _count_paths(self, plan: Plan, cancelled: bool, call_id: str) -> None:
        self.paths[self._outcome_path(plan)] += 1
        if call_id in self._cut_ids:   # the stop's cancel, not the plan's
            self.paths[STOP_CANCEL] += 1
        elif plan.cancel and cancelled:   # a cancel drawn for a call that ended first is no path it took
            self._count_cancel(plan, plan.cancel, f"cancel-at-{plan.point.kind}")  # type: ignore[union-attr]

    def _count_cancel(self, plan: Plan, cancel: str, at: str) -> None:
        """A cancel the call or pipe took (it entered Can): its kind and point, or, for a held one
        not in the cancelled share, the generator's own end of it, counted apart (and not when
        the server's --max-hold ended it first: it never entered Can)."""
        if plan.ends_hold:
            self.paths[HOLD_FOR] += 1
        else:
            self.paths[f"cancel-{cancel}"] += 1
            self.paths[at] += 1

    def _record(self, code: int, t0: float) -> None:
        """One call ended with `code`, started at `t0`."""
        self.finished += 1
        self.by_code[code] += 1
        self.latency[code].append((time.perf_counter() - t0) * 1000)

    async def one_pipe(self, client: AsyncClient, plan: Plan) -> None:
        """One pipe call: each side pushes the scenario's messages; cancelled at a point counted
        in messages (a held pipe not in the cancelled share: abortively, after its headers)."""
        t0 = time.perf_counter()
        scenario = self.cfg.scenario
        self.paths[f"pipe-{plan.pipe}"] += 1
        self.paths[self._outcome_path(plan)] += 1
        point, cancel = pipe_cancel(plan)
        script = None if self.cfg.no_script else pipe_script(plan, scenario, self.cfg.payload, self.cfg.delay)
        request = None
        if self._requests is None:
            pipe = client.pipe(plan.pipe, script)
        else:   # a streaming method: its request opens an out pipe and is what in and both pipes push
            request = next(self._requests)
            pipe = client.pipe(plan.pipe, script, method=self.cfg.drive.method, request=request)
        self.ids.add(pipe.call_id)
        self._flying[pipe.call_id] = pipe
        try:
            await drive_pipe(pipe, messages=scenario.pipe_messages, message_bytes=self.cfg.payload,
                             cancel_at=point, abortive=cancel == ABORTIVE, escalate_after=scenario.escalate_after,
                             payload=request)
            code = codes.RPC_S_OK
        except CallError as err:
            code = err.code
        finally:
            self.in_flight -= 1
            del self._flying[pipe.call_id]
            if pipe.call_id in self._cut_ids:   # the stop's cancel, not the plan's
                self.paths[STOP_CANCEL] += 1
            elif point is not None and cancel is not None and CAN in pipe.history:   # as for calls
                self._count_cancel(plan, cancel, f"pipe-cancel-at-{point.kind}")
        # counted as calls are, so the verdict's "every call turned away" and "none could start" count pipes
        if point is None or point.kind != BEFORE_START:
            self.attempted += 1
            self.start_failed += pipe.history == [C, END]   # C -> End: refused before it left
        self._record(code, t0)

    # -- driving -------------------------------------------------------------------------------
    def _more(self) -> bool:
        if self.cfg.calls is not None and self.started >= self.cfg.calls:
            return False
        return time.perf_counter() < self._stop_at

    async def _closed_loop(self, clients: list[AsyncClient], payload: bytes) -> None:
        async def worker(i: int) -> None:
            client = clients[i % len(clients)]
            while self._claim():
                await self.one(client, self.plan(), payload)
        await asyncio.gather(*(worker(i) for i in range(self.cfg.concurrency)))

    async def _open_loop(self, clients: list[AsyncClient], payload: bytes) -> None:
        loop = asyncio.get_running_loop()
        assert self.cfg.rate
        interval = 1.0 / self.cfg.rate
        tasks: set[asyncio.Task[None]] = set()
        next_t = loop.time()
        n = 0
        while self._more():
            now = loop.time()
            if next_t > now:   # no later than --duration's end: a slow --rate does not outlast it
                await self._pause(min(next_t - now, max(0.0, self._stop_at - time.perf_counter())))
                if not self._more():
                    break
            next_t += interval
            if self.in_flight >= self.cfg.max_in_flight:
                self.skipped += 1   # the generator keeps its own bound: reported, never silent
                self.started += 1
                continue
            if not self._claim():
                break
            task = loop.create_task(self.one(clients[n % len(clients)], self.plan(), payload))
            n += 1
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    def _update_live(self) -> None:
        assert self.live is not None
        self.live.in_flight, self.live.skipped = self.in_flight, self.skipped
        # per call, as the paths line counts them: an escalated cancel once, under the kind asked
        # for, and the generator's own end of a held call apart, as hold-for
        self.live.cancels = Counter({kind: n for kind, n in ((ABORTIVE, self.paths[f"cancel-{ABORTIVE}"]),
                                                             (NON_ABORTIVE, self.paths[f"cancel-{NON_ABORTIVE}"]),
                                                             (HOLD_FOR, self.paths[HOLD_FOR]),
                                                             (STOP_CANCEL, self.paths[STOP_CANCEL])) if n})

    def _server_entry(self, d: dict[str, Any], checker: Checker) -> None:
        """One of our calls' server entries, from the journal stream."""
        if self.builder is not None:
            self.builder.add(d)
            self._server_spool.write(orjson.dumps(d) + b"\n")
        else:
            checker.add(d)
        live = self.live
        # what the view needs of the server: each call's dispatch and End (which call counts in the
        # cancel-propagation population, until when it is remembered) and the cancels it saw
        if live is not None and (d["event"] == CANCEL_SEEN
                                 or (d["event"] == ENTER and (d.get("prev") is None or d["state"] == END))):
            live.entry(SERVER, d["call_id"], d["state"], d["event"], parse_ts(d["ts"]), d.get("code"),
                       d.get("cancel"), d.get("detail"))

    async def _follow(self, stub: pb_grpc.JournalStub, subscribed: asyncio.Event) -> None:
        checker = self.checker
        assert checker is not None
        ids = self.ids
        try:
            await self._follow_stream(stub, subscribed, checker, ids)
        except grpc.aio.AioRpcError as err:
            if subscribed.is_set():   # lost mid-run: stop hammering a server that is gone
                self.server_lost = f"the journal stream broke: {err.code().name}: {err.details()}"
                self.stop("the server was lost")
            raise
        if self._barrier is None or not self._barrier.done():   # the server ended the stream: it is stopping
            self.server_lost = "the server closed its journal stream (it is stopping)"
            self.stop("the server was lost")

    async def _follow_stream(self, stub: pb_grpc.JournalStub, subscribed: asyncio.Event, checker: Checker,
                             ids: set[str]) -> None:
        async for batch in stub.Follow(pb.WatchRequest(), metadata=self.cfg.settings.metadata):
            subscribed.set()
            if batch.dropped > self.stream_dropped:
                self.stream_dropped = batch.dropped
            for e in batch.entries:
                if e.state == END and e.event == ENTER:
                    if e.call_id in ids:
                        self._our_server_ends += 1
                    elif e.call_id == self._barrier_id and self._barrier is not None and not self._barrier.done():
                        self._barrier.set_result(None)
                elif e.move in _DISPATCH_MOVES and e.call_id in ids:
                    self._our_server_dispatches += 1
                if e.call_id in ids:
                    d = proto_to_dict(e)
                    self._server_entry(d, checker)
                    if self.propagation is not None:
                        self.propagation.server(e)
            if batch.entries:   # how far the server's entries have come (the checker retires calls up to there)
                self._entries.server_time = max(self._entries.server_time,
                                                parse_ts_or(batch.entries[-1].ts, -math.inf))

    async def run(self) -> dict[str, Any]:
        channel = self.cfg.settings.aio_channel(self.cfg.target)
        try:
            await self._connect(channel)
            journal = pb_grpc.JournalStub(channel)
            if self.cfg.drive is not None and not await _serves_journal(journal, self.cfg):   # no journal, no counters
                self.one_sided = (f"{self.cfg.target} does not serve callstate.v1.Journal (not a callstate server): "
                                  "only the client side is logged and checked")
            follow = await self._subscribe(journal)
            before = await self._counters_before(journal, follow)
        except ConnectionError:
            await channel.close()
            raise
        view = self._view = self._start_view()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):   # from here on, SIGINT/SIGTERM stop the run (stop())
            loop.add_signal_handler(sig, self.stop, signal.Signals(sig).name)
        try:
            elapsed = await self._drive()
            after = await self._counters_after(channel, journal, before)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if view is not None:   # after the settle: the last frame has the server's late cancel_seen entries
                view.stop()
        self._end_follow(follow)
        await channel.close()
        self._close_logs()
        return self.report(elapsed, before, after)

    async def _connect(self, channel: grpc.aio.Channel) -> None:
        try:
            await asyncio.wait_for(channel.channel_ready(), CONNECT_S)
        except asyncio.TimeoutError:
            raise ConnectionError(await _not_grpc(channel, self.cfg.target) or
                                  unreachable(self.cfg.target, channel.get_state(), self.cfg.settings.secure)) from None

    async def _subscribe(self, journal: pb_grpc.JournalStub) -> asyncio.Task[None] | None:
        """Follow the journal, when the run is checked (subscribe first, then read the counters:
        no End falls in between); the following task, once the stream is in place."""
        if self.checker is None or self.one_sided:
            return None
        subscribed = asyncio.Event()
        follow = asyncio.ensure_future(self._follow(journal, subscribed))
        waiter = asyncio.ensure_future(subscribed.wait())
        await asyncio.wait({follow, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if not subscribed.is_set():
            follow.cancel()
            why = _error_text(follow, self.cfg.settings)
            if _refused(follow):   # a callstate server, which turned this client away: say what to change
                raise ConnectionError(f"{self.cfg.target} refused its journal (callstate.v1.Journal/Follow) to this "
                                      f"client ({why})")
            if _answered(follow):   # a callstate server that said why (its watchers full: --max-watchers)
                raise ConnectionError(f"{self.cfg.target} did not open its journal (callstate.v1.Journal/Follow): {why}")
            raise ConnectionError(f"{self.cfg.target} did not open its journal (callstate.v1.Journal/Follow): "
                                  f"is it a callstate server? ({why})")
        return follow

    async def _counters_before(self, journal: pb_grpc.JournalStub, follow: asyncio.Task[None] | None) -> pb.Counters:
        if self.one_sided:
            return pb.Counters()
        settings = self.cfg.settings
        try:
            return await journal.GetCounters(pb.CountersRequest(), metadata=settings.metadata, timeout=10)
        except grpc.aio.AioRpcError as err:
            if follow is not None:
                follow.cancel()
            raise ConnectionError(f"{self.cfg.target} did not give its counters (callstate.v1.Journal/GetCounters): "
                                  f"{err.code().name}: {settings.explain(err.code(), err.details())}") from None

    def _start_view(self) -> LiveView | None:
        if self.live is None:
            return None
        view = LiveView(self.live, self.out, self.cfg.view, f"callstate load → {self.cfg.target}",
                        before_refresh=self._update_live)
        view.start()
        return view

    async def _drive(self) -> float:
        """Make the run's calls (SIGINT and SIGTERM stop it early); the seconds it took."""
        cfg = self.cfg
        clients = [AsyncClient(cfg.target, log=self.sink, timeout=cfg.timeout, settings=cfg.settings,
                               channel_options=[("grpc.use_local_subchannel_pool", 1)], tracing=cfg.tracing)
                   for _ in range(cfg.channels)]
        payload = bytes(cfg.payload)
        self._t0 = time.perf_counter()
        self._stop_at = self._t0 + cfg.duration if cfg.duration else float("inf")
        overrun = (asyncio.get_running_loop().call_later(cfg.duration + DURATION_TAIL_S, self._duration_overrun)
                   if cfg.duration else None)
        if self.live is not None:
            self.live.restart()
        try:
            if cfg.rate:
                await self._open_loop(clients, payload)
            else:
                await self._closed_loop(clients, payload)
            elapsed = time.perf_counter() - self._t0
            if self.live is not None:   # its last frame says the summary's time and calls/s
                self.live.freeze(elapsed)
            return elapsed
        finally:
            if overrun is not None:
                overrun.cancel()
            for client in clients:
                await client.close()

    async def _counters_after(self, channel: grpc.aio.Channel, journal: pb_grpc.JournalStub,
                              before: pb.Counters) -> pb.Counters | None:
        """The server's side: every call of ours ended, and nothing left in flight."""
        if self.one_sided:
            return None
        self._cut = asyncio.Event()
        try:
            return await self._settle(channel, journal, before, self.cfg.settle)
        except grpc.aio.AioRpcError as err:
            # the first sign of a lost server says most (a journal stream the stopping server closed)
            self.server_lost = self.server_lost or f"no counters after the run: {err.code().name}: {err.details()}"
            return None

    def _end_follow(self, follow: asyncio.Task[None] | None) -> None:
        if follow is None:
            return
        if follow.done() and not follow.cancelled() and follow.exception() is not None and not self.server_lost:
            self.server_lost = f"the journal stream broke: {_error_text(follow)}"
        follow.cancel()

    def _close_logs(self) -> None:
        for log in (self.log, self._client_spool):
            if log is not None:
                log.close()
        if self._server_spool is not None:
            self._server_spool.close()

    async def _settle(self, channel: grpc.aio.Channel, journal: pb_grpc.JournalStub, before: pb.Counters,
                      timeout: float) -> pb.Counters:
        """Wait until the server has ended every call of ours it dispatched (and, on a server
        idle before the run, until nothing is in flight), then until the journal stream has
        caught up: a barrier call made after all ours must come back through it, and the
        journal publishes in order, so every entry before its End has arrived."""
        deadline = time.monotonic() + timeout
        notice_at = time.monotonic() + SETTLE_NOTICE_S
        while True:
            after = await journal.GetCounters(pb.CountersRequest(), metadata=self.cfg.settings.metadata, timeout=10)
            ours_done = self.checker is None or self._our_server_ends >= self._our_server_dispatches
            idle = after.in_flight == 0 or before.in_flight > 0
            if (ours_done and idle) or time.monotonic() > deadline or self.settle_cut:
                break
            if notice_at and time.monotonic() > notice_at:   # once: the run looked hung for up to --settle
                notice_at = 0.0
                left = after.in_flight if ours_done else self._our_server_dispatches - self._our_server_ends
                self._say(f"callstate load: every call has ended here, {left} still {'runs' if left == 1 else 'run'} "
                          f"on the server: waiting up to {timeout:g} s for it to end them (--settle; SIGINT or SIGTERM "
                          "ends the wait)")
            await asyncio.sleep(0.05)
        if self.checker is not None and not self.settle_cut:
            loop = asyncio.get_running_loop()
            self._barrier = loop.create_future()
            self._barrier_id = f"callstate-load-barrier-{os.urandom(8).hex()}"
            await pb_grpc.EmulatorStub(channel).Call(
                pb.CallRequest(call_id=self._barrier_id, script=pb.Script(outcome=pb.OUTCOME_COMPLETE)),
                metadata=self.cfg.settings.metadata, timeout=10)
            assert self._cut is not None
            cut = asyncio.ensure_future(self._cut.wait())
            # a timeout or a signal: our calls the stream did not bring are reported as not_ended
            await asyncio.wait({self._barrier, cut}, timeout=max(1.0, deadline - time.monotonic()),
                               return_when=asyncio.FIRST_COMPLETED)
            cut.cancel()
            after = await journal.GetCounters(pb.CountersRequest(), metadata=self.cfg.settings.metadata, timeout=10)
        return after

    def report(self, elapsed: float, before: pb.Counters, after: pb.Counters | None) -> dict[str, Any]:
        all_lat = [x for values in self.latency.values() for x in values]
        report: dict[str, Any] = {
            "target": self.cfg.target,
            "config": self._config_json(),
            "calls": self.finished,
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            "settle_cut": self.settle_cut,
            "duration_s": round(elapsed, 3),
            "calls_per_s": per_second(self.finished, elapsed),
            "by_code": {str(c): n for c, n in sorted(self.by_code.items())},
            "code_names": {str(c): codes.name(c) for c in sorted(self.by_code)},
            "latency_ms": {"all": _rounded(percentiles(all_lat)),
                           **{str(c): _rounded(percentiles(v)) for c, v in sorted(self.latency.items())}},
            "paths": dict(sorted(self.paths.items())),
            SERVER: {"unknown": self.one_sided} if self.one_sided else self._server_json(before, after),
        }
        if self.checker is not None:
            report.update(self._checked(before, after))
        else:
            report["check"] = {"ok": not self._nothing_started(), "skipped": True}
        if self._nothing_started():
            report["check"]["note"] = "; ".join(filter(None, (report["check"].get("note"), self._nothing_started())))
        report["stream_dropped"] = self.stream_dropped
        return report

    def _config_json(self) -> dict[str, Any]:
        cfg, scenario = self.cfg, self.cfg.scenario
        return {
            "calls": cfg.calls, "duration": cfg.duration, "concurrency": None if cfg.rate else cfg.concurrency,
            "rate": cfg.rate, "channels": cfg.channels, "mix": str(scenario.mix),
            "cancel": scenario.cancel, "cancel_at": [str(p) for p in scenario.cancel_at],
            "on_cancel": str(scenario.on_cancel), "escalate_after": scenario.escalate_after,
            "payload": cfg.payload, "seed": cfg.seed, "pipes": scenario.pipes,
            "pipe_cancel_at": [str(p) for p in scenario.pipe_cancel_at],
            "pipe_messages": scenario.pipe_messages,
            # the rest of what shaped the calls: a report that leaves them out describes another run
            "hold_for": scenario.hold_for, "delay": cfg.delay, "abort_code": scenario.abort_code,
            "cancel_poll": None if scenario.cancel_poll is None else str(scenario.cancel_poll),
            **({"method": cfg.drive.method.name} if cfg.drive is not None else {}),
            **({"no_script": True} if cfg.no_script else {}),
            **({"server_side": "unknown: " + self.one_sided} if self.one_sided else {}),
        }

    def _server_json(self, before: pb.Counters, after: pb.Counters | None) -> dict[str, Any]:
        if self.checker is not None:
            dispatched: int | None = self._our_server_dispatches
        else:
            dispatched = after.dispatched - before.dispatched if after else None
        return {"in_flight_before": before.in_flight, "in_flight_after": after.in_flight if after else None,
                "dispatched": dispatched,
                "watch_dropped": after.watch_dropped - before.watch_dropped if after else None,
                "lost": self.server_lost,
                # a call of the generator's own, after all of the run's: the server's state log holds it too
                "barrier_call": self._barrier_id}

    def _checked(self, before: pb.Counters, after: pb.Counters | None) -> dict[str, Any]:
        """The checker's verdict on both sides and the cancel propagation it measured."""
        # Invariant 4 on a server that was idle before the run; on a shared one, other
        # clients' calls may be in flight: then only our own calls are judged (not_ended).
        in_flight = None if after is None or before.in_flight else after.in_flight
        result = (self.builder.finish(in_flight, self.server_lost) if self.builder is not None else
                  self.checker.finish(server_in_flight=in_flight, server_lost=self.server_lost))  # type: ignore[union-attr]
        checked = result.to_json()
        notes = self._notes() + self._balancer_note(result)
        out: dict[str, Any] = {"cancel_propagation_ms": _rounded(checked.pop("cancel_propagation_ms"))}
        for apart in ("cancel_propagation_polled_ms", "cancel_poll_wait_ms"):   # handlers that poll
            out[apart] = _rounded(checked.pop(apart))
        out["check"] = {"ok": result.ok and not notes and not self._nothing_started(),
                        "violations": checked["violations"],
                        "violations_by_kind": checked["violations_by_kind"], "calls": checked["calls"],
                        "entries": checked["entries"], "note": "; ".join(notes)}
        if self.one_sided:
            out["check"]["one_sided"] = CLIENT
            out["cancel_propagation_ms"] = {"count": 0, "not_measurable": NOT_MEASURABLE}
        return out

    def _notes(self) -> list[str]:
        """What makes a run with no violation unproven."""
        # only our own stream's losses matter: another client's stuck watcher is not our problem
        dropped = self.stream_dropped
        notes = [f"{dropped} server entries were dropped by our journal stream's buffer: "
                 "the server view is incomplete"] if dropped else []
        if self.attempted and self._our_server_dispatches == 0 and not self.one_sided:
            notes.append("no call reached the server")
        return notes

    def _balancer_note(self, result: CheckReport) -> list[str]:
        """Why calls the client completed with 0 are unknown to the server whose journal was followed,
        when others of the run's calls reached it and the stream lost nothing: a balancer spread the
        calls over several servers, and the journal RPC (no call id to route by) reached one of them."""
        unknown = sum(1 for v in result.violations if v.kind == "unknown_to_server")
        if not unknown or not self._our_server_dispatches or self.stream_dropped or self.server_lost:
            return []
        return [f"{counted(unknown, 'call')} the client completed with 0 never reached the server whose journal "
                f"was followed, while {self._our_server_dispatches} of this run's calls did: is {self.cfg.target} a "
                "balancer in front of several servers (replicas)? Its journal stream reaches one of them: run with "
                "--no-verify and check the client log with every server's log (callstate check CLIENT_LOG "
                "SERVER_LOGS_FOLDER)"]

    def _nothing_started(self) -> str:
        """Why the run proved nothing, when no call could start (or every one was refused)."""
        if self.attempted and self.start_failed == self.attempted:
            return f"no call could start: all {self.attempted} were refused before leaving the client"
        turned_away = self.by_code.get(codes.RPC_S_SERVER_TOO_BUSY, 0) + self.by_code.get(codes.RPC_S_SERVER_UNAVAILABLE, 0)
        if self.attempted and turned_away >= self.attempted:
            return (f"no call could run: all {self.attempted} were turned away (1723 RPC_S_SERVER_TOO_BUSY or "
                    "1722 RPC_S_SERVER_UNAVAILABLE)")
        refused = self.by_code.get(codes.RPC_S_INVALID_ARG, 0)
        if refused:   # the generator's own scripts are valid: a refusal means the server's limits are lower
            return (f"the server refused {refused} of {self.attempted} calls (87 RPC_S_INVALID_ARG): its limits are "
                    "below this load's settings (e.g. --payload, --delay)")
        return ""


    def html_report(self, report: dict[str, Any]) -> dict[str, Any]:
        """The HTML report's data (`run_report`): the checked run plus the example calls' histories,
        read back from the spooled logs, which are then removed."""
        assert self.builder is not None and self._spool_dir is not None, "LoadConfig.collect_report was off"
        try:
            examples = collect_examples(self._spool_paths, self.builder.example_ids())
            # against a server that is not callstate, the client side alone is judged, as the run's check does
            return self.builder.build(examples, run=report, title=f"callstate load against {self.cfg.target}",
                                      allow_one_side=bool(self.one_sided))
        finally:
            self._spool_dir.cleanup()


NOT_MEASURABLE = "not measurable: the server side is unknown"


async def _serves_journal(journal: pb_grpc.JournalStub, cfg: LoadConfig) -> bool:
    """Whether the target is a callstate server (a stand-in included): False on UNIMPLEMENTED."""
    try:
        await journal.GetCounters(pb.CountersRequest(), metadata=cfg.settings.metadata, timeout=10)
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.UNIMPLEMENTED:
            return False
    return True   # any other answer: the usual path says what is wrong


def _status(task: asyncio.Task[None]) -> grpc.StatusCode | None:
    """The status the task's RPC ended with (None: it did not end on an RPC error)."""
    exc = task.exception() if task.done() and not task.cancelled() else None
    return exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None


def _refused(task: asyncio.Task[None]) -> bool:
    """Whether the task ended on the server's refusal of this client's access (no token, a wrong one)."""
    from callstate.client.channel import ACCESS_REFUSED
    return _status(task) in ACCESS_REFUSED


def _answered(task: asyncio.Task[None]) -> bool:
    """Whether a callstate Journal ended the task's RPC with a status of its own: not UNIMPLEMENTED (no
    Journal there) nor UNAVAILABLE (no server, or a proxy's error in its place)."""
    return _status(task) not in (None, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE,
                                 grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


def _error_text(task: asyncio.Task[None], settings: ChannelSettings | None = None) -> str:
    if not task.done() or task.cancelled():
        return "no answer within 10 s"
    exc = task.exception()
    if isinstance(exc, grpc.aio.AioRpcError):
        details = settings.explain(exc.code(), exc.details()) if settings is not None else exc.details()
        return f"{exc.code().name}: {details}"
    return repr(exc)


def _rounded(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}


CONNECT_S = 5   # how long the run waits for its first connection


async def _not_grpc(channel: grpc.aio.Channel, target: str) -> str:
    """Why no connection came, when the peer answered but not in HTTP/2 ("" otherwise): a web server or a
    /metrics endpoint, up and plaintext, which "is it up? if it uses TLS..." sent the user astray
    from. Only a call reports the channel's last error: one that does not wait for a connection."""
    if channel.get_state() != grpc.ChannelConnectivity.TRANSIENT_FAILURE:
        return ""
    probe = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=bytes, response_deserializer=bytes)
    try:
        await probe(b"", timeout=CONNECT_S / 2)
    except grpc.aio.AioRpcError as err:
        details = err.details() or ""
        if "Failed parsing HTTP/2" in details:   # it answered, in another protocol (a TLS server closes instead)
            status = re.search(r"HTTP status (\d+)", details)
            what = f"HTTP/1.x (HTTP status {status.group(1)})" if status else "in a protocol other than HTTP/2"
            return (f"cannot reach a callstate server at {target}: it answers {what}, not gRPC: another service's "
                    "port (a web server, a /metrics endpoint)?")
    return ""


def unreachable(target: str, state: grpc.ChannelConnectivity, secure: bool) -> str:
    """Why no connection came within CONNECT_S, from the channel's state then: still connecting is
    a port that took the connection (the kernel does) with nothing answering behind it, or an
    address that drops what is sent to it (a firewall, a wrong address): the state cannot tell
    them apart, so both are named."""
    if state == grpc.ChannelConnectivity.CONNECTING:
        return (f"cannot reach a callstate server at {target} (still connecting after {CONNECT_S} s: nothing answered; "
                "is the server stopped (SIGSTOP) or hung, or does the address drop what is sent to it (a firewall, "
                "a wrong address)?)")
    hint = ("is it up, and with TLS, or a client certificate required? check --tls-ca, --tls-cert, --tls-key"
            if secure else "is it up? if it uses TLS, pass --tls-ca")
    return f"cannot reach a callstate server at {target} (no connection within {CONNECT_S} s: {hint})"


def summary(report: dict[str, Any]) -> str:
    lines = [f"{counted(report['calls'], 'call')} in {report['duration_s']:.2f} s: {rate_text(report['calls_per_s'])} calls/s"
             + (f" ({report['skipped']} skipped: generator in-flight bound)" if report["skipped"] else "")
             + (f" (stopped early: {report['interrupted']})" if report["interrupted"] else "")
             + (f" (the wait for the server to end them cut short: {report['settle_cut']})"
                if report.get("settle_cut") else "")]
    lines.append(f"  {'final code':<34}{'count':>8}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for code, n in report["by_code"].items():
        lat = report["latency_ms"][code]
        lines.append(f"  {codes.describe(int(code)):<34}{n:>8}{lat['p50']:>10.2f}{lat['p90']:>10.2f}"
                     f"{lat['p99']:>10.2f}{lat['max']:>10.2f}")
    lines.append("  latency: the client's clock, start() to complete() (the HTML report reads the state log: C to End)")
    lines.append("paths: " + ", ".join(f"{k} {v}" for k, v in report["paths"].items()))
    prop = report.get("cancel_propagation_ms", {})
    if prop.get("not_measurable"):
        lines.append(f"cancel propagation: {prop['not_measurable']}")
    elif prop.get("count"):
        lines.append(figures_text(prop))
    polled, wait = report.get("cancel_propagation_polled_ms", {}), report.get("cancel_poll_wait_ms", {})
    lines += _none_measured(report, prop, polled)
    if polled.get("count"):
        lines.append(polled_text(polled, wait))
    return "\n".join(lines + _check_lines(report))


def _none_measured(report: dict[str, Any], prop: dict[str, Any], polled: dict[str, Any]) -> list[str]:
    """The propagation line of a run whose cancels gave no figure: said, not left out, so that the
    summary of a run of cancels does not read as one whose cancels were never timed for a reason unsaid."""
    taken = sum(report["paths"].get(path, 0) for path in (f"cancel-{ABORTIVE}", f"cancel-{NON_ABORTIVE}", HOLD_FOR,
                                                           STOP_CANCEL))
    if not taken or prop.get("count") or prop.get("not_measurable") or polled.get("count"):
        return []
    if report["check"].get("skipped"):
        return ["cancel propagation: not measured (--no-verify: the server's journal is not followed)"]
    return [f"cancel propagation: none measured: no cancel of the {taken} reached the server after its call's dispatch "
            "(they came before it, or were never seen; --cancel-at held:0.05 measures it in bulk)"]


def _check_lines(report: dict[str, Any]) -> list[str]:
    """The summary's verdict: the check's result, and what `callstate check` over the logs adds."""
    lines: list[str] = []
    check = report["check"]
    if check.get("skipped"):
        lines.append("check: skipped (--no-verify)" if check["ok"] else f"check: FAILED — {check['note']}")
    elif check["ok"] and check.get("one_sided"):
        lines.append(f"check: OK on the client side only — {counted(check['calls'], 'call')}, every client-side invariant "
                     f"holds; the server side is unknown: {report[SERVER]['unknown']}")
    elif check["ok"]:
        server = report[SERVER]
        shared = (f" (the server was shared: {counted(server['in_flight_before'], 'call')} in flight before the run, "
                  "so only this run's calls were judged)" if server["in_flight_before"] else "")
        lines.append(f"check: OK — {counted(check['calls'], 'call')}, every invariant holds on both sides; "
                     f"server in flight after the run: {server['in_flight_after']}{shared}")
    else:
        lines.append(f"check: FAILED — {counted(check['violations'], 'violation')}" + (f"; {check['note']}" if check.get("note") else "")
                     + ("; the server side is unknown (only the client side was checked)" if check.get("one_sided") else ""))
        for kind, info in check["violations_by_kind"].items():
            lines.append(f"  {kind}: {info['count']}  e.g. " + "; ".join(
                f"{x['call_id']}: {x['message']}" for x in info["examples"][:3]))
    if (barrier := report[SERVER].get("barrier_call")) and not check.get("skipped"):
        lines.append(f"  the server's state log (if it keeps one) also holds the run's barrier call {barrier} (0 RPC_S_OK, made after "
                     f"the run's calls to know the journal had caught up): `callstate check` over it counts one "
                     f"call more than these {report['calls']}")
    return lines
