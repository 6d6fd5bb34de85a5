"""Audit 34 of the client library: the sync and asyncio surfaces held to one design, as a test
engineer's harness uses them. Each test is a difference between the twins (or a wait without a
bound) that such a harness met, and fails without its fix: a pipe's `headers()` that waited for
ever on a server that sent none, an abortive cancel whose notification was rushed on one call
object of four, a Ctrl-C in a sync wait that left the call to the client's close (1722) where a
cancelled task cancels it (1818), a callback's pytest.fail() the sync waiter never saw, a
completion queue whose asyncio twin took no timeout, one refused push worded two ways, and
docs/library.md's examples whose output was not what they showed."""

from __future__ import annotations

import asyncio
import math
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from callstate.client import (AsyncClient, AsyncCompletionQueue, CallError, Client, CompletionQueue, PipeScript,
                              Script, WaitTimedOut)
from tests.conftest import EVIDENCE_WAIT, ROOT, ServerProcess, check_own, read_entries, start_server
from tests.documentation import blocks

pytestmark = pytest.mark.timeout(120)

BOUND = 10.0   # a wait that must not be needed: it only bounds a defect
HELD = PipeScript(outcome="hold")


# -- 1. a pipe's headers() has a timeout on both surfaces ---------------------------------------------
def _headers_timed_out(err: WaitTimedOut, timeout: float) -> None:
    assert err.code == 1460 and isinstance(err, TimeoutError)
    assert err.details == f"no headers within {timeout:g}s (the call is still pending)"


def test_a_pipes_headers_wait_is_bounded_on_both_surfaces_against_a_stopped_server(tmp_path: Path) -> None:
    """The server (a process of this test's own) is stopped (SIGSTOP) once the clients are
    connected: it never sends a pipe's headers. The sync `Pipe.headers()` had no timeout and
    blocked for ever (gRPC's `initial_metadata()` takes none), the asyncio one likewise. Now both
    take `timeout=` as `wait()` and `result()` do: WaitTimedOut (1460, a TimeoutError) when it runs
    out, the pipe left as it was (no `headers` event), and once the server goes on, the same
    `headers()` returns them, as plain (key, value) pairs on both surfaces."""
    srv = start_server(tmp_path, "--max-hold", "20")
    log = tmp_path / "client.jsonl"
    try:
        with Client(srv.target, log=str(log)) as client:
            client.start(Script("complete")).result(BOUND)   # connected before the server stops

            async def main() -> None:
                async with AsyncClient(srv.target, log=log.with_name("aio.jsonl")) as aclient:
                    await aclient.start(Script("complete")).result(BOUND)
                    srv.proc.send_signal(signal.SIGSTOP)
                    apipe = aclient.pipe("both", HELD).start()
                    pipe = client.pipe("both", HELD).start()
                    raised: list[BaseException] = []

                    def sync_headers() -> None:
                        try:
                            pipe.headers(timeout=0.3)
                        except BaseException as exc:
                            raised.append(exc)

                    waiter = threading.Thread(target=sync_headers, daemon=True)
                    waiter.start()
                    with pytest.raises(WaitTimedOut) as err:
                        await asyncio.wait_for(apipe.headers(timeout=0.3), BOUND)
                    _headers_timed_out(err.value, 0.3)
                    waiter.join(BOUND)
                    assert not waiter.is_alive(), "the sync Pipe.headers(timeout=0.3) is still waiting"
                    assert len(raised) == 1 and isinstance(raised[0], WaitTimedOut), raised
                    _headers_timed_out(raised[0], 0.3)
                    assert (pipe.state, apipe.state) == ("Push", "Push")   # as they were
                    assert not pipe.headers_seen and not apipe.headers_seen
                    srv.proc.send_signal(signal.SIGCONT)
                    headers = await asyncio.wait_for(apipe.headers(timeout=BOUND), BOUND + 1)
                    assert headers == (("callstate-call-id", apipe.call_id),)
                    assert pipe.headers(timeout=BOUND) == (("callstate-call-id", pipe.call_id),)
                    assert type(pipe.headers()[0]) is tuple   # not grpc's _Metadatum: the same on both
                    for each in (pipe, apipe):
                        each.cancel()
                    with pytest.raises(CallError) as cancelled:
                        await apipe.result(BOUND)
                    assert cancelled.value.code == 1818
                    with pytest.raises(CallError) as cancelled:
                        pipe.result(BOUND)
                    assert cancelled.value.code == 1818

            asyncio.run(main())
    finally:
        srv.proc.send_signal(signal.SIGCONT)
        srv.stop()
    assert [e["event"] for e in read_entries(log) if e["event"] == "headers"] == ["headers"]


def test_a_pipes_headers_timeout_is_checked_as_a_waits(shared_server: ServerProcess) -> None:
    """`headers(timeout=)` takes what `wait()` takes: a number of seconds or None (`math.inf`:
    no limit), anything else one TypeError naming it."""
    with Client(shared_server.target) as client:
        pipe = client.pipe("out", HELD).start()
        with pytest.raises(TypeError, match="timeout must be a number of seconds or None, not str '1'"):
            pipe.headers(timeout="1")   # type: ignore[arg-type]
        assert pipe.headers(timeout=math.inf) == (("callstate-call-id", pipe.call_id),)
        pipe.cancel()


# -- 2. an abortive cancel rushes the notification on every call object ------------------------------------
def _rushed(call: Any) -> tuple[bool, int]:
    call.cancel()
    return call.done(), call.status()


def test_an_abortive_cancel_rushes_the_notification_on_both_surfaces(shared_server: ServerProcess) -> None:
    """`cancel()` (abortive) rushes the call-complete notification: an `AsyncCall` was notified
    (done(), status() 1818) as the cancel returned, but a sync `Call`, a `Pipe` and an `AsyncPipe`
    only once gRPC's thread or the pipe's driver task got round to it, so a harness that polls
    right after its cancel read 997 on three of the four. Now all four are notified at once."""
    with Client(shared_server.target) as client:
        got = {"Call": _rushed(client.start(Script("hold")))}
        for kind in ("in", "out", "both"):
            got[f"Pipe {kind}"] = _rushed(client.pipe(kind, HELD).start())

    async def main() -> None:
        async with AsyncClient(shared_server.target) as aclient:
            got["AsyncCall"] = _rushed(aclient.start(Script("hold")))
            for kind in ("in", "out", "both"):
                got[f"AsyncPipe {kind}"] = _rushed(aclient.pipe(kind, HELD).start())

    asyncio.run(main())
    assert got == {name: (True, 1818) for name in got}, got


# -- 3. Ctrl-C in a sync wait is the cancel a cancelled task is -------------------------------------------
def _interrupted(call: Any, wait: Any) -> None:
    """`wait()` on the test's main thread, interrupted by SIGINT as Ctrl-C interrupts it: sent once
    the thread is waiting (the call's event has a waiter), raised by Python's own handler."""
    def interrupt() -> None:
        deadline = time.monotonic() + EVIDENCE_WAIT
        while not call._notified._cond._waiters:   # evidence: the main thread waits on the call
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    helper = threading.Thread(target=interrupt, daemon=True)
    try:
        helper.start()
        with pytest.raises(KeyboardInterrupt):
            wait(BOUND)
    finally:
        helper.join(BOUND)
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_in_a_sync_wait_is_an_abortive_cancel_as_a_cancelled_task_is(shared_server: ServerProcess,
                                                                            tmp_path: Path) -> None:
    """Cancelling the task that awaits an `AsyncCall` (asyncio.run's answer to Ctrl-C) is an
    abortive cancel of the call, completed on the caller's behalf: the log says Can (abortive),
    1818. Ctrl-C in the sync `result()` left the call in WComp, held on the server, until the
    client's close ended it 1722 "the client was closed". Now the interrupted `result()` cancels
    and completes it, and an interrupted `wait()` cancels it (the caller completes it)."""
    log = tmp_path / "client.jsonl"
    with Client(shared_server.target, log=str(log)) as client:
        call = client.start(Script("hold"))
        _interrupted(call, call.result)
        assert call.history == ["C", "WComp", "Can", "WComp", "Comp", "End"] and call.code == 1818
        waited = client.start(Script("hold"))
        _interrupted(waited, waited.wait)
        assert waited.history == ["C", "WComp", "Can", "WComp"] and waited.status() == 1818
        with pytest.raises(CallError) as err:
            waited.result(BOUND)
        assert err.value.code == 1818
    cancels = [e for e in read_entries(log) if e["state"] == "Can"]
    assert [(e["call_id"], e["cancel"]) for e in cancels] == [(call.call_id, "abortive"), (waited.call_id, "abortive")]
    assert check_own(log, shared_server).ok


# -- 4. a callback's BaseException reaches the waiting thread ---------------------------------------------
class _Failed(BaseException):
    """What pytest.fail() raises: not an Exception."""


def _fails(call: object) -> None:
    raise _Failed("the harness's callback found the call wrong")


@pytest.mark.parametrize("kind", ["unary", "in", "out"])
def test_a_sync_callbacks_failure_reaches_the_waiter_as_the_asyncio_one_does(shared_server: ServerProcess,
                                                                             kind: str) -> None:
    """A callback that fails the way pytest.fail() does (a BaseException) runs on gRPC's thread on
    the sync surface: it was logged there and `result()` returned, so the test passed; the task
    that was awaiting an `AsyncCall` got it, and one that awaited once the call was notified
    did not, nor did any awaiting a pipe. Now the caller's next wait raises it on both surfaces,
    whenever it comes (once: the `result()` after it completes the call), for calls and pipes
    alike. Here the wait comes after the notification (tests/test_audit32_library.py has a
    test that waits before it)."""
    def make(client: Any) -> Any:
        if kind == "unary":
            return client.prepare(Script("complete"), on_complete=_fails)
        pipe = client.pipe(kind, PipeScript())
        pipe.add_done_callback(_fails)
        return pipe

    with Client(shared_server.target) as client:
        call = make(client).start()
        if kind == "in":
            call.close_push()
        deadline = time.monotonic() + EVIDENCE_WAIT
        while not call.done() and time.monotonic() < deadline:   # evidence: notified before the wait
            time.sleep(0.005)
        with pytest.raises(_Failed):
            call.result(BOUND)
        call.result(BOUND)
        assert call.history[-1] == "End" and call.code == 0

    async def main() -> None:
        async with AsyncClient(shared_server.target) as aclient:
            acall = make(aclient).start()
            if kind == "in":
                await acall.close_push()
            deadline = time.monotonic() + EVIDENCE_WAIT
            while not acall.done() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            with pytest.raises(_Failed):
                await acall.result(BOUND)
            await acall.result(BOUND)
            assert acall.history[-1] == "End" and acall.code == 0

    asyncio.run(main())


# -- 5. the completion queues take the same timeout ----------------------------------------------------------
def test_both_completion_queues_take_a_timeout_and_say_the_same_when_it_runs_out() -> None:
    """`CompletionQueue.get(timeout)` raised queue.Empty; `AsyncCompletionQueue.get()` took no
    timeout at all (TypeError). Both now take one, checked as a cancel's is, and raise queue.Empty."""
    sync = CompletionQueue()
    with pytest.raises(queue.Empty):
        sync.get(timeout=0.05)
    with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0 or None, not -1"):
        sync.get(timeout=-1)
    sync.post("a call")   # type: ignore[arg-type]
    assert sync.get(timeout=math.inf) == "a call"

    async def main() -> None:
        aq = AsyncCompletionQueue()
        with pytest.raises(queue.Empty):
            await asyncio.wait_for(aq.get(timeout=0.05), BOUND)
        with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0 or None, not -1"):
            await aq.get(timeout=-1)
        aq.post("a call")   # type: ignore[arg-type]
        assert await aq.get(timeout=0) == "a call"
        asyncio.get_running_loop().call_later(0.05, aq.post, "later")
        assert await aq.get(timeout=math.inf) == "later"

    asyncio.run(main())


# -- 6. a push the wire refuses is worded the same ---------------------------------------------------------------
class _EndedStream:
    """A gRPC stream that has ended: a write to it fails, as grpc.aio's does."""

    def done(self) -> bool:
        return True

    async def write(self, msg: Any) -> None:
        import grpc
        raise grpc.aio.UsageError("the call has ended")


def test_a_push_the_ended_stream_refuses_is_one_error_on_both_surfaces(refused_target: str) -> None:
    """A push that the stream refuses because the call ended meanwhile (the outcome not yet in) was
    1916 "push in state Push: the call has ended" on a `Pipe` and 1916 "push failed: the call has
    ended" on an `AsyncPipe`. Now both say the former (the state, as the pipe rules' refusals do)."""
    with Client(refused_target) as client:
        pipe = client.pipe("in")
        pipe._rpc = object()
        pipe.started()                 # C -> Push, as start() moves it
        pipe._feeder.end()             # gRPC's done-callback ended the feeder: the call is over
        with pytest.raises(CallError) as sync_err:
            pipe.push(b"x")
        pipe.end_unstarted()

    async def main() -> CallError:
        async with AsyncClient(refused_target) as aclient:
            apipe = aclient.pipe("in")
            apipe._rpc = _EndedStream()
            apipe.started()
            with pytest.raises(CallError) as err:
                await apipe.push(b"x")
            return err.value

    async_err = asyncio.run(main())
    assert (sync_err.value.code, sync_err.value.details) == (async_err.code, async_err.details) \
        == (1916, "push in state Push: the call has ended")


# -- 7. docs/library.md shows what happens ---------------------------------------------------------------------
def test_every_print_of_the_library_page_shows_its_output() -> None:
    """tests/test_audit27_client.py checks the output of each library.md example whose prints all
    carry their output as a comment; the EmulatorServer example printed a whole reply (its random
    call id, a payload of zero bytes) with no comment, so what it showed was never checked. Now
    every print of the page shows its output, and that test checks them all."""
    page = (ROOT / "docs" / "library.md").read_text()
    examples = blocks(page, "python")
    assert len(examples) == 3
    bare = [line.strip() for block in examples for line in block.splitlines()
            if line.strip().startswith("print(") and "  # " not in line]
    assert bare == []


def test_the_library_pages_inline_outputs_are_what_happens(refused_target: str) -> None:
    """The outputs the page quotes in its prose: the refusals of a wrong Script, a sync call awaited,
    and what repr() shows of a call, a pipe and a client."""
    from callstate.script import ScriptError

    page = " ".join((ROOT / "docs" / "library.md").read_text().split())   # as the page reads, unwrapped
    with pytest.raises(ScriptError) as bad:
        Script("explode").to_proto()
    assert f"`{bad.value}`" in page
    with pytest.raises(ScriptError) as bad:
        Script("complete", reply_bytes=1.5).to_proto()   # type: ignore[arg-type]
    assert f"`{bad.value}`" in page
    with pytest.raises(TypeError):
        Script("abort", 5001)   # type: ignore[misc]
    with Client(refused_target) as client:
        call = client.prepare(Script("complete"))

        async def await_it() -> None:
            await call   # type: ignore[misc]

        with pytest.raises(TypeError) as awaited:
            asyncio.run(await_it())
        assert f"`TypeError: {awaited.value}`" in page
        pipe = client.pipe("out")
        assert repr(pipe) == f"<Pipe out {pipe.call_id} C>"
        assert repr(client) == f"<Client {refused_target} open, 2 call(s) live>"
        call.cancel()
    with pytest.raises(CallError):
        call.result(BOUND)
    assert repr(call) == f"<Call {call.call_id} End code=1818 RPC_S_CALL_CANCELLED>"
    assert "`<Call 3f2a… End code=1818 RPC_S_CALL_CANCELLED>`, `<Pipe out … Pull>`" in page



# -- 8. the twins, verb by verb ---------------------------------------------------------------------------------
PAIRS = [("Client", "AsyncClient"), ("Call", "AsyncCall"), ("Pipe", "AsyncPipe"),
         ("CompletionQueue", "AsyncCompletionQueue")]


def _shape(fn: Any) -> list[tuple[str, str, Any]]:
    import inspect
    return [(p.name, p.kind.name, p.default) for p in inspect.signature(fn).parameters.values()]


def test_the_twins_have_the_same_public_verbs_with_the_same_parameters_and_defaults() -> None:
    """Every public method of each sync class is its asyncio twin's, with the same parameters,
    kinds and defaults (the annotations name each surface's own types). `AsyncCompletionQueue.get`
    took no timeout, and `headers` none on either pipe."""
    import callstate.client as lib

    differ = []
    for sync_name, async_name in PAIRS:
        sync, twin = getattr(lib, sync_name), getattr(lib, async_name)
        names = {n for n in dir(sync) if not n.startswith("_")} | {n for n in dir(twin) if not n.startswith("_")}
        for name in sorted(names):
            a, b = getattr(sync, name, None), getattr(twin, name, None)
            if a is None or b is None:
                differ.append(f"{sync_name}.{name}: only on {'the asyncio' if a is None else 'the sync'} surface")
            elif callable(a) and not isinstance(a, type) and _shape(a) != _shape(b):
                differ.append(f"{sync_name}.{name}: {_shape(a)} != {_shape(b)}")
    assert differ == []


async def _act(call: Any, verb: str, *args: Any) -> Any:
    """What one verb did to a call: its value, or its error's type, code and words (the call's id
    as ID), and the states the call has entered after it."""
    try:
        got = getattr(call, verb)(*args)
        if asyncio.iscoroutine(got):
            got = await got
        done: Any = "headers" if verb == "headers" else got if isinstance(got, (bool, int, type(None))) else "value"
    except CallError as err:
        done = (type(err).__name__, err.code, err.details.replace(call.call_id, "ID"))
    return verb, done, call.history


async def _lifecycle(client: Any, make: Any) -> list[Any]:
    """Every verb on a call never started, cancelled before start (twice), started and cancelled
    (abortively twice, then not), and ended; each as its surface does it."""
    out = []
    waits = ("wait", "result", "complete", "status", "done")
    unstarted = make(client)
    for verb in waits + ("cancel", "cancel", "status", "done", "start", "result", "result", "cancel", "status"):
        out.append(await _act(unstarted, verb))
    started = make(client).start()
    for verb, *args in [("status",), ("complete",), ("wait", 0), ("cancel",), ("done",), ("status",), ("cancel",),
                        ("cancel", False), ("result", BOUND)] + [(verb,) for verb in waits + ("cancel", "start")]:
        out.append(await _act(started, verb, *args))
    return out


@pytest.mark.parametrize("kind", ["unary", "both"])
def test_the_twins_answer_every_verb_alike_at_each_point_of_a_calls_life(shared_server: ServerProcess,
                                                                         kind: str) -> None:
    """The same verbs at the same points on a sync and an asyncio call (a pipe: also `headers`,
    `push`, `close_push`, `pull`): the same values, errors, codes and words, and the same states
    entered. (Before the fix, an abortive cancel left a sync `Call` and both pipes still pending
    where an `AsyncCall` was notified; see test 2.)"""
    def make(client: Any) -> Any:
        return client.prepare(Script("hold")) if kind == "unary" else client.pipe(kind, HELD)

    async def both() -> tuple[list[Any], list[Any]]:
        with Client(shared_server.target) as client:
            sync = await _lifecycle(client, make)
            if kind != "unary":
                sync += await _pipe_verbs(client)
        async with AsyncClient(shared_server.target) as aclient:
            twin = await _lifecycle(aclient, make)
            if kind != "unary":
                twin += await _pipe_verbs(aclient)
        return sync, twin

    sync, twin = asyncio.run(both())
    assert [a for a, b in zip(sync, twin) if a != b] == [], [b for a, b in zip(sync, twin) if a != b]
    assert len(sync) == len(twin)


async def _pipe_verbs(client: Any) -> list[Any]:
    out = []
    unstarted = client.pipe("both", HELD)
    for verb in ("headers", "push", "close_push", "pull"):
        out.append(await _act(unstarted, verb))
    unstarted.cancel()
    pipe = client.pipe("both", PipeScript(messages=1)).start()
    for verb, *args in [("headers",), ("push", b"x"), ("close_push",), ("close_push",), ("push", b"x"), ("pull",),
                        ("pull",), ("pull",), ("result", BOUND), ("pull",), ("headers",)]:
        out.append(await _act(pipe, verb, *args))
    return out
