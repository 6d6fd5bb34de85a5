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
import os
import random
import signal
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, TextIO

import grpc

from callstate import codes
from callstate.check import Checker, percentiles
from callstate.cli.options import DEFAULT_TARGET
from callstate.client import AsyncCall, AsyncClient, CallError
from callstate.client.pipe_drive import drive_pipe
from callstate.lifecycle import ABORTIVE, DISPATCH, ENTER, END, PIPE_INITIAL_MOVE, SERVER
from callstate.pipe_script import PipeCancelPoint, PipeScript
from callstate.scenario import AFTER_START, BEFORE_START, Plan, Scenario
from callstate.script import ON_CANCEL, OUTCOMES
from callstate.statelog import Entry, StateLog, proto_to_dict
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc

_DISPATCH_MOVES = frozenset({DISPATCH, *PIPE_INITIAL_MOVE[SERVER].values()})


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
    progress: bool = False


class _Sink:
    """Client entries go straight to the checker (and to a log file when asked)."""

    enabled = True

    def __init__(self, checker: Checker | None, log: StateLog | None) -> None:
        self._checker, self._log = checker, log

    def append(self, e: Entry) -> None:
        if self._checker is not None:
            self._checker.add_entry(e)
        if self._log is not None:
            self._log.append(e)


class LoadRun:
    def __init__(self, config: LoadConfig, out: TextIO = sys.stderr) -> None:
        self.cfg = config
        self.out = out
        self.rng = random.Random(config.seed)
        self.checker = Checker() if config.verify else None
        self.log = StateLog(config.log_file) if config.log_file else None
        self.sink = _Sink(self.checker, self.log)
        self.ids: set[str] = set()
        self.started = 0
        self.finished = 0
        self.in_flight = 0
        self.by_code: Counter[int] = Counter()
        self.latency: dict[int, list[float]] = defaultdict(list)
        self.paths: Counter[str] = Counter()
        self.skipped = 0
        self._scripts: dict[tuple[str, str], pb.Script] = {}
        self._our_server_ends = 0
        self._our_server_dispatches = 0
        self._barrier_id = ""
        self._barrier: asyncio.Future[None] | None = None
        self._t0 = 0.0
        self._stop_at = float("inf")
        self.interrupted = ""
        self.server_lost = ""

    def stop(self, reason: str) -> None:
        """Start no more calls; the ones in flight finish and are checked as usual."""
        self.interrupted = reason
        self._stop_at = 0.0

    # -- planning -----------------------------------------------------------------------------
    def plan(self) -> Plan:
        return self.cfg.scenario.plan(self.rng)

    def _script(self, plan: Plan) -> pb.Script:
        key = (plan.outcome, plan.on_cancel)
        script = self._scripts.get(key)
        if script is None:
            script = self._scripts[key] = pb.Script(
                outcome=OUTCOMES[plan.outcome], on_cancel=ON_CANCEL[plan.on_cancel],
                outcome_delay_ms=0 if script_holds(plan) else round(self.cfg.delay * 1000),
                reply_bytes=self.cfg.payload, abort_code=self.cfg.scenario.abort_code if OUTCOMES[plan.outcome] == pb.OUTCOME_ABORT else 0)
        return script

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
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        self.paths[plan.outcome] += 1
        call = client.prepare(self._script(plan), payload=payload)
        self.ids.add(call.call_id)
        abortive = plan.cancel == ABORTIVE
        timer: asyncio.TimerHandle | None = None
        try:
            if plan.cancel:
                self.paths[f"cancel-{plan.cancel}"] += 1
                self.paths[f"cancel-at-{plan.point.kind}"] += 1  # type: ignore[union-attr]
            point = plan.point
            if point is not None and point.kind == BEFORE_START:
                call.cancel(abortive)
            else:
                call.start()
                if point is not None:
                    delay = plan.delay(self.rng)
                    if point.kind == AFTER_START or delay <= 0:
                        self._cancel(call, abortive)
                    else:
                        timer = loop.call_later(delay, self._cancel, call, abortive)
            try:
                await call
                code = codes.RPC_S_OK
            except CallError as err:
                code = err.code
        except CallError as err:   # the call could not be made
            code = err.code
        finally:
            if timer is not None:
                timer.cancel()
            self.in_flight -= 1
        self.finished += 1
        self.by_code[code] += 1
        self.latency[code].append((time.perf_counter() - t0) * 1000)

    async def one_pipe(self, client: AsyncClient, plan: Plan) -> None:
        """One pipe call: each side pushes the scenario's messages; cancelled at a point counted
        in messages (a held pipe not in the cancelled share: abortively, after its headers)."""
        t0 = time.perf_counter()
        scenario = self.cfg.scenario
        self.paths[f"pipe-{plan.pipe}"] += 1
        self.paths[plan.outcome] += 1
        point, cancel = plan.pipe_point, plan.cancel
        if point is None and plan.outcome == "hold":
            point, cancel = PipeCancelPoint.parse("after-headers"), ABORTIVE
        if cancel is not None and point is not None:
            self.paths[f"cancel-{cancel}"] += 1
            self.paths[f"pipe-cancel-at-{point.kind}"] += 1
        script = PipeScript(outcome=plan.outcome, on_cancel=plan.on_cancel, messages=scenario.pipe_messages,
                            message_bytes=self.cfg.payload, abort_code=scenario.abort_code,
                            interval=0.005 if plan.outcome == "hold" else 0.0)
        pipe = client.pipe(plan.pipe, script)  # type: ignore[arg-type]
        self.ids.add(pipe.call_id)
        try:
            await drive_pipe(pipe, messages=scenario.pipe_messages, message_bytes=self.cfg.payload,
                             cancel_at=point if cancel else None, abortive=cancel == ABORTIVE,
                             escalate_after=scenario.escalate_after)
            code = codes.RPC_S_OK
        except CallError as err:
            code = err.code
        finally:
            self.in_flight -= 1
        self.finished += 1
        self.by_code[code] += 1
        self.latency[code].append((time.perf_counter() - t0) * 1000)

    def _cancel(self, call: AsyncCall, abortive: bool) -> None:
        if call.done():
            return
        if abortive:
            call.cancel()
        else:
            call.cancel(abortive=False, timeout=self.cfg.scenario.escalate_after)

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
            if next_t > now:
                await asyncio.sleep(next_t - now)
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

    async def _progress(self) -> None:
        total = self.cfg.calls
        while True:
            await asyncio.sleep(0.5)
            elapsed = time.perf_counter() - self._t0
            done = self.finished
            if total:
                width = 24
                filled = int(width * min(1.0, done / total))
                bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
            else:
                bar = f"{elapsed:5.1f}/{self.cfg.duration:g}s {done} calls"
            top = ", ".join(f"{c}:{n}" for c, n in self.by_code.most_common(5))
            self.out.write(f"\r{bar}  {done / elapsed if elapsed else 0:7.0f}/s  in flight {self.in_flight:<5} {top}\x1b[K")
            self.out.flush()

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
        async for batch in stub.Follow(pb.WatchRequest()):
            subscribed.set()
            for e in batch.entries:
                if e.state == END and e.event == ENTER:
                    if e.call_id in ids:
                        self._our_server_ends += 1
                    elif e.call_id == self._barrier_id and self._barrier is not None and not self._barrier.done():
                        self._barrier.set_result(None)
                elif e.move in _DISPATCH_MOVES and e.call_id in ids:
                    self._our_server_dispatches += 1
                if e.call_id in ids:
                    checker.add(proto_to_dict(e))

    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        channel = grpc.aio.insecure_channel(cfg.target)
        try:
            await asyncio.wait_for(channel.channel_ready(), 5)
        except asyncio.TimeoutError:
            await channel.close()
            raise ConnectionError(f"cannot reach a callstate server at {cfg.target} (no connection within 5 s)")
        journal = pb_grpc.JournalStub(channel)
        follow: asyncio.Task[None] | None = None
        if self.checker is not None:   # subscribe first, then read the counters: no End falls in between
            subscribed = asyncio.Event()
            follow = asyncio.ensure_future(self._follow(journal, subscribed))
            waiter = asyncio.ensure_future(subscribed.wait())
            await asyncio.wait({follow, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not subscribed.is_set():
                follow.cancel()
                await channel.close()
                raise ConnectionError(f"{cfg.target} did not open its journal (callstate.v1.Journal/Follow): "
                                      f"is it a callstate server? ({_error_text(follow)})")
        before = await journal.GetCounters(pb.CountersRequest(), timeout=10)
        clients = [AsyncClient(cfg.target, log=self.sink, timeout=cfg.timeout,
                               channel_options=[("grpc.use_local_subchannel_pool", 1)])
                   for _ in range(cfg.channels)]
        payload = bytes(cfg.payload)
        progress = asyncio.ensure_future(self._progress()) if cfg.progress else None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop, signal.Signals(sig).name)
        self._t0 = time.perf_counter()
        self._stop_at = self._t0 + cfg.duration if cfg.duration else float("inf")
        try:
            if cfg.rate:
                await self._open_loop(clients, payload)
            else:
                await self._closed_loop(clients, payload)
            elapsed = time.perf_counter() - self._t0
        finally:
            if progress is not None:
                progress.cancel()
                self.out.write("\r\x1b[K")
            for client in clients:
                await client.close()
        # the server's side: every call of ours ended, and nothing left in flight
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        try:
            after: pb.Counters | None = await self._settle(channel, journal, before, cfg.settle)
        except grpc.aio.AioRpcError as err:
            after = None
            self.server_lost = f"no counters after the run: {err.code().name}: {err.details()}"
        if follow is not None:
            if follow.done() and not follow.cancelled() and follow.exception() is not None and not self.server_lost:
                self.server_lost = f"the journal stream broke: {_error_text(follow)}"
            follow.cancel()
        await channel.close()
        if self.log is not None:
            self.log.close()
        return self.report(elapsed, before, after)

    async def _settle(self, channel: grpc.aio.Channel, journal: pb_grpc.JournalStub, before: pb.Counters,
                      timeout: float) -> pb.Counters:
        """Wait until the server has ended every call of ours it dispatched (and, on a server
        idle before the run, until nothing is in flight), then until the journal stream has
        caught up: a barrier call made after all ours must come back through it, and the
        journal publishes in order, so every entry before its End has arrived."""
        deadline = time.monotonic() + timeout
        while True:
            after = await journal.GetCounters(pb.CountersRequest(), timeout=10)
            ours_done = self.checker is None or self._our_server_ends >= self._our_server_dispatches
            idle = after.in_flight == 0 or before.in_flight > 0
            if (ours_done and idle) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        if self.checker is not None:
            loop = asyncio.get_running_loop()
            self._barrier = loop.create_future()
            self._barrier_id = f"callstate-load-barrier-{os.urandom(8).hex()}"
            await pb_grpc.EmulatorStub(channel).Call(
                pb.CallRequest(call_id=self._barrier_id, script=pb.Script(outcome=pb.OUTCOME_COMPLETE)), timeout=10)
            try:
                await asyncio.wait_for(self._barrier, max(1.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                pass   # reported: our calls the stream did not bring will show as not_ended
            after = await journal.GetCounters(pb.CountersRequest(), timeout=10)
        return after

    def report(self, elapsed: float, before: pb.Counters, after: pb.Counters | None) -> dict[str, Any]:
        all_lat = [x for values in self.latency.values() for x in values]
        report: dict[str, Any] = {
            "target": self.cfg.target,
            "config": {
                "calls": self.cfg.calls, "duration": self.cfg.duration, "concurrency": None if self.cfg.rate else self.cfg.concurrency,
                "rate": self.cfg.rate, "channels": self.cfg.channels, "mix": str(self.cfg.scenario.mix),
                "cancel": self.cfg.scenario.cancel, "cancel_at": [str(p) for p in self.cfg.scenario.cancel_at],
                "on_cancel": str(self.cfg.scenario.on_cancel), "escalate_after": self.cfg.scenario.escalate_after,
                "payload": self.cfg.payload, "seed": self.cfg.seed, "pipes": self.cfg.scenario.pipes,
                "pipe_cancel_at": [str(p) for p in self.cfg.scenario.pipe_cancel_at],
                "pipe_messages": self.cfg.scenario.pipe_messages,
            },
            "calls": self.finished,
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            "duration_s": round(elapsed, 3),
            "calls_per_s": round(self.finished / elapsed, 1) if elapsed else 0.0,
            "by_code": {str(c): n for c, n in sorted(self.by_code.items())},
            "code_names": {str(c): codes.name(c) for c in sorted(self.by_code)},
            "latency_ms": {"all": _rounded(percentiles(all_lat)),
                           **{str(c): _rounded(percentiles(v)) for c, v in sorted(self.latency.items())}},
            "paths": dict(sorted(self.paths.items())),
            "server": {"in_flight_before": before.in_flight,
                       "in_flight_after": after.in_flight if after else None,
                       "dispatched": self._our_server_dispatches if self.checker is not None else (
                           after.dispatched - before.dispatched if after else None),
                       "watch_dropped": after.watch_dropped - before.watch_dropped if after else None,
                       "lost": self.server_lost},
        }
        if self.checker is not None:
            # Invariant 4 on a server that was idle before the run; on a shared one, other
            # clients' calls may be in flight: then only our own calls are judged (not_ended).
            in_flight = None if after is None or before.in_flight else after.in_flight
            result = self.checker.finish(server_in_flight=in_flight, server_lost=self.server_lost)
            checked = result.to_json()
            dropped = after.watch_dropped - before.watch_dropped if after else 0
            report["cancel_propagation_ms"] = _rounded(checked.pop("cancel_propagation_ms"))
            report["check"] = {"ok": result.ok and not dropped, "violations": checked["violations"],
                               "violations_by_kind": checked["violations_by_kind"], "calls": checked["calls"],
                               "entries": checked["entries"],
                               "note": f"{dropped} server entries were dropped by the journal's watch queue: "
                                       "the server view is incomplete" if dropped else ""}
        else:
            report["check"] = {"ok": True, "skipped": True}
        return report


def script_holds(plan: Plan) -> bool:
    return OUTCOMES[plan.outcome] == pb.OUTCOME_HOLD


def _error_text(task: asyncio.Task[None]) -> str:
    if not task.done() or task.cancelled():
        return "no answer within 10 s"
    exc = task.exception()
    return f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)


def _rounded(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}


def summary(report: dict[str, Any]) -> str:
    lines = [f"{report['calls']} calls in {report['duration_s']:.2f} s: {report['calls_per_s']:.0f} calls/s"
             + (f" ({report['skipped']} skipped: generator in-flight bound)" if report["skipped"] else "")
             + (f" (stopped early by {report['interrupted']})" if report["interrupted"] else "")]
    lines.append(f"  {'final code':<34}{'count':>8}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for code, n in report["by_code"].items():
        lat = report["latency_ms"][code]
        lines.append(f"  {codes.describe(int(code)):<34}{n:>8}{lat['p50']:>10.2f}{lat['p90']:>10.2f}"
                     f"{lat['p99']:>10.2f}{lat['max']:>10.2f}")
    lines.append("paths: " + ", ".join(f"{k} {v}" for k, v in report["paths"].items()))
    prop = report.get("cancel_propagation_ms", {})
    if prop.get("count"):
        lines.append(f"cancel propagation (client Can -> server cancel_seen, calls already dispatched): n={prop['count']} "
                     f"p50={prop['p50']:.3f} ms p99={prop['p99']:.3f} ms max={prop['max']:.3f} ms")
    check = report["check"]
    if check.get("skipped"):
        lines.append("check: skipped (--no-verify)")
    elif check["ok"]:
        server = report["server"]
        shared = (f" (the server was shared: {server['in_flight_before']} calls in flight before the run, "
                  "so only this run's calls were judged)" if server["in_flight_before"] else "")
        lines.append(f"check: OK — {check['calls']} calls, every invariant holds on both sides; "
                     f"server in flight after the run: {server['in_flight_after']}{shared}")
    else:
        lines.append(f"check: FAILED — {check['violations']} violations" + (f"; {check['note']}" if check["note"] else ""))
        for kind, info in check["violations_by_kind"].items():
            lines.append(f"  {kind}: {info['count']}  e.g. " + "; ".join(
                f"{x['call_id']}: {x['message']}" for x in info["examples"][:3]))
    return "\n".join(lines)
