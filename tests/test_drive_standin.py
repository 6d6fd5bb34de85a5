"""Drive a callstate stand-in of the test proto (shop.v1, `callstate serve --proto`) from the
library and `load --method`: both sides log, `check` judges both."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest

from callstate import codes
from callstate.client import AsyncClient, CallError, Client, PipeScript, Script
from callstate.lifecycle import CANCEL_SEEN
from tests.conftest import ServerProcess, cli, final, read_entries, start_server, states
from tests.test_drive import CHARGE, PROTOS, SHOP, TRACK, WAIT

TIMEOUT = 180


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("standin"), "--proto", str(SHOP), "--proto-path", str(PROTOS),
                       "--max-hold", "20")
    yield srv
    srv.stop()


def cancel_seen_once_and_ended(entries: list[dict[str, Any]]) -> bool:
    return any(e["event"] == CANCEL_SEEN for e in entries) and \
        sum(1 for e in entries if e["state"] == "End" and e["event"] == "enter") == 1


def test_a_script_header_aborts_a_user_call_with_its_code(standin: ServerProcess, tmp_path: Path) -> None:
    log = tmp_path / "client.jsonl"
    with Client(standin.target, log=log) as client:   # the schema from the stand-in's reflection
        with pytest.raises(CallError) as err:
            client.start(Script("abort", abort_code=4321), method=CHARGE, request={"order_id": "o-1"}).result(WAIT)
    assert err.value.code == 4321
    assert final(standin.wait_entries(err.value.call_id, timeout=WAIT))["code"] == 4321
    assert cli("check", str(log), str(standin.log), timeout=TIMEOUT).returncode == 0


@pytest.mark.parametrize("surface", ["sync", "asyncio"])
def test_cancelling_a_held_server_stream_the_stand_in_sees_it_and_ends_once(standin: ServerProcess, tmp_path: Path,
                                                                           surface: str) -> None:
    log = tmp_path / "client.jsonl"
    script = PipeScript(outcome="hold", interval=0.01)
    if surface == "sync":
        with Client(standin.target, log=log) as client:
            pipe = client.pipe(script=script, method=TRACK, request={"order_id": "o-1"}).start()
            pipe.pull(), pipe.pull()
            pipe.cancel()
            with pytest.raises(CallError) as err:
                pipe.result(WAIT)
    else:
        async def run() -> Any:
            async with AsyncClient(standin.target, log=log) as client:
                pipe = client.pipe(script=script, method=TRACK, request={"order_id": "o-1"}).start()
                await pipe.pull(), await pipe.pull()
                pipe.cancel()
                with pytest.raises(CallError) as err:
                    await pipe.result(WAIT)
                return pipe, err
        pipe, err = asyncio.run(run())
    assert err.value.code == codes.RPC_S_CALL_CANCELLED
    server = standin.wait_entries(pipe.call_id, cancel_seen_once_and_ended, timeout=WAIT)
    assert cancel_seen_once_and_ended(server), server
    assert states(read_entries(log, pipe.call_id))[-4:] == ["Can", "WComp", "Comp", "End"]


def test_a_non_abortive_notice_reaches_a_held_user_call(standin: ServerProcess, tmp_path: Path) -> None:
    log = tmp_path / "client.jsonl"
    with Client(standin.target, log=log) as client:
        call = client.start(Script("hold", on_cancel="complete"), method=CHARGE, request={"order_id": "o-1"})
        standin.wait_entries(call.call_id, lambda es: bool(es), timeout=WAIT)   # dispatched
        call.cancel(abortive=False)
        call.result(WAIT)   # the stand-in completes on the notice
    assert cancel_seen_once_and_ended(standin.wait_entries(call.call_id, timeout=WAIT))


@pytest.mark.parametrize("method", [CHARGE, TRACK, "shop.v1.Shop/Upload", "shop.v1.Shop/Chat"])
def test_load_on_the_stand_in_checks_both_sides(standin: ServerProcess, tmp_path: Path, method: str) -> None:
    log, report_file = tmp_path / "client.jsonl", tmp_path / "report.json"
    result = cli("load", "--target", standin.target, "--method", method, "--calls", "300",
                 "--cancel", "abortive=30,non-abortive=20", "--log-file", str(log), "--report", str(report_file),
                 timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every invariant holds on both sides" in result.stdout
    report = orjson.loads(report_file.read_bytes())
    assert "one_sided" not in report["check"] and report["server"]["in_flight_after"] == 0
    checked = cli("check", str(log), str(standin.log), timeout=TIMEOUT)
    assert checked.returncode == 0 and "one-sided" not in checked.stdout, checked.stdout
