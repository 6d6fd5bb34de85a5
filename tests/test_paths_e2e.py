"""Every path of both tables, end to end: a real `callstate serve` process, real gRPC
over a real socket, asserting both sides' state sequences and the final code."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from callstate import codes
from callstate.logfile import check_files
from callstate.statelog import parse_ts
from callstate.client import AsyncClient, Call, CallError, CallPending, Client, InvalidAsyncHandle, Script
from tests.conftest import EVIDENCE_WAIT, ServerProcess, check_own, final, states

pytestmark = pytest.mark.timeout(60)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def finish(call) -> tuple[int, object]:  # type: ignore[no-untyped-def]
    try:
        return codes.RPC_S_OK, await call
    except CallError as err:
        return err.code, err


async def server_side(srv: ServerProcess, call_id: str) -> tuple[list[str], dict]:  # type: ignore[type-arg]
    entries = await srv.await_entries(call_id)
    return states(entries), final(entries)


def test_complete(shared_server: ServerProcess, tmp_path: Path) -> None:
    async def go() -> None:
        async with AsyncClient(shared_server.target, log=tmp_path / "client.jsonl") as client:
            call = client.start(Script("complete", reply_bytes=33))
            code, reply = await finish(call)
            assert code == 0 and len(reply.payload) == 33 and reply.call_id == call.call_id
            assert call.history == ["C", "WComp", "Comp", "End"]
            server_states, end = await server_side(shared_server, call.call_id)
            assert server_states == ["D", "Comp", "End"]
            assert (end["code"], end["grpc_status"]) == (0, "OK")
    run(go())
    assert check_own(tmp_path / "client.jsonl", shared_server).ok


def test_abort_with_application_code_reaches_the_client_exactly(shared_server: ServerProcess) -> None:
    async def go() -> None:
        async with AsyncClient(shared_server.target) as client:
            call = client.start(Script("abort", abort_code=0x2A2A2A, abort_message="no way"))
            code, err = await finish(call)
            assert code == 0x2A2A2A
            assert err.grpc_status == "ABORTED" and "no way" in err.details
            assert call.history == ["C", "WComp", "Comp", "End"]
            server_states, end = await server_side(shared_server, call.call_id)
            assert server_states == ["D", "A", "End"] and end["code"] == 0x2A2A2A
            # a scripted gRPC status is honoured, the exact code still travels in the trailers
            call = client.start(Script("abort", abort_code=1723, abort_status=8))
            code, err = await finish(call)
            assert code == 1723 and err.grpc_status == "RESOURCE_EXHAUSTED"
    run(go())


def test_fatal_is_1726_and_skips_complete_and_abort(shared_server: ServerProcess) -> None:
    async def go() -> None:
        async with AsyncClient(shared_server.target) as client:
            call = client.start(Script("fatal", fatal_message="boom"))
            code, err = await finish(call)
            assert code == codes.RPC_S_CALL_FAILED and err.grpc_status == "UNKNOWN"
            server_states, end = await server_side(shared_server, call.call_id)
            assert server_states == ["D", "End"] and end["code"] == 1726 and end["move"] == "fatal"
    run(go())


def test_hold_then_abortive_cancel(shared_server: ServerProcess) -> None:
    async def go() -> None:
        async with AsyncClient(shared_server.target) as client:
            call = client.start(Script("hold"))
            await shared_server.await_entries(call.call_id, until=lambda es: states(es) == ["D"])
            call.cancel()  # abortive: gRPC cancel
            code, err = await finish(call)
            assert code == codes.RPC_S_CALL_CANCELLED and err.grpc_status == "CANCELLED"
            assert call.history == ["C", "WComp", "Can", "WComp", "Comp", "End"]
            entries = await shared_server.await_entries(call.call_id)
            seen = [e for e in entries if e["event"] == "cancel_seen"]
            assert seen and seen[0]["cancel"] == "abortive"    # the server observed the cancel
            assert states(entries) == ["D", "A", "End"] and final(entries)["code"] == 1818
    run(go())


@pytest.mark.parametrize("on_cancel,expected_code,server_path", [
    ("complete", 0, ["D", "Comp", "End"]),
    ("abort", 1818, ["D", "A", "End"]),
])
def test_hold_then_non_abortive_cancel(shared_server: ServerProcess, on_cancel: str, expected_code: int,
                                       server_path: list[str]) -> None:
    async def go() -> None:
        async with AsyncClient(shared_server.target) as client:
            call = client.start(Script("hold", reply_bytes=5, on_cancel=on_cancel))  # type: ignore[arg-type]
            await shared_server.await_entries(call.call_id, until=lambda es: states(es) == ["D"])
            call.cancel(abortive=False)
            code, reply = await finish(call)
            assert code == expected_code
            if expected_code == 0:
                assert len(reply.payload) == 5 and reply.cancel_seen   # the server's own answer arrived
            assert call.history == ["C", "WComp", "Can", "WComp", "Comp", "End"]
            entries = await shared_server.await_entries(call.call_id)
            assert [e["cancel"] for e in entries if e["event"] == "cancel_seen"] == ["non-abortive"]
            assert states(entries) == server_path
    run(go())


def test_the_script_waits_its_dispatch_delay_then_its_outcome_delay(shared_server: ServerProcess) -> None:
    async def go() -> None:
        async with AsyncClient(shared_server.target) as client:
            call = client.start(Script("complete", dispatch_delay=0.3, outcome_delay=0.2))
            code, _ = await finish(call)
            assert code == codes.RPC_S_OK
            entered = {e["state"]: parse_ts(e["ts"]) for e in await shared_server.await_entries(call.call_id)
                       if e["event"] == "enter"}
            assert entered["Comp"] - entered["D"] >= 0.5   # both waits, one after the other

            # a cancel notice in the dispatch delay cuts it short: the script's on-cancel answers
            call = client.start(Script("complete", dispatch_delay=20, on_cancel="complete"))
            await shared_server.await_entries(call.call_id, until=lambda es: states(es) == ["D"])
            call.cancel(abortive=False)
            code, reply = await asyncio.wait_for(finish(call), 15)   # not after the 20 s
            assert code == codes.RPC_S_OK and reply.cancel_seen
            entries = await shared_server.await_entries(call.call_id)
            assert [e["cancel"] for e in entries if e["event"] == "cancel_seen"] == ["non-abortive"]
            assert states(entries) == ["D", "Comp", "End"]
    run(go())


def test_non_abortive_cancel_escalates_after_its_timeout(shared_server: ServerProcess) -> None:
    async def go() -> None:
        async with AsyncClient(shared_server.target) as client:
            call = client.start(Script("hold", on_cancel="ignore"))
            await shared_server.await_entries(call.call_id, until=lambda es: states(es) == ["D"])
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            call.cancel(abortive=False, timeout=0.3)
            code, _ = await finish(call)
            waited = loop.time() - t0
            assert code == codes.RPC_S_CALL_CANCELLED
            # nothing came back before the escalation (0.3 s); without one the call would be held to the
            # server's 20 s max hold: a bound far from both that a loaded machine cannot reach
            assert 0.25 <= waited < 12, waited
            assert call.history == ["C", "WComp", "Can", "WComp", "Can", "WComp", "Comp", "End"]
            entries = await shared_server.await_entries(
                call.call_id, until=lambda es: [e["cancel"] for e in es if e["event"] == "cancel_seen"] == ["non-abortive", "abortive"])
            assert [e["cancel"] for e in entries if e["event"] == "cancel_seen"] == ["non-abortive", "abortive"]
    run(go())


def test_complete_before_done_is_997_then_final_then_1914(shared_server: ServerProcess) -> None:
    async def go() -> None:
        async with AsyncClient(shared_server.target) as client:
            call = client.start(Script("complete", outcome_delay=0.3))
            with pytest.raises(CallPending) as pending:
                call.complete()
            assert pending.value.code == 997
            assert call.state == "WComp" and call.history == ["C", "WComp"]   # no state change
            assert call.status() == 997
            assert await call.wait(5)
            assert call.status() == 0 and call.status() == 0    # polling does not consume
            assert call.state == "WComp"
            call.complete()   # the first complete after the notification is final
            assert call.history == ["C", "WComp", "Comp", "End"]
            with pytest.raises(InvalidAsyncHandle) as second:
                call.complete()
            assert second.value.code == 1914
            with pytest.raises(InvalidAsyncHandle):
                call.cancel()
            assert call.history == ["C", "WComp", "Comp", "End"]
    run(go())


def test_call_that_fails_to_start_goes_C_to_End(shared_server: ServerProcess, tmp_path: Path) -> None:
    async def go() -> None:
        async with AsyncClient(shared_server.target, log=tmp_path / "c.jsonl") as client:
            call = client.prepare(Script("complete", dispatch_delay=-1))
            with pytest.raises(CallError) as info:
                call.start()
            assert info.value.code == codes.RPC_S_INVALID_ARG and "dispatch_delay_ms" in str(info.value)
            assert call.history == ["C", "End"]
            with pytest.raises(InvalidAsyncHandle):   # nothing to complete
                call.complete()
            return call.call_id
    call_id = run(go())
    assert shared_server.entries(call_id) == []   # it never went out
    report = check_files([tmp_path / "c.jsonl"])
    assert report.ok and report.by_code == {87: 1}


def test_cancel_in_state_C(shared_server: ServerProcess) -> None:
    async def go() -> None:
        async with AsyncClient(shared_server.target) as client:
            call = client.prepare(Script("complete"))
            call.cancel()
            code, _ = await finish(call)
            assert code == 1818 and call.history == ["C", "Can", "WComp", "Comp", "End"]
    run(go())


@pytest.mark.parametrize("driven", ["inline", "by a driver task"])
def test_cancelling_the_awaiting_task_is_an_abortive_cancel(shared_server: ServerProcess, driven: str) -> None:
    async def go() -> None:
        async with AsyncClient(shared_server.target) as client:
            call = client.start(Script("hold"))
            if driven != "inline":
                assert call.status() == 997   # polling starts a driver task: the awaiter is shielded
            await shared_server.await_entries(call.call_id, until=lambda es: states(es) == ["D"])
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(call.result(), 0.3)
            for _ in range(1000):   # the rushed notification arrives, and the call is completed for the awaiter
                if call.state == "End":
                    break
                await asyncio.sleep(0.01)
            assert call.history == ["C", "WComp", "Can", "WComp", "Comp", "End"]
            assert call.code == 1818
            with pytest.raises(InvalidAsyncHandle):
                call.complete()
            entries = await shared_server.await_entries(call.call_id)
            assert states(entries) == ["D", "A", "End"]
            assert [e["cancel"] for e in entries if e["event"] == "cancel_seen"] == ["abortive"]
    run(go())


def test_closing_the_client_under_an_awaiter_gives_1722(shared_server: ServerProcess) -> None:
    async def go() -> None:
        client = AsyncClient(shared_server.target)
        call = client.start(Script("hold"))
        await shared_server.await_entries(call.call_id, until=lambda es: states(es) == ["D"])
        waiter = asyncio.ensure_future(finish(call))
        await asyncio.sleep(0)   # the waiter starts awaiting the call
        await client.close()
        code, err = await asyncio.wait_for(waiter, 5)
        assert code == codes.RPC_S_SERVER_UNAVAILABLE and call.state == "End"
        entries = await shared_server.await_entries(call.call_id)
        assert states(entries) == ["D", "A", "End"]   # the server saw the connection go
    run(go())


def test_wait_before_start_and_after_a_failed_start_are_clear_errors(shared_server: ServerProcess) -> None:
    async def go() -> None:
        async with AsyncClient(shared_server.target) as client:
            call = client.prepare(Script("complete"))
            with pytest.raises(CallError) as info:
                await call.wait()
            assert info.value.code == codes.RPC_S_INVALID_ASYNC_CALL and "before start" in str(info.value)
            bad = client.prepare(Script("complete", outcome_delay=-1))
            with pytest.raises(CallError):
                bad.start()
            with pytest.raises(InvalidAsyncHandle):
                await bad
    run(go())


def test_a_failing_callback_does_not_starve_the_others(shared_server: ServerProcess) -> None:
    from callstate.client import AsyncCompletionQueue

    def boom(call: object) -> None:
        raise RuntimeError("user callback bug")

    async def go() -> None:
        async with AsyncClient(shared_server.target) as client:
            queue = AsyncCompletionQueue()
            call = client.prepare(Script("complete"), on_complete=boom)
            call.add_done_callback(queue.post)
            call.start()
            got = await asyncio.wait_for(queue.get(), 5)
            assert got is call and call.complete().call_id == call.call_id
    run(go())


def test_sync_callbacks_can_complete_from_the_notification_thread(shared_server: ServerProcess) -> None:
    """The outcome may arrive before start() has recorded WComp: it is held back until then."""
    import threading
    errors: list[BaseException] = []
    done = threading.Semaphore(0)

    def on_complete(call: Call) -> None:
        try:
            call.complete()
        except CallError:
            pass
        except BaseException as exc:   # e.g. LifecycleError from completing in C
            errors.append(exc)
        done.release()

    with Client(shared_server.target) as client:
        calls = [client.start(Script("complete"), on_complete=on_complete) for _ in range(300)]
        for _ in calls:
            assert done.acquire(timeout=10)
    assert errors == []
    assert all(c.history == ["C", "WComp", "Comp", "End"] for c in calls)


def test_notification_styles_callback_queue_and_polling(shared_server: ServerProcess) -> None:
    from callstate.client import AsyncCompletionQueue

    async def go() -> None:
        async with AsyncClient(shared_server.target) as client:
            queue = AsyncCompletionQueue()
            fired: list[str] = []
            calls = [client.start(Script("complete", outcome_delay=0.05 * i), queue=queue) for i in range(3)]
            cb_call = client.start(Script("abort", abort_code=9), on_complete=lambda c: fired.append(c.call_id))
            got = [await asyncio.wait_for(queue.get(), 5) for _ in calls]
            assert sorted(c.call_id for c in got) == sorted(c.call_id for c in calls)
            for c in got:
                assert c.complete().call_id == c.call_id
            # each wait for the evidence itself, bounded by EVIDENCE_WAIT: a fixed 200 or 300 turns of
            # 10 ms (2 or 3 s) was the whole margin a starved server had for a round trip
            deadline = asyncio.get_running_loop().time() + EVIDENCE_WAIT
            while not fired and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            assert fired == [cb_call.call_id]
            polled = client.start(Script("complete", outcome_delay=0.1))
            assert polled.status() == 997
            deadline = asyncio.get_running_loop().time() + EVIDENCE_WAIT
            while polled.status() == 997 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            assert polled.status() == 0
    run(go())


def test_sync_client_paths(shared_server: ServerProcess, tmp_path: Path) -> None:
    from callstate.client import CompletionQueue

    with Client(shared_server.target, log=tmp_path / "sync.jsonl") as client:
        assert len(client.start(Script("complete", reply_bytes=7)).result(5).payload) == 7
        call = client.start(Script("hold", on_cancel="complete"))
        shared_server.wait_entries(call.call_id, until=lambda es: states(es) == ["D"])
        with pytest.raises(CallPending):
            call.complete()
        call.cancel(abortive=False)
        assert call.result(5).cancel_seen
        held = client.start(Script("hold"))
        shared_server.wait_entries(held.call_id, until=lambda es: states(es) == ["D"])
        held.cancel()
        with pytest.raises(CallError) as info:
            held.result(5)
        assert info.value.code == 1818
        queue = CompletionQueue()
        calls = [client.start(Script("abort", abort_code=100 + i), queue=queue) for i in range(3)]
        codes_seen = set()
        for _ in calls:
            with pytest.raises(CallError) as info:
                queue.get(timeout=5).complete()
            codes_seen.add(info.value.code)
        assert codes_seen == {100, 101, 102}
        # an ignored notice escalates at 0.2 s; the server ends the call at 3 s, not at --max-hold
        esc = client.start(Script("complete", outcome_delay=3, on_cancel="ignore"))
        shared_server.wait_entries(esc.call_id, until=lambda es: states(es) == ["D"])
        esc.cancel(abortive=False, timeout=0.2)
        with pytest.raises(CallError):
            esc.result(5)
        assert esc.history == ["C", "WComp", "Can", "WComp", "Can", "WComp", "Comp", "End"]
    report = check_own(tmp_path / "sync.jsonl", shared_server)
    assert not report.by_kind().get("code_mismatch"), report.summary()


def test_a_cancel_notice_that_overtakes_its_call_is_kept_for_the_dispatch(shared_server: ServerProcess,
                                                                          tmp_path: Path) -> None:
    """The notice and the call are separate RPCs: the notice may reach the server first."""
    async def go() -> list[str]:
        async with AsyncClient(shared_server.target, log=tmp_path / "c.jsonl") as client:
            calls = []
            for _ in range(100):
                call = client.start(Script("hold"))
                call.cancel(abortive=False)          # no escalation: only the notice can end it
                calls.append(call)
            results = [await finish(c) for c in calls]
            assert {code for code, _ in results} == {1818}
            return [c.call_id for c in calls]
    ids = run(go())
    for call_id in ids:
        entries = shared_server.wait_entries(call_id)
        assert [e["cancel"] for e in entries if e["event"] == "cancel_seen"] == ["non-abortive"], entries
        assert states(entries) == ["D", "A", "End"]
    from tests.conftest import read_entries
    sent = [e["detail"] for e in read_entries(tmp_path / "c.jsonl") if e["event"] == "cancel_sent"]
    # (a reply that comes back after the call's End is not logged: nothing follows End)
    assert sent and all(d.startswith("delivered") for d in sent), set(sent)


def test_closing_the_client_ends_its_outstanding_calls_in_the_log(shared_server: ServerProcess, tmp_path: Path) -> None:
    from tests.conftest import read_entries

    async def go() -> tuple[str, str]:
        client = AsyncClient(shared_server.target, log=tmp_path / "c.jsonl")
        held = client.start(Script("hold"))
        done = client.start(Script("complete"))
        await done.wait()                     # notified, never completed by the caller
        await shared_server.await_entries(held.call_id, until=lambda es: states(es) == ["D"])
        await client.close()
        assert held.history[-2:] == ["Comp", "End"] and held.code == codes.RPC_S_SERVER_UNAVAILABLE
        with pytest.raises(CallError) as info:
            await held                        # the outcome of the completion made on its behalf
        assert info.value.code == codes.RPC_S_SERVER_UNAVAILABLE
        return held.call_id, done.call_id
    held_id, done_id = run(go())
    entries = read_entries(tmp_path / "c.jsonl")
    for call_id, code in ((held_id, 1722), (done_id, 0)):
        assert final([e for e in entries if e["call_id"] == call_id])["code"] == code


def test_cancelling_one_waiter_leaves_the_result_to_the_other(shared_server: ServerProcess) -> None:
    async def go() -> None:
        async with AsyncClient(shared_server.target) as client:
            call = client.start(Script("hold"))
            waiter = asyncio.ensure_future(call.wait())
            getter = asyncio.ensure_future(finish(call))
            await shared_server.await_entries(call.call_id, until=lambda es: states(es) == ["D"])
            waiter.cancel()                   # an abortive cancel of the call; wait() does not complete
            code, _ = await asyncio.wait_for(getter, 5)
            assert code == codes.RPC_S_CALL_CANCELLED
            assert call.history == ["C", "WComp", "Can", "WComp", "Comp", "End"]
    run(go())
