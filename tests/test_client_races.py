"""Closing a client while its calls complete, and cancelling one of several tasks awaiting a
call: real servers over loopback, the client log checked against the server's."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from callstate import codes
from callstate.check import check_entries
from callstate.client import AsyncClient, CallError, Client, Script
from callstate.lifecycle import CLIENT_CLOSED, COMP, END, ENTER
from callstate.statelog import Entry, to_dict
from callstate.logfile import StateLog
from tests.conftest import ServerProcess, check_own, final, states

pytestmark = pytest.mark.timeout(120)


class Sink:
    """A client log in memory; `fail_on` makes append raise for that state (a closed stdout)."""

    enabled = True

    def __init__(self, fail_on: str | None = None) -> None:
        self.entries: list[Entry] = []
        self.fail_on = fail_on

    def append(self, e: Entry) -> None:
        self.entries.append(e)
        if e.event == ENTER and e.state == self.fail_on:
            raise BrokenPipeError(32, "Broken pipe")


def test_a_log_that_fails_mid_complete_leaves_no_call_half_completed(shared_server: ServerProcess) -> None:
    """The reported traceback: close() -> _end_live_calls -> complete() on a call left in Comp
    by a complete() whose log write raised (LifecycleError: 'complete' illegal in 'Comp')."""
    async def go() -> None:
        sink = Sink(fail_on=COMP)
        client = AsyncClient(shared_server.target, log=sink)
        call = client.start(Script("complete"))
        with pytest.raises(BrokenPipeError):
            await call
        await client.close()       # raised LifecycleError before the fix
        assert call.state == END   # both moves made before the write that failed
        assert [e.state for e in sink.entries if e.event == ENTER][-2:] == [COMP, END]
    asyncio.run(go())


def test_a_call_whose_stdout_is_closed_mid_call_ends_in_one_line_with_its_log_whole(
        shared_server: ServerProcess, tmp_path: Path) -> None:
    """The reported race, end to end: `callstate call --otel | head -1` (the console exporter's
    output fills the pipe) ended in close() -> complete() on a call left in Comp, a traceback with
    LifecycleError, once in two runs. Here the reader closes the pipe while the call is in
    WComp, so the Comp line is the write that fails, every run. The call goes on to its own end
    (the reader only stopped reading): its final line on stderr, its exit status its code's."""
    log = tmp_path / "client.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "callstate", "call", "--target", shared_server.target,
                             "--delay", "5", "--log-file", str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:   # the call is in WComp, held 5 s by the server's script (the close is at once)
            if "WComp" in line:
                break
        proc.stdout.close()
        err = proc.stderr.read()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "Traceback" not in err and "LifecycleError" not in err, err
    assert proc.returncode == 0 and err.strip().splitlines() == ["final: 0 RPC_S_OK: reply of 0 bytes"], \
        (proc.returncode, err)
    entries = [json.loads(x) for x in log.read_text().splitlines()]
    assert [e["state"] for e in entries][-2:] == [COMP, END], entries   # nothing recorded was lost


def test_closing_an_async_client_while_its_calls_complete(shared_server: ServerProcess) -> None:
    """Close at every point of a completion in progress: each call gets its reply or 1722, close
    never raises, each call ends once and the log checks clean."""
    async def one(rng: random.Random, sink: Sink) -> set[int]:
        client = AsyncClient(shared_server.target, log=sink)
        calls = [client.start(Script("complete")) for _ in range(3)]
        awaiters = [asyncio.ensure_future(_finish(call)) for call in calls]
        for _ in range(rng.randrange(40)):   # let the completions get anywhere
            await asyncio.sleep(0)
        await client.close()
        return {code for code, _ in await asyncio.gather(*awaiters)}

    async def go() -> None:
        rng, sink, seen = random.Random(21), Sink(), set()
        for _ in range(150):
            seen |= await one(rng, sink)
        assert seen <= {codes.RPC_S_OK, codes.RPC_S_SERVER_UNAVAILABLE}, seen
        report = check_entries([to_dict(e) for e in sink.entries])
        assert report.ok and report.calls == 450, report.summary()
    asyncio.run(go())


def test_closing_a_sync_client_from_another_thread_while_a_call_completes(shared_server: ServerProcess) -> None:
    """The caller completes on one thread while close() ends the client on another: the caller
    gets its reply or 1722 (never 1914 for a call completed on its behalf a moment before)."""
    sink, seen = Sink(), set()
    for _ in range(150):
        client = Client(shared_server.target, log=sink)
        call = client.start(Script("complete"))
        got: list[Any] = []
        caller = threading.Thread(target=lambda: got.append(_result(call)))
        caller.start()
        call.wait(5)
        client.close()
        caller.join(10)
        seen.add(got[0])
    assert seen <= {codes.RPC_S_OK, codes.RPC_S_SERVER_UNAVAILABLE}, seen
    assert check_entries([to_dict(e) for e in sink.entries]).ok


def test_cancelling_an_awaiter_while_a_wait_is_pending_is_an_abortive_cancel(shared_server: ServerProcess,
                                                                           tmp_path: Path) -> None:
    """One task waits (wait()), another awaits the result; cancelling the second is the caller's
    abortive cancel: Can, then 1818 (it ended 1722 'the client was closed', with no Can)."""
    log = tmp_path / "client.jsonl"
    state_log = StateLog(log)   # the test's own: the client flushes only a log it opened itself

    async def go() -> None:
        async with AsyncClient(shared_server.target, log=state_log) as client:
            for first_waits in (True, False):
                call = client.start(Script("hold"))
                await shared_server.await_entries(call.call_id, until=lambda es: states(es) == ["D"])
                started = []
                for is_waiter in ((True, False) if first_waits else (False, True)):
                    started.append(asyncio.ensure_future(call.wait() if is_waiter else call.result()))
                    for _ in range(5):
                        await asyncio.sleep(0)   # it is awaiting the call
                waiter, awaiter = started if first_waits else started[::-1]
                awaiter.cancel()
                assert await asyncio.wait_for(waiter, 10) is True
                with pytest.raises(asyncio.CancelledError):
                    await awaiter
                assert call.code == codes.RPC_S_CALL_CANCELLED and call.history.count("Can") == 1, call.history
                assert call.state == END   # completed on the cancelled task's behalf
                server = await shared_server.await_entries(call.call_id)
                assert final(server)["code"] == codes.RPC_S_CALL_CANCELLED
    asyncio.run(go())
    state_log.close()   # every entry written before the check reads the file
    assert check_own(log, shared_server).ok


def test_check_refuses_a_client_closed_1722_the_client_never_recorded_closing() -> None:
    """A 1722 the client made itself (status CANCELLED: gRPC's local cancel) against a server that
    saw an abortive cancel is the closing client's only when the client recorded closing."""
    def client(closed: bool) -> list[dict[str, Any]]:
        out = [Entry(1.0, "client", "x", "C", None, ENTER, "call"), Entry(1.1, "client", "x", "WComp", "C", ENTER,
                                                                           "started")]
        if closed:
            out.append(Entry(1.2, "client", "x", "WComp", "WComp", CLIENT_CLOSED))
        out += [Entry(1.3, "client", "x", "Comp", "WComp", ENTER, "complete"),
                Entry(1.4, "client", "x", "End", "Comp", ENTER, "completed", 1722, codes.LOCAL_CLOSE_STATUS)]
        return [to_dict(e) for e in out]

    server = [to_dict(e) for e in (
        Entry(1.0, "server", "x", "D", None, ENTER, "dispatch"),
        Entry(1.3, "server", "x", "D", "D", "cancel_seen", cancel="abortive"),
        Entry(1.3, "server", "x", "A", "D", ENTER, "abort"),
        Entry(1.4, "server", "x", "End", "A", ENTER, "aborted", 1818, "CANCELLED"))]
    assert check_entries(client(closed=True) + server).ok
    unexplained = check_entries(client(closed=False) + server)
    assert list(unexplained.by_kind()) == ["code_mismatch"], unexplained.summary()
    # a 1722 off the wire (UNAVAILABLE: the connection died) needs no record of closing
    wire = [{**d, "grpc_status": "UNAVAILABLE"} if d["state"] == "End" else d for d in client(closed=False)]
    assert check_entries(wire + server).ok


def test_closing_under_a_call_records_it_and_checks_clean(shared_server: ServerProcess, tmp_path: Path) -> None:
    log = tmp_path / "client.jsonl"
    state_log = StateLog(log)   # the test's own: the client flushes only a log it opened itself

    async def go() -> str:
        client = AsyncClient(shared_server.target, log=state_log)
        call = client.start(Script("hold"))
        await shared_server.await_entries(call.call_id, until=lambda es: states(es) == ["D"])
        await client.close()
        assert call.code == codes.RPC_S_SERVER_UNAVAILABLE
        await shared_server.await_entries(call.call_id)
        return call.call_id

    call_id = asyncio.run(go())
    state_log.close()
    from tests.conftest import read_entries
    events = [e["event"] for e in read_entries(log, call_id)]
    assert CLIENT_CLOSED in events
    assert check_own(log, shared_server).ok


async def _finish(call: Any) -> tuple[int, Any]:
    try:
        return codes.RPC_S_OK, await call
    except CallError as err:
        return err.code, err


def _result(call: Any) -> int:
    try:
        call.result(10)
        return codes.RPC_S_OK
    except CallError as err:
        return err.code


def test_a_long_lived_client_lets_go_of_every_call_that_ended(shared_server: ServerProcess) -> None:
    """A client counts a started call live (close() ends it) only until it is completed: a
    completed call, however it ended, is the caller's alone and freed with its last reference,
    or a load of millions of calls through one client would keep every one of them."""
    import gc
    import weakref

    async def ended_every_way(client: AsyncClient) -> list[weakref.ref[Any]]:
        refs = []
        done = client.start(Script("complete"))
        await done                                    # awaited: result()
        aborted = client.start(Script("abort", abort_code=5001))
        await aborted.wait()
        with pytest.raises(CallError):
            aborted.complete()                       # waited, then completed
        cancelled = client.start(Script("hold"))
        cancelled.cancel()
        with pytest.raises(CallError):
            await cancelled
        refused = client.prepare(Script("complete"), call_id="bad\tid")   # refused by the server's own checks
        with pytest.raises(CallError):
            refused.start()                           # C -> End: never live
        for call in (done, aborted, cancelled, refused):
            refs.append(weakref.ref(call))
        return refs

    async def run() -> list[weakref.ref[Any]]:
        async with AsyncClient(shared_server.target) as client:
            refs = await ended_every_way(client)
            gc.collect()
            return [r for r in refs if r() is not None]

    assert asyncio.run(run()) == []

    with Client(shared_server.target) as client:
        call = client.start(Script("complete"))
        call.result()
        ref = weakref.ref(call)
        del call
        gc.collect()
        assert ref() is None
