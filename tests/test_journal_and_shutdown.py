"""The Journal service over real gRPC, and a graceful stop that loses no End line."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import pytest

from callstate.logfile import check_files
from callstate.client import AsyncClient, CallError, Script
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess, cli, final, final_codes, start_server, states


def test_journal_history_list_watch_counters(server: ServerProcess) -> None:
    async def go() -> None:
        async with grpc.aio.insecure_channel(server.target) as channel, AsyncClient(server.target) as client:
            journal = pb_grpc.JournalStub(channel)
            watch = journal.Watch(pb.WatchRequest())
            stream: asyncio.Queue[pb.StateEntry] = asyncio.Queue()

            async def pump() -> None:   # a cancelled read would cancel the stream: read in one task
                async for entry in watch:
                    stream.put_nowait(entry)
            pumping = asyncio.ensure_future(pump())
            while True:   # probe calls until one comes back through the stream: the subscription is live
                probe = client.start(Script("complete"))
                await probe
                try:
                    first = await asyncio.wait_for(stream.get(), 0.5)
                    break
                except asyncio.TimeoutError:
                    pass
            while not stream.empty():
                stream.get_nowait()
            probes = (await journal.GetCounters(pb.CountersRequest())).dispatched
            done = client.start(Script("complete"))
            await done
            aborted = client.start(Script("abort", abort_code=321))
            with pytest.raises(CallError):
                await aborted
            held = client.start(Script("hold"))
            seen: list[pb.StateEntry] = []
            while len([e for e in seen if e.call_id in (done.call_id, aborted.call_id)]) < 6 or held.call_id not in {e.call_id for e in seen}:
                seen.append(await asyncio.wait_for(stream.get(), 5))
            assert first.side == "server"
            assert [e.state for e in seen if e.call_id == done.call_id] == ["D", "Comp", "End"]
            watch.cancel()
            pumping.cancel()

            history = await journal.GetCall(pb.GetCallRequest(call_id=aborted.call_id))
            assert [e.state for e in history.entries] == ["D", "A", "End"] and history.ended
            assert history.entries[-1].code == 321 and history.entries[-1].grpc_status == "ABORTED"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await journal.GetCall(pb.GetCallRequest(call_id="nope"))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND

            in_flight = await journal.ListCalls(pb.ListCallsRequest(in_flight=True))
            assert [c.call_id for c in in_flight.calls] == [held.call_id]
            by_code = await journal.ListCalls(pb.ListCallsRequest(code=321))
            assert [c.call_id for c in by_code.calls] == [aborted.call_id] and by_code.calls[0].outcome == "abort"

            counters = await journal.GetCounters(pb.CountersRequest())
            assert (counters.in_flight, counters.dispatched, counters.ended) == (1, probes + 3, probes + 2)
            assert counters.by_code[321] == 1 and counters.by_code[0] == probes + 1
            assert counters.by_state["D"] == probes + 3
            held.cancel()
            with pytest.raises(CallError):
                await held
            deadline = asyncio.get_running_loop().time() + 5
            while (await journal.GetCounters(pb.CountersRequest())).in_flight:   # its End is on its way
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
    asyncio.run(go())


def test_watch_cli_follows_live(server: ServerProcess) -> None:
    import subprocess
    import sys
    import time
    proc = subprocess.Popen([sys.executable, "-m", "callstate", "watch", "--target", server.target, "--json",
                             "--count", "3"], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:   # calls until the watcher has seen three entries
        assert cli("call", "--target", server.target).returncode == 0
        time.sleep(0.3)
    out, _ = proc.communicate(timeout=15)
    lines = out.strip().splitlines()
    assert len(lines) == 3 and all('"side":"server"' in line for line in lines)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_stop_ends_every_call_and_flushes_the_log(tmp_path: Path, sig: int) -> None:
    srv = start_server(tmp_path, "--max-hold", "60")
    ids: list[str] = []

    async def go() -> list[int]:
        async with AsyncClient(srv.target) as client:
            calls = [client.start(Script("hold")) for _ in range(20)]
            ids.extend(c.call_id for c in calls)
            for c in calls:
                await srv.await_entries(c.call_id, until=lambda es: states(es) == ["D"])
            srv.proc.send_signal(sig)
            return await final_codes(calls)

    results = asyncio.run(go())
    assert srv.proc.wait(15) == 0
    assert set(results) == {1722}   # RPC_S_SERVER_UNAVAILABLE: the server is shutting down
    for call_id in ids:   # read once, after exit: every End line made it to the file
        entries = srv.entries(call_id)
        assert states(entries) == ["D", "A", "End"] and final(entries)["code"] == 1722
    assert check_files([srv.log]).ok
    assert "stopped after 20 calls (0 left in flight)" in srv.stderr.read_text()


@pytest.mark.parametrize("sig,extra", [(signal.SIGTERM, []), (signal.SIGINT, []),
                                       (signal.SIGINT, ["--cancel-after", "5"]), (signal.SIGTERM, ["--cancel-after", "5"])])
def test_call_cli_cancels_abortively_on_a_signal_and_keeps_its_log(server: ServerProcess, tmp_path: Path, sig: int,
                                                                   extra: list[str]) -> None:
    import subprocess
    import sys
    import time
    log = tmp_path / "call.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "callstate", "call", "--target", server.target, "--outcome", "hold",
                             "--log-file", str(log), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not server.entries() and time.monotonic() < deadline:   # the call is held by the server (and the
        time.sleep(0.05)                                           # CLI set its signal handlers before sending it)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 1 and "final: 1818 RPC_S_CALL_CANCELLED" in err
    from tests.conftest import read_entries
    entries = read_entries(log)
    assert states(entries) == ["C", "WComp", "Can", "WComp", "Comp", "End"] and final(entries)["code"] == 1818
    server_entries = server.wait_entries(entries[0]["call_id"])
    assert states(server_entries) == ["D", "A", "End"]
