"""Audit 35 of the client library: where a call's done-callbacks run, and what becomes of one that
fails, held to one rule on both surfaces, for calls and pipes.

1. An abortive `cancel()` rushes the call-complete notification; its done-callbacks ran inside the
   caller's `cancel()` (sync: on the cancelling thread; asyncio: synchronously in the verb). In the
   model the callback runs on the runtime's thread, never inside RpcAsyncCancelCall: a caller that
   holds a lock across `cancel()` and a callback that takes it deadlocked, as did a callback that
   waits for what the caller does once `cancel()` returns. Now they run where an ordinary
   notification's run: on gRPC's thread (sync), on the loop after the verb (asyncio); the same for a
   cancel before start, and a completion queue's post.
2. A callback's BaseException (pytest.fail()) reaches the caller's next wait on every call object of
   both surfaces: the rushed notification raised it out of `cancel()` instead, and a client's
   `close()` raised it half-way (the other calls left unended).
"""

from __future__ import annotations

import asyncio
import threading
import types
from typing import Any, Callable

import pytest

from callstate.client import (AsyncClient, CallError, Client, CompletionQueue, InvalidAsyncHandle, PipeScript,
                              Script)
from callstate.client.call_core import CallCore
from callstate.client.client_base import ClientBase
from tests.conftest import ServerProcess

pytestmark = pytest.mark.timeout(120)

BOUND = 10.0        # a wait that must not be needed: it only bounds a defect
LOCK_BOUND = 3.0    # how long the callback tries for the canceller's lock (a deadlock, bounded)
HELD = PipeScript(outcome="hold")
OBJECTS = ["unary", "in", "out", "both"]


def _make(client: Any, what: str, **subscribe: Any) -> Any:
    """A held call or pipe (not started) with `on_complete=` or `queue=` (pipes: add_done_callback)."""
    if what == "unary":
        return client.prepare(Script("hold"), **subscribe)
    pipe = client.pipe(what, HELD)
    if "on_complete" in subscribe:
        pipe.add_done_callback(subscribe["on_complete"])
    if "queue" in subscribe:
        pipe.add_done_callback(subscribe["queue"].post)
    return pipe


class _Canceller:
    """A caller that holds its lock across `cancel()`, and a callback that takes that lock and waits
    for what the caller does once `cancel()` has returned: each with a bounded wait."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.returned = threading.Event()   # set by the caller once cancel() returned, lock still held
        self.ran = threading.Event()
        self.seen: list[tuple[int, bool, bool, int]] = []

    def callback(self, call: Any) -> None:
        took = self.lock.acquire(timeout=LOCK_BOUND)   # on the cancelling thread: never (a deadlock)
        if took:
            self.lock.release()
        self.seen.append((threading.get_ident(), took, self.returned.wait(LOCK_BOUND), call.status()))
        self.ran.set()

    def cancel(self, call: Any) -> None:
        with self.lock:
            call.cancel()
            self.returned.set()

    def check(self, call: Any) -> None:
        assert self.ran.wait(BOUND), "the callback never ran"
        with pytest.raises(CallError) as err:
            call.result(BOUND)
        assert err.value.code == 1818
        assert len(self.seen) == 1, self.seen   # once
        thread, took, returned, status = self.seen[0]
        assert thread != threading.get_ident(), "the callback ran inside the caller's cancel()"
        assert (took, returned, status) == (True, True, 1818), self.seen


# -- 1. no callback runs inside the caller's cancel() --------------------------------------------------------
@pytest.mark.parametrize("what", OBJECTS)
def test_a_sync_callback_that_takes_the_cancellers_lock_does_not_deadlock(shared_server: ServerProcess,
                                                                          what: str) -> None:
    """A sync `cancel()` ran the callbacks on the cancelling thread, under the caller's lock: the
    callback's acquire of that lock timed out (a deadlock with `with lock:`), and it never saw the
    caller go on. Now the rushed notification's callbacks run on gRPC's thread, once, with 1818."""
    canceller = _Canceller()
    with Client(shared_server.target) as client:
        call = _make(client, what, on_complete=canceller.callback).start()
        canceller.cancel(call)
        canceller.check(call)


@pytest.mark.parametrize("what", OBJECTS)
def test_a_sync_cancel_before_start_runs_its_callbacks_off_the_cancelling_thread(shared_server: ServerProcess,
                                                                                 what: str) -> None:
    """A cancel before start() has no RPC, so no gRPC thread will notify: its callbacks ran in
    `cancel()` too. Now on a thread of their own."""
    canceller = _Canceller()
    with Client(shared_server.target) as client:
        call = _make(client, what, on_complete=canceller.callback)
        canceller.cancel(call)
        assert canceller.ran.wait(BOUND), "the callback never ran"
        assert call.wait(BOUND) is True
        with pytest.raises(CallError) as err:
            call.complete()
        assert err.value.code == 1818 and call.history == ["C", "Can", "WComp", "Comp", "End"]
        assert len(canceller.seen) == 1 and canceller.seen[0][0] != threading.get_ident()
        assert canceller.seen[0][1:] == (True, True, 1818), canceller.seen


class _RecordingQueue(CompletionQueue):
    """A completion queue that notes the thread that posts to it."""

    def __init__(self) -> None:
        super().__init__()
        self.posters: list[int] = []

    def post(self, call: Any) -> None:
        self.posters.append(threading.get_ident())
        super().post(call)


@pytest.mark.parametrize("what", ["unary", "both"])
def test_a_completion_queue_is_posted_off_the_cancelling_thread(shared_server: ServerProcess, what: str) -> None:
    """The completion-queue style is a callback too: posted once, on gRPC's thread, never in `cancel()`."""
    with Client(shared_server.target) as client:
        cq = _RecordingQueue()
        call = _make(client, what, queue=cq).start()
        call.cancel()
        assert cq.get(timeout=BOUND) is call
        assert call.wait(BOUND) and cq.qsize() == 0
        assert len(cq.posters) == 1 and cq.posters[0] != threading.get_ident(), cq.posters


@pytest.mark.parametrize("what", OBJECTS)
def test_an_asyncio_callback_does_not_run_inside_cancel(shared_server: ServerProcess, what: str) -> None:
    """The asyncio `cancel()` ran the callbacks synchronously inside the verb (asyncio's own Future
    schedules them with call_soon). Now they run on the loop after it, once, with 1818, and before
    the caller's wait returns; the same for a cancel before start."""
    async def main() -> None:
        async with AsyncClient(shared_server.target) as aclient:
            for started in (True, False):
                seen: list[tuple[bool, int, str]] = []
                in_cancel = [False]

                def callback(call: Any) -> None:
                    seen.append((in_cancel[0], call.status(), call.state))

                call = _make(aclient, what, on_complete=callback)
                if started:
                    call.start()
                in_cancel[0] = True
                call.cancel()
                in_cancel[0] = False
                assert call.done() and call.status() == 1818   # still rushed
                # awaited in this task (wait_for's own task would let the loop run them first anyway);
                # a notified call's wait returns without waiting for anything else
                assert await call.wait(BOUND) is True
                assert seen == [(False, 1818, "WComp")], (started, seen)   # ran before the wait returned
                with pytest.raises(CallError) as err:
                    await asyncio.wait_for(call.result(), BOUND)
                assert err.value.code == 1818 and len(seen) == 1

    asyncio.run(main())


@pytest.mark.parametrize("what", ["unary", "out"])
def test_await_right_after_an_asyncio_cancel_runs_the_callbacks_first(shared_server: ServerProcess,
                                                                      what: str) -> None:
    """`await call` on a notified call takes a shortcut: it completed the call before the callbacks
    the cancel left on the loop had run. They run first, as they do for a wait."""
    async def main() -> None:
        async with AsyncClient(shared_server.target) as aclient:
            states: list[str] = []
            call = _make(aclient, what, on_complete=lambda c: states.append(c.state)).start()
            call.cancel()
            with pytest.raises(CallError) as err:
                await call   # in this task: notified, it completes without waiting for anything else
            assert err.value.code == 1818 and states == ["WComp"]

    asyncio.run(main())


def _completes_inside(record: list[Any], ran: threading.Event) -> Callable[[Any], None]:
    """A callback that polls and completes the call from inside."""
    def callback(call: Any) -> None:
        record.append(call.status())
        try:
            call.complete()
        except CallError as err:
            record.append(err.code)
        ran.set()
    return callback


@pytest.mark.parametrize("what", ["unary", "in", "both"])
def test_a_callback_that_completes_the_call_from_inside(shared_server: ServerProcess, what: str) -> None:
    """The callback may poll and complete the call itself (its complete() is the final one, 1818);
    the caller's complete() after it is 1914, on both surfaces."""
    record: list[Any] = []
    ran = threading.Event()
    with Client(shared_server.target) as client:
        call = _make(client, what, on_complete=_completes_inside(record, ran)).start()
        call.cancel()
        assert ran.wait(BOUND) and call.wait(BOUND)
        assert record == [1818, 1818] and call.history[-1] == "End" and call.code == 1818
        with pytest.raises(InvalidAsyncHandle):
            call.complete()

    async def main() -> None:
        async with AsyncClient(shared_server.target) as aclient:
            arecord: list[Any] = []
            acall = _make(aclient, what, on_complete=_completes_inside(arecord, threading.Event())).start()
            acall.cancel()
            assert await asyncio.wait_for(acall.wait(), BOUND) is True
            assert arecord == [1818, 1818] and acall.history[-1] == "End"
            with pytest.raises(InvalidAsyncHandle):
                acall.complete()

    asyncio.run(main())


# -- 2. a callback's BaseException reaches the caller's next wait, on pipes as on calls ------------------------
class _Failed(BaseException):
    """What pytest.fail() raises: not an Exception."""


def _fails(call: object) -> None:
    raise _Failed("the harness's callback found the call wrong")


@pytest.mark.parametrize("what", OBJECTS)
def test_a_callbacks_failure_on_a_cancel_reaches_the_next_wait_on_both_surfaces(shared_server: ServerProcess,
                                                                                what: str) -> None:
    """A callback that fails as pytest.fail() does, run by a rushed cancel: `cancel()` raised it (the
    unary core's default, `keep_failure=False`, where every other notification keeps it). Now
    `cancel()` returns and the caller's next wait raises it, once, on calls and pipes of both surfaces."""
    with Client(shared_server.target) as client:
        call = _make(client, what, on_complete=_fails).start()
        call.cancel()
        with pytest.raises(_Failed):
            call.wait(BOUND)
        assert call.wait(BOUND) is True   # raised once
        with pytest.raises(CallError) as err:
            call.result(BOUND)
        assert err.value.code == 1818

    async def main() -> None:
        async with AsyncClient(shared_server.target) as aclient:
            acall = _make(aclient, what, on_complete=_fails).start()
            acall.cancel()
            with pytest.raises(_Failed):
                await asyncio.wait_for(acall.wait(), BOUND)
            with pytest.raises(CallError) as err:
                await asyncio.wait_for(acall.result(), BOUND)
            assert err.value.code == 1818

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["out", "both"])
def test_a_pipe_callbacks_failure_on_its_end_reaches_the_next_wait(shared_server: ServerProcess, kind: str) -> None:
    """A pipe's notification delivered when its caller pulls the end (the sync pipe holds the
    server's status until then) kept a callback's BaseException for the caller's wait: the
    `keep_failure=True` of the pipe's deliveries, which nothing tested. Here the caller pulls every
    message itself; the failure is raised by its next wait, never by its pull, and (sync) the
    callback runs off the pulling thread."""
    script = PipeScript(messages=2)
    threads: list[int] = []

    def fails(pipe: Any) -> None:
        threads.append(threading.get_ident())
        _fails(pipe)

    with Client(shared_server.target) as client:
        pipe = client.pipe(kind, script).start()
        pipe.on_notification(fails)   # after the start: no drainer, the caller's own pulls let the status in
        if kind == "both":
            pipe.close_push()
        assert len(list(pipe)) == 2
        with pytest.raises(_Failed):
            pipe.wait(BOUND)
        pipe.result(BOUND)
        assert pipe.code == 0 and pipe.history[-1] == "End"
        assert len(threads) == 1 and threads[0] != threading.get_ident(), "it ran in the caller's pull"

    async def main() -> None:
        async with AsyncClient(shared_server.target) as aclient:
            apipe = aclient.pipe(kind, script).start()
            apipe.on_notification(_fails)
            if kind == "both":
                await apipe.close_push()
            assert len([m async for m in apipe]) == 2
            with pytest.raises(_Failed):
                await asyncio.wait_for(apipe.wait(), BOUND)
            await asyncio.wait_for(apipe.result(), BOUND)
            assert apipe.code == 0

    asyncio.run(main())


def test_close_ends_every_call_when_a_callback_fails() -> None:
    """`close()` notifies and completes each call still live: a callback's BaseException stopped it
    half-way, the calls after that one never ended (nor the log closed). Now every call ends, and
    the failure is the caller's next wait's."""
    calls = []
    for n in range(2):
        core = CallCore(f"call-{n}", None)
        core._starting = True
        core.started()   # C -> WComp, as a sent call
        core.add_done_callback(_fails)
        calls.append(core)
    ClientBase._end_live_calls(types.SimpleNamespace(_live=set(calls)))  # type: ignore[arg-type]
    assert [c.history[-1] for c in calls] == ["End", "End"] and {c.code for c in calls} == {1722}
    for core in calls:
        with pytest.raises(_Failed):
            core._after_wait()
        assert core._after_wait() is True


# -- 3. the twins agree ----------------------------------------------------------------------------------------
def test_an_asyncio_calls_done_turns_true_when_polled_as_the_sync_ones_does(shared_server: ServerProcess) -> None:
    """`done()` polled on a call nobody awaits: the sync `Call`'s turns True (gRPC's thread delivers
    the notification unasked), and so did `status()` on both surfaces and an `AsyncPipe`'s `done()`;
    an `AsyncCall`'s stayed False for ever (nothing read the reply: a harness that polls `done()`
    spun). Now it reads the outcome of an RPC that has ended, as `status()` does."""
    import time

    def polled(done: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + BOUND
        while not done() and time.monotonic() < deadline:
            time.sleep(0.005)
        return done()

    with Client(shared_server.target) as client:
        call = client.start(Script("complete"))
        assert polled(call.done) and call.status() == 0
        assert call.result(BOUND).call_id == call.call_id

    async def main() -> None:
        async with AsyncClient(shared_server.target) as aclient:
            acall = aclient.start(Script("complete"))
            deadline = time.monotonic() + BOUND
            while not acall.done() and time.monotonic() < deadline:   # polled, never awaited
                await asyncio.sleep(0.005)
            assert acall.done() and acall.status() == 0 and acall.state == "WComp"
            assert (await acall).call_id == acall.call_id

    asyncio.run(main())


def test_every_verb_documented_on_one_twin_is_documented_on_the_other() -> None:
    """`help()` on a sync `Pipe.pull`, `Pipe.result` or `CompletionQueue.post` said nothing, where
    the asyncio twin's says what it does."""
    import inspect
    from callstate.client import AsyncCall, AsyncCompletionQueue, AsyncPipe, Call, Pipe

    undocumented = []
    for sync, aio in ((Call, AsyncCall), (Pipe, AsyncPipe), (Client, AsyncClient), (CompletionQueue, AsyncCompletionQueue)):
        for name in sorted({n for n in dir(sync) if not n.startswith("_")} & {n for n in dir(aio) if not n.startswith("_")}):
            docs = [inspect.getdoc(getattr(cls, name)) if callable(getattr(cls, name)) else "" for cls in (sync, aio)]
            if bool(docs[0]) != bool(docs[1]):
                undocumented.append(f"{(sync if not docs[0] else aio).__name__}.{name}")
    assert not undocumented, undocumented


@pytest.mark.parametrize("what", ["unary", "both"])
def test_a_done_callback_may_cancel_another_call_and_wait_for_it(shared_server: ServerProcess, what: str) -> None:
    """A sync done-callback (on gRPC's thread) that cancels another call of its client and waits for
    it: the other call's callbacks are gRPC's thread's to run, and that thread is the one waiting.
    Its wait runs them first (they ran inside `cancel()` before, the rule this audit ended), so the
    wait returns at once with 1818 and the other call's callback has run, once, on that thread."""
    got: list[Any] = []
    ran = threading.Event()
    with Client(shared_server.target) as client:
        other = _make(client, what, on_complete=lambda c: got.append(("callback", threading.get_ident())))

        def on_first(first: Any) -> None:
            other.cancel()
            try:
                other.result(BOUND)
            except CallError as err:
                got.append(("result", err.code, threading.get_ident()))
            ran.set()

        other.start()
        client.start(Script("complete"), on_complete=on_first)
        assert ran.wait(BOUND + 5)
        assert [g[:2] for g in got] == [("callback", got[0][1]), ("result", 1818)], got
        assert got[0][1] == got[1][2] != threading.get_ident()   # gRPC's thread, which waited
