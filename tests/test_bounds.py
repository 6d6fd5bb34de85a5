"""Every bound of the server: refused with the field named (87) or said when hit, and what
the server accepts reaches the caller intact (real servers, real gRPC over real sockets)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from callstate import codes, lifecycle
from callstate.client import AsyncClient, CallError, Script
from callstate.script import ABORT_CODE_MAX, ABORT_CODE_MIN, Limits
from callstate.server.emulator import EarlyNotices
from callstate.server.journal import CallRecord, Journal
from callstate.statelog import Entry
from callstate.lifecycle import C, CANCEL_SEEN, D, DISPATCH, END, ENTER, FATAL, NON_ABORTIVE, SERVER
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from tests.conftest import EVIDENCE_WAIT, ServerProcess, cli, final, start_server, states

pytestmark = pytest.mark.timeout(60)
LIMITS = Limits()


def raw_call(target: str, request: pb.CallRequest, timeout: float = 10) -> tuple[grpc.StatusCode, str, str]:
    """A call straight through gRPC (no client-side checks): (status, details, callstate-code trailer)."""
    with grpc.insecure_channel(target) as channel:
        try:
            pb_grpc.EmulatorStub(channel).Call(request, timeout=timeout)
            return grpc.StatusCode.OK, "", "0"
        except grpc.RpcError as err:
            return err.code(), err.details() or "", dict(err.trailing_metadata() or ()).get("callstate-code", "")


def counters(target: str) -> pb.Counters:
    with grpc.insecure_channel(target) as channel:
        return pb_grpc.JournalStub(channel).GetCounters(pb.CountersRequest(), timeout=5)


async def outcome(call) -> tuple[int, object]:  # type: ignore[no-untyped-def]
    try:
        return codes.RPC_S_OK, await call
    except CallError as err:
        return err.code, err


@pytest.mark.parametrize("call_id,why", [("x" * (LIMITS.max_call_id_bytes + 1), "at most"),
                                         ("two\x01parts", "printable ASCII"), ("caf\u00e9", "printable ASCII"),
                                         ("x" * 10_000, "at most")])
def test_call_id_is_a_short_metadata_value_in_the_client_and_the_server(shared_server: ServerProcess, call_id: str,
                                                                       why: str) -> None:
    async def go() -> None:
        async with AsyncClient(shared_server.target) as client:
            call = client.prepare(Script("complete"), call_id=call_id)
            with pytest.raises(CallError) as info:
                call.start()
            assert info.value.code == codes.RPC_S_INVALID_ARG and "call_id" in str(info.value) and why in str(info.value)
            assert call.history == [C, END]
    asyncio.run(go())
    status, details, code = raw_call(shared_server.target, pb.CallRequest(call_id=call_id))
    assert (status, code) == (grpc.StatusCode.INVALID_ARGUMENT, "87") and details.startswith("call_id:") and why in details
    with grpc.insecure_channel(shared_server.target) as channel:   # the notice path checks it too
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.EmulatorStub(channel).Cancel(pb.CancelRequest(call_id=call_id), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "call_id" in (err.value.details() or "")
    after = f"after-{time.monotonic_ns()}"   # a later call's End in the log: everything before it is flushed
    assert raw_call(shared_server.target, pb.CallRequest(call_id=after, script=pb.Script(outcome=pb.OUTCOME_COMPLETE)))[0] \
        == grpc.StatusCode.OK
    shared_server.wait_entries(after)
    assert not any(e["call_id"] == call_id for e in shared_server.entries())   # refused before dispatch: not logged


def test_the_largest_reply_and_message_the_server_accepts_reach_the_client_intact(shared_server: ServerProcess) -> None:
    longest_id = "i" * LIMITS.max_call_id_bytes
    message = "\u00e9" * (LIMITS.max_message_bytes // 2)   # 2 bytes each in UTF-8: exactly the limit

    async def go() -> None:
        async with AsyncClient(shared_server.target) as client:
            code, reply = await outcome(client.start(Script("complete", reply_bytes=LIMITS.max_reply_bytes),
                                                     call_id=longest_id))
            assert code == 0 and len(reply.payload) == LIMITS.max_reply_bytes   # not 1723 at the receive limit
            echo = bytes(range(256)) * (LIMITS.max_payload_bytes // 256)
            code, reply = await outcome(client.start(Script("complete", echo=True), payload=echo))
            assert code == 0 and reply.payload == echo
            code, err = await outcome(client.start(Script("abort", abort_code=5001, abort_message=message)))
            assert code == 5001 and err.details == message
            code, err = await outcome(client.start(Script("fatal", fatal_message=message)))
            assert code == codes.RPC_S_CALL_FAILED
    asyncio.run(go())
    assert final(shared_server.wait_entries(longest_id))["code"] == 0


@pytest.mark.parametrize("script,field", [
    (pb.Script(outcome=pb.OUTCOME_COMPLETE, reply_bytes=LIMITS.max_reply_bytes + 1), "script.reply_bytes"),
    (pb.Script(outcome=pb.OUTCOME_ABORT, abort_code=7, abort_message="m" * (LIMITS.max_message_bytes + 1)),
     "script.abort_message"),
    (pb.Script(outcome=pb.OUTCOME_FATAL, fatal_message="m" * (LIMITS.max_message_bytes + 1)), "script.fatal_message"),
    (pb.Script(outcome=pb.OUTCOME_ABORT, abort_code=ABORT_CODE_MAX + 1), "script.abort_code"),
    (pb.Script(outcome=pb.OUTCOME_ABORT, abort_code=ABORT_CODE_MIN - 1), "script.abort_code"),
    (pb.Script(outcome=pb.OUTCOME_ABORT, abort_code=0), "script.abort_code"),
])
def test_what_could_not_survive_the_wire_is_refused_naming_the_field(shared_server: ServerProcess, script: pb.Script,
                                                                    field: str) -> None:
    call_id = f"bound-{time.monotonic_ns()}"
    status, details, code = raw_call(shared_server.target, pb.CallRequest(call_id=call_id, script=script))
    assert (status, code) == (grpc.StatusCode.INVALID_ARGUMENT, "87") and details.startswith(field), details
    assert final(shared_server.wait_entries(call_id))["code"] == 87
    # GetCounters still answers, and the refused call is not left in flight. The module's server may
    # still be ending an earlier test's call, so wait for none in flight: a leaked call never ends.
    deadline = time.monotonic() + EVIDENCE_WAIT
    while counters(shared_server.target).in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counters(shared_server.target).in_flight == 0


def test_an_echo_larger_than_a_reply_may_be_is_refused(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--max-reply-bytes", "1000", "--max-payload-bytes", "5000")
    try:
        for payload, script, field in ((bytes(2000), pb.Script(outcome=pb.OUTCOME_COMPLETE, echo=True), "payload"),
                                       (bytes(6000), pb.Script(outcome=pb.OUTCOME_COMPLETE), "payload")):
            status, details, code = raw_call(srv.target, pb.CallRequest(call_id=f"e{len(payload)}", script=script,
                                                                        payload=payload))
            assert (status, code) == (grpc.StatusCode.INVALID_ARGUMENT, "87") and details.startswith(field), details
    finally:
        srv.stop()


def test_a_script_seen_valid_is_still_checked_with_each_payload_and_a_bad_one_each_time(tmp_path: Path) -> None:
    """The server keeps the scripts it found valid by their bytes (server/dispatch.py): the same
    script with a payload over a bound is still refused naming the payload, and a bad script is
    refused every time it comes."""
    srv = start_server(tmp_path, "--max-reply-bytes", "1000", "--max-payload-bytes", "5000")
    echo = pb.Script(outcome=pb.OUTCOME_COMPLETE, echo=True)
    bad = pb.Script(outcome=pb.OUTCOME_COMPLETE, reply_bytes=1001)
    try:
        for n, (payload, script, want) in enumerate(((bytes(10), echo, "ok"), (bytes(10), echo, "ok"),
                                                     (bytes(2000), echo, "payload"), (bytes(6000), echo, "payload"),
                                                     (bytes(10), echo, "ok"), (b"", bad, "script.reply_bytes"),
                                                     (b"", bad, "script.reply_bytes"))):
            status, details, code = raw_call(srv.target, pb.CallRequest(call_id=f"seen-{n}", script=script,
                                                                        payload=payload))
            if want == "ok":
                assert (status, code) == (grpc.StatusCode.OK, "0"), (n, details)
            else:
                assert (status, code) == (grpc.StatusCode.INVALID_ARGUMENT, "87") and details.startswith(want), \
                    (n, details)
    finally:
        srv.stop()


@pytest.mark.parametrize("code", [ABORT_CODE_MIN, -1, 1, 0x7FFFFFFF, ABORT_CODE_MAX])
def test_abort_codes_at_the_32_bit_edges_reach_the_client_and_the_counters(shared_server: ServerProcess,
                                                                          code: int) -> None:
    async def go() -> int:
        async with AsyncClient(shared_server.target) as client:
            call = client.start(Script("abort", abort_code=code))
            got, _ = await outcome(call)
            assert final(await shared_server.await_entries(call.call_id))["code"] == code
            return got
    assert asyncio.run(go()) == code
    assert counters(shared_server.target).by_code[code] >= 1


def test_max_hold_bounds_every_call_including_ignore(tmp_path: Path) -> None:
    """A caller killed while its call ignores cancels: the call still ends at --max-hold (1460)."""
    srv = start_server(tmp_path, "--max-hold", "1")
    try:
        async def go() -> str:
            async with AsyncClient(srv.target) as client:
                call = client.start(Script("complete", outcome_delay=60, on_cancel="ignore"))
                await srv.await_entries(call.call_id, until=lambda es: states(es) == [D])
                call.cancel()   # abortive: the caller is gone, as if killed
                await outcome(call)
                return call.call_id
        t0 = time.monotonic()
        call_id = asyncio.run(go())
        entries = srv.wait_entries(call_id, timeout=45)
        assert final(entries)["code"] == codes.RPC_S_TIMEOUT and "max hold" in final(entries)["detail"]
        assert time.monotonic() - t0 < 45   # the 1 s max hold, not the script's 60 s (slack for a loaded machine)
        assert any(e["event"] == CANCEL_SEEN for e in entries)   # it saw the cancel, ignored it, and still ended
    finally:
        srv.stop()


def test_early_notices_expire_on_a_timer_and_are_bounded_in_count_and_bytes() -> None:
    async def go() -> None:
        notices = EarlyNotices(ttl=0.2, limit=1000, max_bytes=1000)
        for i in range(10):
            notices.remember(f"{i:03d}" + "n" * 197)   # 200 bytes each: only 5 fit
        assert len(notices) == 5 and notices.bytes == 1000 and notices.dropped == 5
        # the first ones kept are never displaced by later ones: new ones are refused when full
        assert notices.take("000" + "n" * 197) and not notices.take("009" + "n" * 197)
        deadline = time.monotonic() + 20
        while len(notices) and time.monotonic() < deadline:   # no new notice arrives: the timer expires them
            await asyncio.sleep(0.02)
        assert len(notices) == 0 and notices.bytes == 0
        counted = EarlyNotices(ttl=10, limit=3, max_bytes=10**6)
        for i in range(10):
            counted.remember(str(i))
        assert len(counted) == 3 and counted.take("0") and not counted.take("9")
        counted.clear()
    asyncio.run(go())


def _end(call_id: str, t: float) -> list[Entry]:
    return [Entry(t, SERVER, call_id, D, None, ENTER, DISPATCH),
            Entry(t, SERVER, call_id, END, D, ENTER, FATAL, 1726, "UNKNOWN", "d" * 100)]


def test_journal_is_bounded_in_bytes_and_in_events_per_call() -> None:
    journal = Journal(capacity=1_000_000, max_bytes=100_000, max_events_per_call=3)
    for i in range(5000):
        rec = journal.keep(CallRecord(f"call-{i}"))
        for e in _end(f"call-{i}", i):
            journal.add(rec, e)
    assert journal.bytes <= 100_000 and 0 < len(journal) < 5000 and journal.get("call-4999") is not None
    rec = journal.keep(CallRecord("noisy"))
    for i in range(1000):
        journal.add(rec, Entry(i, SERVER, "noisy", D, D, CANCEL_SEEN, cancel=NON_ABORTIVE))
    assert len(rec.entries) == 3 and rec.omitted == 997 and journal.cancels_seen == 1000   # counted, not stored


def test_an_ended_call_kept_by_the_journal_is_its_record_and_holds_no_wait() -> None:
    """The server's call is its own journal record (one object per call); once released it keeps
    its history for the journal but lets go of its wake future and poll state."""
    from callstate.server.config import EmulatorConfig
    from callstate.server.dispatch import Dispatcher

    async def go() -> None:
        journal = Journal()
        d = Dispatcher(EmulatorConfig(cancel_poll_ms=50), journal, lambda entry: None)
        call = d.dispatch("held", "", "hold", None)  # type: ignore[arg-type]
        assert journal.get("held") is call and call.polls is not None
        call.wake_after(10)
        call.stop_timer()
        call.move(lifecycle.ABORT)
        call.move(lifecycle.ABORTED, 1818)
        d.release("held")
        kept = journal.get("held")
        assert kept is call and kept.ended and [e.state for e in kept.history()] == [D, lifecycle.A, END]
        assert kept._wake is None and kept.polls is None and "held" not in d.live
    asyncio.run(go())


def test_many_notices_to_one_call_keep_its_history_small(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--journal-events-per-call", "5")
    try:
        async def go() -> None:
            async with AsyncClient(srv.target) as client:
                call = client.start(Script("hold", on_cancel="ignore"))
                await srv.await_entries(call.call_id, until=lambda es: states(es) == [D])
                async with grpc.aio.insecure_channel(srv.target) as channel:
                    stub = pb_grpc.EmulatorStub(channel)
                    await asyncio.gather(*(stub.Cancel(pb.CancelRequest(call_id=call.call_id, cancel_key=call._cancel_key)) for _ in range(200)))   # the owner's notices
                    history = await pb_grpc.JournalStub(channel).GetCall(pb.GetCallRequest(call_id=call.call_id))
                assert sum(e.event == CANCEL_SEEN for e in history.entries) == 5
                call.cancel()
                await outcome(call)
                # the handler ignores cancels, so the call stays in D: wait for the abortive cancel's entry
                entries = await srv.await_entries(call.call_id, until=lambda es: sum(e["event"] == CANCEL_SEEN for e in es) >= 201)
                assert sum(e["event"] == CANCEL_SEEN for e in entries) == 201   # the state log keeps them all
        asyncio.run(go())
    finally:
        srv.stop()


def _stuck_watch(target: str, method: str = "Watch") -> tuple[grpc.Channel, Iterator]:  # type: ignore[type-arg]
    """A Watch or Follow stream, subscribed, whose client then reads nothing: a tiny HTTP/2
    window, so the server's buffer for it fills after a few entries."""
    channel = grpc.insecure_channel(target, options=[("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)])
    stream = getattr(pb_grpc.JournalStub(channel), method)(pb.WatchRequest(), timeout=60)
    first = concurrent.futures.ThreadPoolExecutor(1).submit(next, stream)
    deadline = time.monotonic() + EVIDENCE_WAIT
    while not first.done() and time.monotonic() < deadline:   # Watch says nothing until an entry: make some
        raw_call(target, pb.CallRequest(script=pb.Script(outcome=pb.OUTCOME_COMPLETE)))
    assert first.result(timeout=1).dropped == 0
    return channel, stream


@pytest.mark.parametrize("method", ["Watch", "Follow"])
def test_a_watcher_that_drops_is_told_on_its_own_stream(tmp_path: Path, method: str) -> None:
    srv = start_server(tmp_path, "--watch-buffer", "5", "--no-state-log")
    channel, stream = _stuck_watch(srv.target, method)
    try:
        deadline = time.monotonic() + 20
        while counters(srv.target).watch_dropped == 0 and time.monotonic() < deadline:
            for _ in range(50):
                raw_call(srv.target, pb.CallRequest(script=pb.Script(outcome=pb.OUTCOME_COMPLETE)))
        assert counters(srv.target).watch_dropped > 0
        told = 0
        for entry in stream:   # now read: the stream itself says how much it lost
            told = max(told, entry.dropped)
            if told:
                break
        assert told > 0
    finally:
        channel.close()
        srv.stop()


def test_load_judges_its_own_stream_not_another_watchers_drops(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--watch-buffer", "50", "--no-state-log")
    channel, stream = _stuck_watch(srv.target)   # someone else's stuck watcher, never read again
    try:
        result = cli("load", "--target", srv.target, "--calls", "400", "--concurrency", "16", "--seed", "1",
                     "--json", timeout=60)
        assert counters(srv.target).watch_dropped > 0   # the stuck watcher dropped, server-wide
        report = json.loads(result.stdout)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr
        assert report["check"]["ok"] and report["stream_dropped"] == 0
    finally:
        channel.close()
        srv.stop()


def test_watchers_are_bounded(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--max-watchers", "1", "--no-state-log")
    try:
        with grpc.insecure_channel(srv.target) as channel:
            journal = pb_grpc.JournalStub(channel)
            first = journal.Follow(pb.WatchRequest(), timeout=10)
            assert len(next(first).entries) == 0   # subscribed
            with pytest.raises(grpc.RpcError) as err:
                next(journal.Follow(pb.WatchRequest(), timeout=10))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-watchers" in err.value.details()
            first.cancel()
    finally:
        srv.stop()


def test_concurrent_streams_per_connection_are_bounded(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--max-concurrent-streams", "2")
    try:
        async def go() -> None:
            async with AsyncClient(srv.target) as client, AsyncClient(
                    srv.target, channel_options=[("grpc.use_local_subchannel_pool", 1)]) as other:
                held = [client.start(Script("hold")) for _ in range(3)]
                deadline = time.monotonic() + 10
                while counters(srv.target).in_flight < 2 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                assert (await outcome(other.start(Script("complete"))))[0] == 0   # another connection is served
                c = counters(srv.target)
                assert (c.in_flight, c.dispatched) == (2, 3)   # the third stream of the first waits its turn
                deadline = time.monotonic() + 15
                while len(dispatched := [c for c in held if srv.entries(c.call_id)]) < 2 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)   # which two the server has (streams may open in any order)
                dispatched[0].cancel()   # a slot frees: the waiting stream goes through
                while counters(srv.target).dispatched < 4 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                assert counters(srv.target).dispatched == 4
                for call in held:
                    call.cancel()
                    await outcome(call)
        asyncio.run(go())
    finally:
        srv.stop()


def test_mix_aborts_carry_the_servers_abort_code_at_the_32_bit_edge(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--mix", "abort=1", "--abort-code", str(ABORT_CODE_MAX), "--no-state-log")
    try:
        status, _, code = raw_call(srv.target, pb.CallRequest())   # no script: the mix decides
        assert (status, code) == (grpc.StatusCode.ABORTED, str(ABORT_CODE_MAX))
        assert counters(srv.target).by_code[ABORT_CODE_MAX] == 1   # GetCounters keeps working
    finally:
        srv.stop()


@pytest.mark.parametrize("kind", ["in", "both"])
def test_a_push_over_a_lowered_payload_limit_is_refused_the_same_on_both_sides(tmp_path: Path, kind: str) -> None:
    """Below the default payload limit the server refuses an oversized push itself (87, the push
    named) instead of letting gRPC cut the stream, which its handler could only log as the
    caller's cancel (1818) while the caller read RESOURCE_EXHAUSTED: `check` then found the two
    sides disagreeing. Both a few KiB and the largest push a client sends are refused alike."""
    srv = start_server(tmp_path, "--max-payload-bytes", "1000")
    try:
        for n, size in enumerate((5000, LIMITS.max_payload_bytes)):
            client_log = tmp_path / f"client-{n}.log"
            result = cli("call", "--target", srv.target, "--pipe", kind, "--messages", "2", "--message-bytes",
                         str(size), "--log-file", str(client_log), timeout=60)
            assert result.returncode == 1, result.stdout + result.stderr
            client_end = final([json.loads(line) for line in client_log.read_text().splitlines()])
            assert client_end["code"] == codes.RPC_S_INVALID_ARG, client_end
            assert f"push 1: {size} bytes, over the server's payload limit (1000 bytes)" in client_end["detail"]
            server_end = final(srv.wait_entries(client_end["call_id"], lambda es: any(e["state"] == END for e in es)))
            assert (server_end["code"], server_end["grpc_status"]) == (codes.RPC_S_INVALID_ARG, "INVALID_ARGUMENT")
            checked = cli("check", str(client_log), str(srv.log), timeout=60)
            assert checked.returncode == 0, checked.stdout + checked.stderr
        ok_log = tmp_path / "client-ok.log"   # at the limit: taken
        result = cli("call", "--target", srv.target, "--pipe", kind, "--messages", "2", "--message-bytes", "1000",
                     "--log-file", str(ok_log), timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        srv.stop()
