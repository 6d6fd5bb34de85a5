"""The server's wake-ups (`callstate.server.wakeups`): every waiting call's end on one loop timer,
in order, none for a wait that was dropped, and the heap rebuilt once dropped entries are half of
it. On each event loop callstate serves on (asyncio's, uvloop's)."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any, Callable

import pytest

from callstate.server.wakeups import Wakeups

pytestmark = pytest.mark.unit

LOOPS: list[Any] = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(
    importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed here"))]


def on_loop(name: str, main: Callable[[], Any]) -> Any:
    if name == "uvloop":
        import uvloop
        return uvloop.run(main())
    return asyncio.run(main())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_wakeups_resolve_in_the_order_of_their_times_each_not_before_its_own(loop_name: str) -> None:
    waits = {"late": 0.08, "early": 0.01, "middle": 0.04}   # armed in this order

    async def main() -> list[tuple[str, float]]:
        wakeups, woken = Wakeups(), []
        loop = asyncio.get_running_loop()
        start = loop.time()
        futures = []
        for name, seconds in waits.items():
            f = loop.create_future()
            f.add_done_callback(lambda _, n=name: woken.append((n, loop.time() - start)))
            wakeups.after(seconds, f)
            futures.append(f)
        await asyncio.wait_for(asyncio.gather(*futures), 5)
        assert wakeups.waiting() == 0
        return woken
    woken = on_loop(loop_name, main)
    assert [name for name, _ in woken] == ["early", "middle", "late"]
    for name, elapsed in woken:   # the loop's clock; libuv's timers have 1 ms granularity
        assert elapsed >= waits[name] - 0.001, (name, elapsed)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_dropped_wakeup_never_resolves_its_future(loop_name: str) -> None:
    async def main() -> tuple[bool, bool]:
        wakeups = Wakeups()
        loop = asyncio.get_running_loop()
        dropped, kept = loop.create_future(), loop.create_future()
        entry = wakeups.after(0.01, dropped)
        wakeups.after(0.03, kept)
        wakeups.drop(entry)
        wakeups.drop(entry)   # twice: the second is nothing
        assert wakeups.waiting() == 1
        await kept
        return dropped.done(), kept.done()
    assert on_loop(loop_name, main) == (False, True)


def test_a_thousand_waits_arm_one_timer_on_the_loop() -> None:
    """What the module is for: 1,000 held calls, one loop timer (asyncio's own list of them)."""
    async def main() -> int:
        wakeups = Wakeups()
        loop = asyncio.get_running_loop()
        before = len(loop._scheduled)   # type: ignore[attr-defined]
        for i in range(1000):
            wakeups.after(600 + i, loop.create_future())
        return len(loop._scheduled) - before   # type: ignore[attr-defined]
    assert asyncio.run(main()) == 1


def test_an_earlier_wait_rearms_the_one_timer_and_resolves_first() -> None:
    async def main() -> tuple[bool, int]:
        wakeups = Wakeups()
        loop = asyncio.get_running_loop()
        far, near = loop.create_future(), loop.create_future()
        wakeups.after(600, far)
        wakeups.after(0.01, near)
        armed = sum(not h.cancelled() for h in loop._scheduled)   # type: ignore[attr-defined]
        await asyncio.wait_for(near, 5)
        return far.done(), armed
    assert asyncio.run(main()) == (False, 1)


def test_dropped_entries_leave_the_heap_once_they_are_half_of_it() -> None:
    """10,000 held calls cancelled long before --max-hold: the heap does not keep them all."""
    async def main() -> tuple[int, int]:
        wakeups = Wakeups()
        loop = asyncio.get_running_loop()
        entries = [wakeups.after(600, loop.create_future()) for _ in range(10_000)]
        for e in entries[:9_000]:
            wakeups.drop(e)
        return wakeups.waiting(), len(wakeups._heap)
    waiting, kept = asyncio.run(main())
    assert waiting == 1_000
    assert kept <= 2 * waiting + 1, kept


def test_a_second_loop_starts_afresh() -> None:
    """A server started again on a new loop: the old loop's entries are not carried over."""
    wakeups = Wakeups()

    async def hold() -> None:
        wakeups.after(600, asyncio.get_running_loop().create_future())

    async def wake() -> bool:
        f = asyncio.get_running_loop().create_future()
        wakeups.after(0.01, f)
        await asyncio.wait_for(f, 5)
        return wakeups.waiting() == 0

    asyncio.run(hold())
    assert asyncio.run(wake())


def test_the_servers_held_calls_wait_on_its_one_timer_and_a_cancel_drops_theirs() -> None:
    """The dispatcher's calls: 500 held, one loop timer among them; a cancel wakes its call at
    once and its wait leaves the count."""
    from callstate.lifecycle import ABORTIVE
    from callstate.server.config import EmulatorConfig
    from callstate.server.dispatch import Dispatcher
    from callstate.server.journal import Journal

    async def main() -> None:
        loop = asyncio.get_running_loop()
        d = Dispatcher(EmulatorConfig(), Journal(), lambda entry: None)
        before = len(loop._scheduled)   # type: ignore[attr-defined]
        calls = [d.dispatch(f"held-{i}", "", "hold", None) for i in range(500)]   # type: ignore[arg-type]
        waits = [c.wake_after(600) for c in calls]
        assert d.wakeups.waiting() == 500
        assert len(loop._scheduled) - before == 1   # type: ignore[attr-defined]
        calls[7].cancel_seen(ABORTIVE)
        await asyncio.wait_for(waits[7], 5)
        calls[7].stop_timer()
        assert d.wakeups.waiting() == 499 and not any(w.done() for i, w in enumerate(waits) if i != 7)
    asyncio.run(main())


def test_a_callback_is_called_when_due_and_one_that_raises_leaves_the_later_ones_armed() -> None:
    """A pipe's --max-hold watchdog is a callback on the same timer (server/pipes.py)."""
    async def main() -> tuple[list[str], list[Any]]:
        wakeups, called, reported = Wakeups(), [], []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: reported.append(context.get("exception")))
        done = loop.create_future()

        def boom() -> None:
            called.append("boom")
            raise RuntimeError("a watchdog that fails")

        wakeups.after(0.01, boom)
        wakeups.after(0.02, lambda: called.append("later"))
        wakeups.after(0.03, done)
        await asyncio.wait_for(done, 5)
        return called, reported
    called, reported = asyncio.run(main())
    assert called == ["boom", "later"]
    assert len(reported) == 1 and isinstance(reported[0], RuntimeError)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_dropping_a_wakeup_that_already_came_counts_nothing(loop_name: str) -> None:
    """A handler drops its wait's entry once it stops waiting, whether a cancel cut the wait short
    or the wait ran out (server/emulator.py, `stop_timer` in a finally): the second is not a
    dropped entry, and must not count as one (nor bring on a rebuild of the heap)."""
    async def main() -> tuple[int, int]:
        wakeups = Wakeups()
        loop = asyncio.get_running_loop()
        held = loop.create_future()
        wakeups.after(600, held)
        for _ in range(200):   # more than the rebuild's floor of waits that ran out, each then dropped
            ran_out = loop.create_future()
            entry = wakeups.after(0.001, ran_out)
            await asyncio.wait_for(ran_out, 5)
            wakeups.drop(entry)
        return wakeups.waiting(), wakeups._dropped
    assert on_loop(loop_name, main) == (1, 0)


def test_a_held_pipes_max_hold_watchdog_is_on_the_servers_one_timer() -> None:
    """A real server in this loop: a held out pipe's --max-hold watchdog is an entry among the
    server's wake-ups while it is held, and gone once its caller cancelled it."""
    import grpc

    from callstate.server.app import EmulatorServer
    from callstate.v1 import callstate_pb2 as pb
    from callstate.v1 import callstate_pb2_grpc as pb_grpc

    async def main() -> tuple[int, int]:
        async with EmulatorServer(port=0, log=None, max_hold=60) as server:
            wakeups = server.emulator.dispatcher.wakeups   # type: ignore[union-attr]
            async with grpc.aio.insecure_channel(server.target) as channel:
                pipe = pb_grpc.EmulatorStub(channel).PipeOut(pb.PipeRequest(
                    call_id="held-pipe", script=pb.PipeScript(outcome=pb.OUTCOME_HOLD)))
                for _ in range(500):   # until the server dispatched it (no sleep as a guess: a bound)
                    if wakeups.waiting():
                        break
                    await asyncio.sleep(0.01)
                held = wakeups.waiting()
                pipe.cancel()
                for _ in range(500):
                    if not wakeups.waiting():
                        break
                    await asyncio.sleep(0.01)
                return held, wakeups.waiting()
    assert asyncio.run(main()) == (1, 0)
