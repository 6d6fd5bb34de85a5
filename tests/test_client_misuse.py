"""A client used where its calls cannot be made: an AsyncClient on an event loop its channel
does not belong to, a call whose making raises, a timeout that is not one. Each is refused with
one clear error, and every call the client logged still reaches End (the checker passes)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from callstate import codes
from callstate.client import AsyncClient, CallError, Client, Script
from callstate.lifecycle import START_FAILED
from tests.conftest import ServerProcess, check_own, final, read_entries, states

pytestmark = pytest.mark.timeout(120)


def _ended_unmade(log: Path, code: int) -> list[dict[str, Any]]:
    """The log's calls, each ended C -> End by start_failed with `code`."""
    entries = read_entries(log)
    ids = {e["call_id"] for e in entries}
    assert ids
    for call_id in ids:
        mine = [e for e in entries if e["call_id"] == call_id]
        assert states(mine) == ["C", "End"], mine
        assert final(mine)["move"] == START_FAILED and final(mine)["code"] == code, mine
    return entries


def test_an_async_client_made_outside_the_loop_refuses_its_calls_and_pipes(
        shared_server: ServerProcess, tmp_path: Path) -> None:
    # made at module level (no loop running), used in asyncio.run(): grpc.aio's channel belongs
    # to the thread's default loop, and a call made on another loop would fail when awaited
    log = tmp_path / "client.jsonl"
    home = asyncio.new_event_loop()   # the thread's current loop, not running, as at a module's import
    asyncio.set_event_loop(home)
    try:
        client = AsyncClient(shared_server.target, log=log)
    finally:
        asyncio.set_event_loop(None)
    assert client._channel._loop is home

    async def use() -> list[CallError]:
        refused = []
        for make in (lambda: client.start(Script("complete")), lambda: client.pipe("out", None).start()):
            with pytest.raises(CallError) as err:
                make()
            refused.append(err.value)
        return refused

    refused = asyncio.run(use())
    assert [e.code for e in refused] == [codes.RPC_S_INVALID_ASYNC_CALL] * 2
    assert all("belongs to another event loop" in e.details and "closed" not in e.details for e in refused)
    assert not client._live
    home.run_until_complete(client.close())   # the loop it belongs to closes it
    home.close()
    _ended_unmade(log, codes.RPC_S_INVALID_ASYNC_CALL)
    assert check_own(log, shared_server).ok


def test_an_async_client_from_a_closed_loop_says_so(shared_server: ServerProcess, tmp_path: Path) -> None:
    # a client made in one asyncio.run() (an earlier test's loop, say) and used in the next
    log = tmp_path / "client.jsonl"

    async def make() -> AsyncClient:
        return AsyncClient(shared_server.target, log=log)

    client = asyncio.run(make())

    async def use() -> CallError:
        with pytest.raises(CallError) as err:
            client.start(Script("complete"))
        return err.value

    err = asyncio.run(use())
    assert err.code == codes.RPC_S_INVALID_ASYNC_CALL and "another event loop, now closed" in err.details
    client.closed = True   # its loop is gone: nothing left to close but the log
    client._close_log()
    _ended_unmade(log, codes.RPC_S_INVALID_ASYNC_CALL)


def test_an_async_client_made_with_no_loop_to_belong_to_says_where_to_make_it(refused_target: str) -> None:
    asyncio.set_event_loop(None)   # as after an asyncio.run(): no loop running, none current
    with pytest.raises(RuntimeError, match=r"make it inside the loop that uses it"):
        AsyncClient(refused_target)


class _Refusing:
    """A multicallable that raises as grpc does when it refuses a call's arguments."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("grpc refused the arguments")

    future = __call__


def test_a_call_whose_making_raises_ends_and_is_not_left_live(shared_server: ServerProcess, tmp_path: Path) -> None:
    log = tmp_path / "client.jsonl"
    with Client(shared_server.target, log=log) as client:
        client._stub = type("Stub", (), {"Call": _Refusing()})()
        with pytest.raises(CallError) as err:
            client.start(Script("complete"))
        assert not client._live

    async def aio() -> CallError:
        async with AsyncClient(shared_server.target, log=log) as client:
            client._stub = type("Stub", (), {"Call": _Refusing()})()
            with pytest.raises(CallError) as refused:
                client.start(Script("complete"))
            assert not client._live
            return refused.value

    for e in (err.value, asyncio.run(aio())):
        assert e.code == codes.RPC_S_CALL_FAILED
        assert e.details == "the call could not be made: TypeError: grpc refused the arguments"
        assert isinstance(e.__cause__, TypeError)
    _ended_unmade(log, codes.RPC_S_CALL_FAILED)
    assert check_own(log, shared_server).ok


@pytest.mark.parametrize("timeout", ["5", -1, 0, math.nan, math.inf, True])
def test_a_timeout_that_is_not_one_is_refused_when_the_client_is_made(timeout: Any, refused_target: str) -> None:
    for surface in (Client, AsyncClient):
        with pytest.raises(ValueError, match=r"timeout must be a positive number of seconds or None, not "):
            surface(refused_target, timeout=timeout)
