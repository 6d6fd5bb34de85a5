"""A test engineer's harness on the client library and the pytest plugin (audit 32): thread pools
pushing and cancelling, done-callbacks that fail the way pytest fails, waits bounded by
`math.inf`, pipes waited on for a while and then pulled by hand, and a user's own methods on an
in-process server. Each test is something such a harness hit: a hang, an exception from deep
inside threading or gRPC, or a stall with a message that blamed the wrong thing."""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from callstate.client import AsyncClient, AsyncCompletionQueue, CallError, Client, CompletionQueue, PipeScript, Script
from tests.conftest import EVIDENCE_WAIT, ServerProcess, check_own, read_entries

pytestmark = pytest.mark.timeout(120)

BOUND = 10.0   # a wait that must not be needed: it only bounds a defect


# -- several threads pushing on one pipe ---------------------------------------------------------------
def test_a_cancel_releases_every_thread_pushing_on_a_sync_pipe(shared_server: ServerProcess, tmp_path: Path) -> None:
    """Three threads pushing on one in pipe whose server does not pull (flow control holds the
    pushes): the cancel released only the last thread to push, the others blocked for ever in
    `push()`. Now each pusher gets 1916 (the call has ended). The cancel waits until the three
    pushes are each held (the feeder's pending pushes): a count of pushes made, which one
    thread can reach alone before the others block, let the defect pass 2 runs of 3 (review)."""
    log = tmp_path / "client.jsonl"
    with Client(shared_server.target, log=str(log)) as client:
        pipe = client.pipe("in", PipeScript(outcome="hold", at="before-first")).start()
        codes: list[int] = []

        def pusher() -> None:
            try:
                while True:
                    pipe.push(b"x" * 60_000)
            except CallError as err:
                codes.append(err.code)

        threads = [threading.Thread(target=pusher, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + EVIDENCE_WAIT
        while len(pipe._feeder._pending) < 3:   # evidence: three pushes wait for gRPC to take them
            assert time.monotonic() < deadline, "the pushes were never held by flow control"
            time.sleep(0.005)
        pipe.cancel()
        for t in threads:
            t.join(BOUND)
        assert [t.is_alive() for t in threads] == [False] * 3, "a pusher is still blocked after the cancel"
        assert codes == [1916] * 3
        with pytest.raises(CallError) as err:
            pipe.result(BOUND)
        assert err.value.code == 1818
    assert check_own(log, shared_server).ok


# -- done-callbacks that fail the way pytest fails ------------------------------------------------------
def _fails(call: object) -> None:
    pytest.fail("the harness's callback found the call wrong")


def test_a_sync_callback_that_calls_pytest_fail_neither_hangs_the_wait_nor_starves_the_queue(
        shared_server: ServerProcess) -> None:
    """`pytest.fail()` (or `pytest.skip()`, `KeyboardInterrupt`) in an `on_complete` callback is a
    BaseException, not an Exception: it skipped the callbacks after it and the event `result()`
    waits on, so `result()` without a timeout hung although `status()` said 0; and it went on
    into gRPC's polling thread and ended it, so no later call of the client was ever notified.
    Now the other callbacks and the waiters get the notification, and the error is logged; since
    audit 34 the waiting test sees the failure too, as the asyncio twin's does (the call is then
    completed by the next result())."""
    with Client(shared_server.target) as client:
        queue = CompletionQueue()
        call = client.prepare(Script("complete"), on_complete=_fails)
        call.add_done_callback(queue.post)   # subscribed after the failing callback
        call.start()
        with pytest.raises(pytest.fail.Exception):   # the test that waits on it sees the failure
            call.result(BOUND)
        assert call.result(BOUND) is not None
        assert queue.get(timeout=BOUND) is call
        # and it did not reach gRPC's thread, which it ended: no later call of the client was notified
        assert client.start(Script("complete")).result(BOUND) is not None


def test_an_async_callback_that_calls_pytest_fail_does_not_starve_the_queue(shared_server: ServerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(shared_server.target) as client:
            queue = AsyncCompletionQueue()
            call = client.prepare(Script("complete"))
            call.add_done_callback(_fails)
            call.add_done_callback(queue.post)
            call.start()
            with pytest.raises(pytest.fail.Exception):   # the test that awaits it still sees the failure
                await asyncio.wait_for(call.result(), BOUND)
            assert await asyncio.wait_for(queue.get(), BOUND) is call
            assert call.status() == 0

    asyncio.run(main())


# -- math.inf as "no limit" -------------------------------------------------------------------------------
@pytest.mark.parametrize("forever", [math.inf, 1e10])
def test_a_wait_for_ever_given_as_a_huge_timeout_waits_on_both_surfaces(shared_server: ServerProcess,
                                                                        forever: float) -> None:
    """`result(timeout=math.inf)` raised `OverflowError: timestamp out of range for platform
    time_t` from threading on the sync surface (the asyncio one waited), and so did `wait(1e10)`;
    `cancel(abortive=False, timeout=math.inf)` crashed its escalation timer thread unseen. Now a
    timeout past what threading can wait is no limit, as None is."""
    with Client(shared_server.target) as client:
        call = client.start(Script("complete", outcome_delay=0.2))
        assert call.wait(forever) is True
        assert call.result(forever) is not None
        held = client.start(Script("hold", on_cancel="complete"))
        crashed: list[BaseException] = []
        old_hook, threading.excepthook = threading.excepthook, lambda args: crashed.append(args.exc_value)
        try:
            held.cancel(abortive=False, timeout=forever)   # escalation: never
            assert held.result(forever) is not None        # the server's answer to the notice
            live = [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
        finally:
            threading.excepthook = old_hook
        assert crashed == []
        assert all(not t.is_alive() for t in live)

    async def main() -> None:
        async with AsyncClient(shared_server.target) as client:
            call = client.start(Script("complete", outcome_delay=0.2))
            assert await call.wait(forever) is True
            assert await call.result(forever) is not None

    asyncio.run(main())


# -- a pipe waited on for a while, then pulled by hand -------------------------------------------------------
def test_a_sync_pull_after_a_wait_that_ran_out_reads_on(shared_server: ServerProcess, tmp_path: Path) -> None:
    """`wait(0.3)` on a held out pipe starts a helper thread that pulls the server's messages (its
    status follows them); when the wait ran out the helper went on pulling, and the harness's own
    `pull()` then raced it for gRPC's stream: `ValueError: Internal gRPC call error 8. Please
    report to https://github.com/grpc/grpc/issues`. Now the helper stops with the wait, and the
    caller's pulls go on from the next message, none lost."""
    log = tmp_path / "client.jsonl"
    with Client(shared_server.target, log=str(log)) as client:
        pipe = client.pipe("out", PipeScript(outcome="hold", interval=0.02)).start()
        assert pipe.wait(0.2) is False
        counted = pipe.received
        time.sleep(0.2)   # not a synchronisation: a window in which the server pushes ~10 messages, none pulled
        # (one read may have been under way as the wait ran out: counted at most once more)
        assert pipe.received <= counted + 1, "the wait's helper went on pulling after the wait ran out"
        first = pipe.pull()
        second = pipe.pull()
        assert first is not None and second is not None
        assert (first.seq, second.seq) == (pipe.received - 1, pipe.received)   # in order, every one counted
        assert pipe.wait(0.05) is False            # a second wait that runs out: the same again
        assert pipe.pull().seq == pipe.received
        pipe.cancel()
        with pytest.raises(CallError) as err:
            pipe.result(BOUND)
        assert err.value.code == 1818
    assert check_own(log, shared_server).ok


def test_an_async_pull_after_a_wait_that_ran_out_reads_on(shared_server: ServerProcess, tmp_path: Path) -> None:
    """The asyncio twin: the drainer task went on after the wait ran out, and the harness's `await
    pipe.pull()` waited behind it until the server ended the stream (its max hold), then returned
    None with every message eaten. Now it returns the next message."""
    log = tmp_path / "client.jsonl"

    async def main() -> None:
        async with AsyncClient(shared_server.target, log=str(log)) as client:
            pipe = client.pipe("out", PipeScript(outcome="hold", interval=0.02)).start()
            assert await pipe.wait(0.2) is False
            first = await asyncio.wait_for(pipe.pull(), BOUND)
            second = await asyncio.wait_for(pipe.pull(), BOUND)
            assert first is not None and second is not None
            assert (first.seq, second.seq) == (pipe.received - 1, pipe.received)
            assert await pipe.wait(0.05) is False         # a second wait that runs out: the same again
            assert (await asyncio.wait_for(pipe.pull(), BOUND)).seq == pipe.received
            pipe.cancel()
            with pytest.raises(CallError) as err:
                await asyncio.wait_for(pipe.result(), BOUND)
            assert err.value.code == 1818

    asyncio.run(main())
    assert check_own(log, shared_server).ok


# -- a user's own methods on a server in the harness's own event loop -----------------------------------------
def test_a_method_call_by_reflection_on_a_server_of_the_same_loop_is_refused_at_once(tmp_path: Path) -> None:
    """library.md runs `EmulatorServer` and `AsyncClient` in one `asyncio.run()`; drive.md has
    `method=` read the target's reflection when the client has no `schema=`. Together, the
    blocking reflection read waited for the very loop that serves it: 10 s, then `SchemaError
    ... DEADLINE_EXCEEDED: no answer to reflection within 10 s (a peer that is not a gRPC server,
    a stopped server, ...)`. Now it is refused at once, saying why and what to give; with the
    schema the same calls work."""
    from callstate.schema import SchemaError, from_protos
    from callstate.server import EmulatorServer

    protos = Path(__file__).parent / "protos"
    schema = from_protos([protos / "shop/v1/shop.proto"], [protos])
    log = tmp_path / "client.jsonl"

    async def main() -> None:
        async with EmulatorServer(port=0, schema=schema, log=tmp_path / "server.jsonl") as srv:
            async with AsyncClient(srv.target, log=str(log)) as client:
                for make in (lambda: client.start(method="shop.v1.Shop/Charge", request={"order_id": "o-1"}),
                             lambda: client.pipe(method="shop.v1.Shop/Track", request={"order_id": "o-1"})):
                    began = time.monotonic()
                    with pytest.raises(SchemaError) as err:
                        make()
                    # at once: milliseconds on a quiet machine; the read waiting for its own loop
                    # takes the reflection's 10 s deadline, which no CPU starvation can shorten.
                    # 2 s left a loaded machine (load 10 on 2 cores: a fifth of a core) no margin
                    assert time.monotonic() - began < 5.0, "the read waited for its own loop"
                    assert "runs on this event loop" in str(err.value) and "schema=" in str(err.value)
            async with AsyncClient(srv.target, schema=schema, log=str(log)) as client:
                reply = await asyncio.wait_for(client.start(Script("complete"), method="shop.v1.Shop/Charge",
                                                            request={"order_id": "o-1"}), BOUND)
                assert reply.DESCRIPTOR.full_name == "shop.v1.ChargeReply"

    asyncio.run(main())
    assert [e["state"] for e in read_entries(log)] == ["C", "WComp", "Comp", "End"]   # nothing of the refused ones


# -- a completion queue carried from one event loop to the next ---------------------------------------------
def test_a_completion_queue_from_a_finished_loop_says_so_instead_of_waiting_for_ever(
        shared_server: ServerProcess) -> None:
    """An `AsyncCompletionQueue` made in one `asyncio.run()` (a helper, a session fixture) and
    waited on in the next: each call was posted to the old, closed loop (`RuntimeError: Event loop
    is closed`, only in the log) and `await queue.get()` waited for ever. Now get() says at once
    that the queue belongs to another loop."""
    async def make() -> AsyncCompletionQueue:
        return AsyncCompletionQueue()

    queue = asyncio.run(make())

    async def main() -> None:
        async with AsyncClient(shared_server.target) as client:
            call = client.start(Script("complete"), queue=queue)
            with pytest.raises(RuntimeError, match="belongs to another event loop, now closed"):
                await asyncio.wait_for(queue.get(), 5)
            await asyncio.wait_for(call, BOUND)

    asyncio.run(main())


# -- the pytest plugin's assertion with tracing on ------------------------------------------------------------
def test_assert_lifecycle_on_a_traced_plugin_client_shows_its_entries_with_their_times(
        shared_server: ServerProcess) -> None:
    """`srv.client(tracing=True)` (a plugin client with spans) logs through a tracing wrapper
    around the plugin's recorder; `assert_lifecycle` looked for the recorder itself, missed it,
    and showed the client's side as bare states without times, sorted after the server's End
    (and without its events). Now it reads the recorder inside the wrapper: each client entry at
    its time, beside the server's."""
    from opentelemetry.sdk.trace import TracerProvider

    from callstate.pytest_plugin import assert_lifecycle
    from callstate.pytest_plugin.recorder import Recorder
    from callstate.pytest_plugin.servers import RemoteServer

    handle = RemoteServer(shared_server.target).connect(BOUND)
    try:
        with Client(shared_server.target, log=Recorder(handle), tracing=TracerProvider()) as client:
            call = client.start(Script("abort", abort_code=5001))
            with pytest.raises(CallError):
                call.result(BOUND)
        with pytest.raises(AssertionError) as err:
            assert_lifecycle(call, server=["D", "A", "End"], code=5002, timeout=BOUND)
    finally:
        handle.close()
    table = str(err.value).split("\n")
    client_rows = [row for row in table if row.rstrip().endswith("|")]   # the client's column only
    assert len(client_rows) == 4 and all(re.match(r"\s+\d\d:\d\d:\d\d\.\d{6}Z\s", row) for row in client_rows), table
    server_end = next(i for i, row in enumerate(table) if "| " in row and "aborted" in row)
    assert table.index(client_rows[0]) < server_end, "the client's C shown after the server ended the call"


# -- a call started on one event loop, awaited on the next ------------------------------------------------------
def test_awaiting_a_call_from_an_earlier_loop_says_so_and_logs_no_cancel(shared_server: ServerProcess,
                                                                        tmp_path: Path) -> None:
    """A fixture's loop starts a call, the test's loop awaits it (or two `asyncio.run()`s): the
    wait failed inside grpc.aio and was read as the caller's own cancel: `Can` in the log and
    1818 "cancelled by the caller", a cancel nobody made. Now the wait (and `status()`) is 1915
    naming the other loop, the call is left as it was, and `close()` ends it as a client cut off."""
    log = tmp_path / "client.jsonl"
    made: dict[str, Any] = {}

    async def fixture_loop() -> None:
        made["client"] = client = AsyncClient(shared_server.target, log=str(log))
        made["call"] = client.start(Script("complete", outcome_delay=0.1))

    async def test_loop() -> None:
        client, call = made["client"], made["call"]
        for wait in (lambda: call.result(), lambda: call.wait(1.0)):
            with pytest.raises(CallError) as err:
                await asyncio.wait_for(wait(), BOUND)
            assert err.value.code == 1915 and "another event loop, now closed" in err.value.details
        with pytest.raises(CallError, match="another event loop"):
            call.status()
        assert call.history == ["C", "WComp"]
        await asyncio.wait_for(client.close(), BOUND)

    asyncio.run(fixture_loop())
    asyncio.run(test_loop())
    entries = read_entries(log)
    assert [e["state"] for e in entries if e["event"] == "enter"] == ["C", "WComp", "Comp", "End"]
    assert "client_closed" in [e["event"] for e in entries]
