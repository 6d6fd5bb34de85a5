"""`callstate watch`: follow the server's journal live, or print its counters."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from typing import TYPE_CHECKING

from callstate.check import counted
from callstate.cli import COMMANDS
from callstate.cli.live.view import MODES, choose
from callstate.arg_types import positive_int
from callstate.cli.options import add_target, channel_settings
from callstate.cli.terminal import printable, stdout_gone

if TYPE_CHECKING:   # grpc loads when a watch starts, not for --help
    import grpc

COUNTERS_TIMEOUT = 5.0
REJOIN_S = 1.0           # a replica that stopped or was lost mid-watch is asked this often whether it is back
IN_FLIGHT_POLL_S = 0.5   # the dashboard's in-flight count comes from the server's counters
SHOWN_ID = 12            # an entry line shows the first characters of its call id; --call-id takes it whole
TARGET_FIELD = "target"  # with several --target, each --json line names the one it came from


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("watch", help=COMMANDS["watch"].help,
                       description="Follow the server's state log live through callstate.v1.Journal/Watch: on a "
                                   "terminal as a live dashboard (final codes and calls/s, in flight, recent "
                                   "cancels), otherwise one line per entry. It says \"watching\" once every "
                                   "--target has subscribed: a call made after that line is seen. A target that "
                                   "stops, or is lost, mid-watch is said at once and the others are still followed "
                                   "(exit 1 in the end when one was lost); it is asked every second whether it is "
                                   "back (a replica restarted), and followed again once it answers. Stop with Ctrl-C (exit 0; 130 before "
                                   "every target has answered).")
    add_target(p, several=True, timeout_help="stop watching after this long (exit 0; exit 1 when a target has not "
                                             "answered by then, or with --call-id when the call has not ended) "
                                             "(default: follow until Ctrl-C)")
    p.add_argument("--call-id", type=_call_id, default=None, help="only this call (its whole id: entry lines show its first "
                   f"{SHOWN_ID} characters, --json and the state logs all of it): its history so far, then its entries as they "
                   "come; exits once the call has ended on the server (at once for an ended call; exit 1 when the "
                   "server stops or --timeout runs out first); with several --target (replicas), it is looked for on each and "
                   "followed on the one that holds it (exit 1 when none does); an id no server takes (empty, not "
                   "printable ASCII, too long) is refused")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.add_argument("--counters", action="store_true",
                   help="print the server's counters once and exit (with several --target: their sums, said on stderr)")
    p.add_argument("--count", type=positive_int, metavar="N",
                   help="stop after N entries (default: follow until Ctrl-C)")
    p.add_argument("--dashboard", choices=MODES, default="auto",
                   help="a live dashboard instead of entry lines: calls/s per final code, in flight, recent "
                        "cancels and how long the server took to end them. auto: on a terminal (unless --json); "
                        "always: also when not on a terminal, as one plain status line a second (not with --json, "
                        "--call-id or --counters); never: entry lines (default: %(default)s)")
    return p


def _call_id(text: str) -> str:
    """--call-id's value: a call's whole id; an empty one (`--call-id "$ID"` with ID unset) names no
    call, and a watch of every call in its place would look like the call's; one no server takes
    (a copied id with a smart quote or a space of another script in it) would be waited for ever."""
    from callstate.script import LONGEST_CALL_ID, RequestError, Limits, check_call_id

    if not text:
        raise argparse.ArgumentTypeError("an empty call id names no call: give the call's whole id")
    try:
        check_call_id(text, Limits(max_call_id_bytes=LONGEST_CALL_ID))
    except RequestError as exc:
        shown = repr(text) if len(text) <= SHOWN_ID * 5 else f"{text[:SHOWN_ID]!r}..."
        raise argparse.ArgumentTypeError(f"{printable(shown)}: no call has such an id: {exc.message}") from None
    return text


def run(opts: argparse.Namespace) -> int:
    opts.settings = channel_settings(opts)
    opts.call_id = opts.call_id or ""   # None: every call (a default string would go through _call_id)
    twice = sorted({t for t in opts.target if opts.target.count(t) > 1})
    if twice:   # its every entry would be shown twice, its counters summed twice
        opts.target_parser.error(f"--target {', '.join(twice)} given more than once: each server once")
    if opts.counters and (unused := [flag for flag, given in (("--call-id", opts.call_id), ("--count", opts.count))
                                     if given]):   # the whole server's counters would be printed as if for them
        opts.target_parser.error(f"--counters prints the whole server's counters once: {' and '.join(unused)} "
                                 "would be ignored")
    if opts.dashboard == "always" and (other := [flag for flag, given in (
            ("--json", opts.json), ("--call-id", opts.call_id), ("--counters", opts.counters)) if given]):
        # --json's lines were replaced by the dashboard's plain ones; --call-id and --counters print no dashboard
        opts.target_parser.error(f"--dashboard always draws the dashboard in place of entry lines, and "
                                 f"{' and '.join(other)} {'asks' if len(other) == 1 else 'ask'} for another output: give one of them")
    try:
        return asyncio.run(_watch(opts))
    except KeyboardInterrupt:
        return 0


def counters_dict(c) -> dict:  # type: ignore[no-untyped-def, type-arg]
    """The Journal's counters as printed by `watch --counters`."""
    return {"in_flight": c.in_flight, "dispatched": c.dispatched, "ended": c.ended,
            "cancels_seen": c.cancels_seen, "by_state": dict(c.by_state),
            "by_code": {str(k): v for k, v in c.by_code.items()},
            "journal_calls": c.journal_calls, "watch_dropped": c.watch_dropped}


def merged_counters(counters: list) -> dict:  # type: ignore[type-arg]
    """Several servers' counters (replicas) as one: every count summed."""
    total: dict = {}  # type: ignore[type-arg]
    for c in counters:
        for key, value in counters_dict(c).items():
            if isinstance(value, dict):
                into = total.setdefault(key, {})
                for k, v in value.items():
                    into[k] = into.get(k, 0) + v
            else:
                total[key] = total.get(key, 0) + value
    return total


async def _watch(opts: argparse.Namespace) -> int:
    import grpc

    settings = opts.settings
    targets: list[str] = opts.target   # one or more (replicas): their entries are merged as they arrive
    channels = [settings.aio_channel(target) for target in targets]
    watch = _Watch(opts, targets, channels)
    try:
        if opts.counters:
            return await watch.counters()
        if opts.call_id:
            holder = 0 if len(targets) == 1 else await watch.holder()
            if holder is None:
                return 1
            watch.failed = targets[holder]
            return await _watch_call(watch.stubs[holder], opts, watch, targets[holder])
        return await watch.entries()
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and not opts.counters:
            if watch.subscribed:   # --timeout: the watch lasted as long as asked
                return 1 if watch.lost else 0
            print(f"callstate watch: {watch.failed}: no answer within --timeout {opts.timeout:g} s (nothing was "
                  "watched)", file=sys.stderr)
            return 1
        await watch.say_failed_why(watch.failed, err)
        return 1
    finally:
        for channel in channels:
            await channel.close()


class _Watch:
    """The journal of one or more servers, followed: their counters, or their entries merged
    as they arrive, as lines or on the dashboard."""

    def __init__(self, opts: argparse.Namespace, targets: list[str], channels: list) -> None:  # type: ignore[type-arg]
        from callstate.v1 import callstate_pb2_grpc as pb_grpc

        self.opts, self.targets, self.metadata = opts, targets, opts.settings.metadata
        self.stubs = [pb_grpc.JournalStub(channel) for channel in channels]
        self.failed = ""   # the target whose RPC failed
        self.subscribed = False   # every target answered: --timeout ends the watch from then on
        self.seen = 0
        self.done = asyncio.Event()   # --count reached
        self.dashboard: _Dashboard | None = None
        self.lost: list[str] = []      # targets lost mid-watch while others were still followed
        self.over = 0                  # targets whose stream ended (stopped, or lost), until followed again
        self.closing = asyncio.Event()  # the watch is ending: no target is followed again
        self._ends_at: float | None = None   # --timeout's end, on the monotonic clock

    async def holder(self) -> int | None:
        """--call-id with several targets (replicas): the index of the one whose journal holds the
        call (the first, when several do: the id was used on each), asked of all at once. None when
        none holds it, said in one line (with a line for each target that did not answer)."""
        import grpc

        from callstate.v1 import callstate_pb2 as pb

        call_id = self.opts.call_id

        async def ask(stub) -> grpc.aio.AioRpcError | None:  # type: ignore[no-untyped-def]
            try:
                await stub.GetCall(pb.GetCallRequest(call_id=call_id), metadata=self.metadata,
                                   timeout=self.opts.timeout or COUNTERS_TIMEOUT)
            except grpc.aio.AioRpcError as err:
                return err
            return None

        answers = await asyncio.gather(*(ask(stub) for stub in self.stubs))
        holders = [i for i, err in enumerate(answers) if err is None]
        if len(holders) > 1:
            print(f"callstate watch: call {printable(repr(call_id))} is on {', '.join(self.targets[i] for i in holders)}"
                  f": following it on {self.targets[holders[0]]}", file=sys.stderr, flush=True)
        if holders:
            return holders[0]
        for target, err in zip(self.targets, answers):
            if err is not None and err.code() != grpc.StatusCode.NOT_FOUND:
                await self.say_failed_why(target, err)
        absent = [t for t, err in zip(self.targets, answers) if err is not None and err.code() == grpc.StatusCode.NOT_FOUND]
        if absent:
            print(f"callstate watch: no call {printable(repr(call_id))} on {', '.join(absent)} (never made there, or "
                  "ended longer ago than its journal keeps: --journal-size)", file=sys.stderr, flush=True)
        return None

    async def counters(self) -> int:
        """Print the counters once (summed over the targets)."""
        import orjson

        from callstate.v1 import callstate_pb2 as pb

        counters = []
        for target, stub in zip(self.targets, self.stubs):
            self.failed = target
            counters.append(await stub.GetCounters(pb.CountersRequest(), metadata=self.metadata,
                                                   timeout=self.opts.timeout or COUNTERS_TIMEOUT))
        merged = counters_dict(counters[0]) if len(counters) == 1 else merged_counters(counters)
        if len(counters) > 1:   # one server's figures would read the same: say they are totals
            print(f"callstate watch: the counters of {len(counters)} servers, summed", file=sys.stderr, flush=True)
        try:
            print(orjson.dumps(merged, option=orjson.OPT_INDENT_2).decode(), flush=True)
        except BrokenPipeError:   # `| head`: its reader has what it wanted
            stdout_gone()
        return 0

    async def entries(self) -> int:
        """Follow every target's Watch stream until each ended, one failed (a replica lost while
        others are followed only says so), --count was reached or Ctrl-C. "watching" is said once
        every target has subscribed (its response headers, which the server sends as it subscribes
        the stream): a call made after that line is seen."""
        from callstate.v1 import callstate_pb2 as pb

        opts = self.opts
        streams = [stub.Watch(pb.WatchRequest(call_id=opts.call_id), metadata=self.metadata, timeout=opts.timeout)
                   for stub in self.stubs]
        # Ctrl-C / SIGTERM end the streams by cancelling the calls themselves: cancelling the task
        # that iterates a grpc.aio stream (what asyncio.run does on SIGINT) can hang the exit.
        # Installed first: a stalled target may never answer the subscription.
        stop, signalled = asyncio.Event(), []
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda sig=sig: (signalled.append(sig), stop.set()))
        if waiting := [self.targets[i] for i in await self._subscribed(streams, stop)]:
            # interrupted before those answered (the others had: their streams go on, unfinished)
            for stream in streams:
                stream.cancel()
            print(f"callstate watch: stopped before {', '.join(waiting)} answered (not subscribed)",
                  file=sys.stderr, flush=True)
            return 128 + signalled[0]
        if not any(stream.done() for stream in streams) and await self._marked(streams):   # else its reader says why
            self.subscribed = True
            print(f"watching {', '.join(self.targets)} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        mode = "never" if opts.json and opts.dashboard == "auto" else opts.dashboard
        if choose(mode, sys.stdout):
            self.dashboard = _Dashboard(self.stubs, choose(mode, sys.stdout), ", ".join(self.targets), self.metadata)
        self._ends_at = None if opts.timeout is None else time.monotonic() + opts.timeout
        readers = [asyncio.ensure_future(self.follow(i, streams)) for i in range(len(self.targets))]
        try:
            await self._until_over(readers, stop)
        finally:
            await self._close(readers, streams)
        for reader in readers:
            if _failed(reader):
                raise reader.exception()  # type: ignore[misc]
        return 1 if self.lost else 0

    @staticmethod
    async def _marked(streams: list) -> bool:  # type: ignore[type-arg]
        """Whether every stream's headers are a callstate server's, sent as it subscribed (not a
        proxy's, whose error status is still on its way)."""
        import grpc

        for stream in streams:
            try:
                headers = await stream.initial_metadata()
            except grpc.aio.AioRpcError:
                return False
            if not _watching(headers):
                return False
        return True

    @staticmethod
    async def _subscribed(streams: list, stop: asyncio.Event) -> list[int]:  # type: ignore[type-arg]
        """Wait for every stream's response headers (or its end: a failure, told by its
        reader); when Ctrl-C / SIGTERM came first, the indices of the streams that had not
        answered (else none)."""
        waits = [asyncio.ensure_future(stream.initial_metadata()) for stream in streams]
        stopper = asyncio.ensure_future(stop.wait())
        pending = set(waits)
        while pending and not stop.is_set():
            _, pending = await asyncio.wait(pending | {stopper}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(stopper)
        stopper.cancel()
        waiting = [i for i, wait in enumerate(waits) if not wait.done()]
        for wait in waits:
            if not wait.done():
                wait.cancel()
            elif not wait.cancelled():
                wait.exception()   # a stream that failed: its reader says how
        return waiting

    async def _until_over(self, readers: list[asyncio.Future[None]], stop: asyncio.Event) -> None:
        stopper, counted = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.done.wait())
        try:
            pending = set(readers)
            while pending:
                finished, pending = await asyncio.wait(pending | {stopper, counted},
                                                       return_when=asyncio.FIRST_COMPLETED)
                pending -= {stopper, counted}
                if stopper in finished or counted in finished or any(_failed(r) for r in finished):
                    return
        finally:
            stopper.cancel()
            counted.cancel()

    async def _close(self, readers: list[asyncio.Future[None]], streams: list) -> None:  # type: ignore[type-arg]
        import grpc

        self.closing.set()   # a reader waiting for its server to come back gives up
        for reader, stream in zip(readers, streams):
            if not reader.done():
                stream.cancel()
                try:
                    await reader
                except (asyncio.CancelledError, grpc.aio.AioRpcError):
                    pass
        if self.dashboard is not None:
            await self.dashboard.stop()

    async def follow(self, i: int, streams: list) -> None:  # type: ignore[type-arg]
        """Follow target i's stream (streams[i]); when it stops or is lost while others are still
        followed, follow it again once it answers (a replica restarted), in streams[i]."""
        target = self.targets[i]
        while True:
            await self._follow_stream(target, streams[i])
            if self.done.is_set() or len(self.targets) == 1 or not await self._rejoin(i, streams):
                return

    async def _rejoin(self, i: int, streams: list) -> bool:  # type: ignore[type-arg]
        """Target i's stream ended while others are followed: subscribe again every REJOIN_S until
        it answers as a callstate server (True, said), or the watch is over (False)."""
        import grpc

        from callstate.v1 import callstate_pb2 as pb

        target = self.targets[i]
        while self.over < len(self.targets) and not self.done.is_set():
            try:
                await asyncio.wait_for(self.closing.wait(), REJOIN_S)
                return False
            except asyncio.TimeoutError:
                pass
            left = None if self._ends_at is None else self._ends_at - time.monotonic()
            if left is not None and left <= 0:
                return False
            streams[i] = stream = self.stubs[i].Watch(pb.WatchRequest(call_id=self.opts.call_id),
                                                      metadata=self.metadata, timeout=left)
            try:
                headers = await asyncio.wait_for(stream.initial_metadata(), COUNTERS_TIMEOUT)
            except (asyncio.TimeoutError, grpc.aio.AioRpcError):
                stream.cancel()
                continue
            if _watching(headers):
                self.over -= 1
                self._tell(f"callstate watch: {target} answers again: following it again (entries made while it "
                           "was away are not shown)")
                return True
            stream.cancel()   # a proxy's answer in its place
        return False

    async def _follow_stream(self, target: str, stream) -> None:  # type: ignore[no-untyped-def]
        import grpc

        dropped = 0
        try:
            async for e in stream:
                if e.dropped > dropped:   # the server's buffer for this stream overflowed: say so
                    self._lost(target, e.dropped - dropped, e.dropped)
                    dropped = e.dropped
                self.show(e, target)
                if self.opts.count and self.seen >= self.opts.count:
                    self.done.set()
                    return
        except grpc.aio.AioRpcError as err:
            self.failed = target
            others = self.over + 1 < len(self.targets)   # still followed
            if not (others and self.subscribed and err.code() == grpc.StatusCode.UNAVAILABLE):
                raise
            # A replica lost (killed, cut off): said now (above the dashboard's frame when it is
            # drawn), and the others are still followed, as when one stops gracefully; the watch
            # exits 1 in the end.
            self.over += 1
            self.lost.append(target)
            self.say_failed(target, err)
            return
        self.over += 1
        # The server ends the streams only when it stops (after every call's End): said at once, the
        # other targets may be followed for long after.
        self._tell(f"callstate watch: {target} ended the stream: the server is stopping")

    async def say_failed_why(self, target: str, err: grpc.aio.AioRpcError) -> None:
        """`say_failed`, or what answered in place of a callstate server: a proxy whose upstream is
        down or failing (one probe call finds its HTTP status when the error named none)."""
        from callstate.cli.proxy_answer import diagnose
        from callstate.v1 import callstate_pb2 as pb

        stub = self.stubs[self.targets.index(target)]
        answer = await diagnose(err, lambda: stub.GetCounters(pb.CountersRequest(), metadata=self.metadata,
                                                             timeout=COUNTERS_TIMEOUT))
        if answer is None:
            self.say_failed(target, err)
        elif self.subscribed:   # a callstate server answered first: the stream was cut, the proxy answers now
            cut = " ".join(f"{err.code().name}: {err.details() or ''}".split())
            print(printable(f"callstate watch: {target}: the watch was cut ({cut}), and {target} now answers "
                            f"{answer}"), file=sys.stderr, flush=True)
        else:
            print(printable(f"callstate watch: {target} answered {answer}"), file=sys.stderr, flush=True)

    def say_failed(self, target: str, err: grpc.aio.AioRpcError) -> None:
        import grpc

        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:   # counters, or a call looked for on replicas
            waited = (f"{self.opts.timeout:g} s (--timeout)" if self.opts.timeout else
                      f"{COUNTERS_TIMEOUT:g} s (--timeout waits longer)")
            self._tell(f"callstate watch: {target}: no answer within {waited}: is the server stopped (SIGSTOP), "
                       "hung or overloaded?")
            return
        if self.subscribed and err.code() == grpc.StatusCode.UNAVAILABLE:
            # it answered before: not a TLS or address mistake (what explain() would suggest)
            details = err.details() or ""
            keepalive = self.opts.settings.keepalive
            if "ping timeout" in details and keepalive:   # the connection is up: its peer went silent
                why = (f"the server stopped answering while watching, not even keepalive pings within {keepalive:g} s "
                       f"(--keepalive): is it stopped (SIGSTOP) or hung? ({details})")
            else:
                why = "the connection was lost while watching (the server was killed or became unreachable): " + details
        else:
            why = self.opts.settings.explain(err.code(), err.details())
        self._tell(printable(f"callstate watch: {target}: {err.code().name}: {why}"))

    def _tell(self, text: str) -> None:
        """A line of news on stderr, or above the dashboard's frame while one is drawn on the
        terminal (a line on stderr would scribble over it)."""
        if self.dashboard is not None and self.dashboard.drawn:
            self.dashboard.view.say(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def _lost(self, target: str, lost: int, in_all: int) -> None:
        print(f"callstate watch: {counted(lost, 'entry', 'entries')} lost (this watcher was too slow; {in_all} in all)"
              + (f" from {target}" if len(self.targets) > 1 else ""), file=sys.stderr, flush=True)

    def show(self, e, target: str) -> None:  # type: ignore[no-untyped-def]
        from callstate.cli.terminal import line
        from callstate.statelog import proto_to_dict

        d = proto_to_dict(e)
        if self.dashboard is not None:
            self.dashboard.entry(d)
            self.seen += 1
            return
        # merged from several servers: each line names the one it came from (a call lives on one;
        # the same id on two replicas is two calls)
        several = len(self.targets) > 1
        if self.opts.json:
            text = line({**d, TARGET_FIELD: target} if several else d, True)
        else:
            text = (f"{printable(target)}  " if several else "") + f"{printable(e.call_id[:SHOWN_ID])}  {line(d, False)}"
        if not _printed(text):
            self.done.set()   # `| head`: its reader has what it wanted, the watch is over
        self.seen += 1


def _printed(text: str) -> bool:
    """Print a line on stdout; False when its reader has gone away (`| head`)."""
    try:
        print(text, flush=True)
        return True
    except BrokenPipeError:
        stdout_gone()
        return False


def _failed(task: asyncio.Future[None]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is not None


async def _watch_call(stub, opts: argparse.Namespace, watch: _Watch, target: str) -> int:  # type: ignore[no-untyped-def]
    """One call: subscribe first (Follow says when it is in place), then read its history, so
    no entry falls between the two; print both, each entry once, and stop at its server End."""
    import grpc

    from callstate.cli.terminal import line
    from callstate.lifecycle import END, ENTER, SERVER
    from callstate.statelog import proto_to_dict
    from callstate.v1 import callstate_pb2 as pb

    settings = opts.settings
    stream = stub.Follow(pb.WatchRequest(call_id=opts.call_id), metadata=settings.metadata, timeout=opts.timeout)
    printed: set[tuple[str, str, str, str]] = set()
    count = 0

    def show(e: pb.StateEntry) -> bool:
        """Print `e` once; True when the watch is over (the call ended, or --count reached)."""
        nonlocal count
        key = (e.ts, e.side, e.state, e.event)
        if key not in printed:
            printed.add(key)
            d = proto_to_dict(e)
            if not _printed(line(d, True) if opts.json else f"{printable(e.call_id[:SHOWN_ID])}  {line(d, False)}"):
                return True   # `| head`: its reader has what it wanted
            count += 1
        return (e.side == SERVER and e.state == END and e.event == ENTER) or bool(opts.count and count >= opts.count)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def follow() -> bool:
        """True once the watch is over (see show); False when the server ended the stream first."""
        subscribed, dropped = False, 0
        async for batch in stream:
            if batch.dropped > dropped:   # the server's buffer for this stream overflowed: say so
                watch._lost(target, batch.dropped - dropped, batch.dropped)
                dropped = batch.dropped
            if not subscribed:   # the first message: entries from now on reach this stream
                subscribed = watch.subscribed = True
                try:
                    history = await stub.GetCall(pb.GetCallRequest(call_id=opts.call_id), metadata=settings.metadata,
                                                 timeout=opts.timeout or COUNTERS_TIMEOUT)
                except grpc.aio.AioRpcError as err:
                    if err.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                    whole = (f"; the whole id is needed: an entry line shows its first {SHOWN_ID} characters, "
                             "--json and the state logs all of it" if len(opts.call_id) == SHOWN_ID else "")
                    print(f"callstate watch: no call {opts.call_id!r} on the server yet (or no longer in its "
                          f"journal): waiting for it (Ctrl-C to stop){whole}", file=sys.stderr, flush=True)
                else:
                    if history.omitted:   # a long pipe's message entries, events past the per-call cap
                        print(f"callstate watch: the server's reply leaves out "
                              f"{counted(history.omitted, 'entry', 'entries')} of this "
                              "call's history (messages and events from its middle; the server's state log has "
                              "them all)", file=sys.stderr, flush=True)
                    if any([show(e) for e in history.entries]) or history.ended:
                        return True
            if any([show(e) for e in batch.entries]):
                return True
        return False

    reader, stopper = asyncio.ensure_future(follow()), asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        stream.cancel()
        if not reader.done():
            try:
                await reader
            except asyncio.CancelledError:
                pass
    if reader.done() and not reader.cancelled() and (exc := reader.exception()) is not None:
        if not (watch.subscribed and _ran_out(exc)):
            raise exc
        # --timeout ran out with the call still going (or not there yet): not what the watch waited for
        how = "its entries shown above" if printed else "no entry of it came"
        print(f"callstate watch: --timeout {opts.timeout:g} s ran out before call {printable(repr(opts.call_id))} "
              f"ended on {target} ({how})", file=sys.stderr, flush=True)
        return 1
    if reader.done() and not reader.cancelled() and not reader.result():
        print(f"callstate watch: {target} ended the stream: the server is stopping, and call "
              f"{printable(repr(opts.call_id))} had not ended there", file=sys.stderr, flush=True)
        return 1
    return 0


def _ran_out(exc: BaseException) -> bool:
    import grpc
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED


class _Dashboard:
    """The live view of the journal: server-side final codes, in flight, recent cancels."""

    def __init__(self, stubs: list, mode: str, target: str, metadata: tuple = ()) -> None:  # type: ignore[type-arg]
        from callstate.cli.live.stats import LiveStats
        from callstate.cli.live.view import LIVE, LiveView
        from callstate.lifecycle import SERVER

        self.stubs = stubs   # one per target: the in-flight count is their sum
        self.metadata = metadata   # the token, for a server that requires one
        self.stats = LiveStats(SERVER)
        self.view = LiveView(self.stats, sys.stdout, mode, f"callstate watch → {target}")
        self.drawn = mode == LIVE   # a frame redrawn on the terminal (not plain lines)
        self.view.start()
        self.poll = asyncio.ensure_future(self._poll_in_flight())

    def entry(self, d: dict) -> None:  # type: ignore[type-arg]
        from callstate.statelog import parse_ts

        self.stats.entry(d["side"], d["call_id"], d["state"], d["event"], parse_ts(d["ts"]), d.get("code"),
                         d.get("cancel"), d.get("detail"))

    async def _poll_in_flight(self) -> None:
        from callstate.v1 import callstate_pb2 as pb

        async def in_flight(stub) -> int | None:  # type: ignore[no-untyped-def]
            try:
                return (await stub.GetCounters(pb.CountersRequest(), metadata=self.metadata,
                                               timeout=COUNTERS_TIMEOUT)).in_flight
            except Exception:   # a lost replica: its stream says so; the others' count goes on
                return None

        while True:   # every replica asked at once: one that does not answer holds up no other
            known = [n for n in await asyncio.gather(*map(in_flight, self.stubs)) if n is not None]
            if known:
                self.stats.in_flight = sum(known)
            await asyncio.sleep(IN_FLIGHT_POLL_S)

    async def stop(self) -> None:
        # Wait for the poll to be cancelled: its GetCounters call must be gone before the
        # channel closes, or closing the channel can wait for it forever.
        self.poll.cancel()
        try:
            await self.poll
        except (asyncio.CancelledError, Exception):
            pass
        self.view.stop()
        self.drawn = False   # news from now on goes to stderr


def _watching(headers) -> bool:  # type: ignore[no-untyped-def]
    """Whether a Watch stream's response headers are a callstate server's, sent as it subscribed
    the stream (not a proxy's, whose error status is still on its way)."""
    from callstate.wire import WATCHING_KEY

    return any(key == WATCHING_KEY for key, _ in headers or ())
