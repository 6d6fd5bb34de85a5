"""The asyncio client's short cuts on the common path keep its checks and its lifecycle: a script
once found valid is known by its bytes (the call id and the payload are still checked on every
call), and awaiting a sent call waits inline (its caller's cancellation is still an abortive
cancel, and the call is completed on its behalf).

In process, on a stand-in channel: no server, no network."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from callstate import codes
from callstate.client import AsyncClient
from callstate.errors import CallError
from callstate.lifecycle import CANCEL, CANCEL_ISSUED, COMPLETE, COMPLETED, END, START_FAILED, STARTED
from callstate.script import Limits
from callstate.v1 import callstate_pb2 as pb

SCRIPT = pb.Script(outcome=pb.OUTCOME_COMPLETE)


class Rpc:
    """A grpc.aio unary call: answered at once, or (held) never until cancelled."""

    def __init__(self, reply: Any, held: bool) -> None:
        self.reply, self.held = reply, held
        self._cancelled = False
        self._future: asyncio.Future[Any] | None = None

    def __await__(self) -> Any:
        if not self.held:
            return self.reply
        self._future = asyncio.get_running_loop().create_future()
        return (yield from self._future.__await__())

    def cancel(self) -> bool:
        self._cancelled = True
        if self._future is not None and not self._future.done():
            self._future.cancel()
        return True

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return not self.held or self._cancelled


class Channel:
    _loop = None   # usable on any loop
    held = False

    def unary_unary(self, path: str, *args: Any, **kwargs: Any) -> Any:
        def call(request: Any, metadata: Any = None, timeout: Any = None) -> Rpc:
            return Rpc(pb.CallReply(call_id=request.call_id), self.held)
        return call

    def __getattr__(self, name: str) -> Any:
        return self.unary_unary

    async def close(self) -> None:
        pass


class Log:
    enabled = True

    def __init__(self) -> None:
        self.entries: list[Any] = []
        self.append = self.entries.append


def _client(log: Log, held: bool = False) -> AsyncClient:
    channel = Channel()
    channel.held = held

    class Client(AsyncClient):
        _open_channel = staticmethod(lambda settings, target, options: channel)   # type: ignore[assignment]
    return Client("127.0.0.1:1", log=log)


def _moves(log: Log, call_id: str) -> list[str]:
    return [e.move for e in log.entries if e.call_id == call_id][1:]


def test_a_known_script_still_has_its_call_id_and_payload_checked() -> None:
    log = Log()

    async def go() -> None:
        client = _client(log)
        assert (await client.start(SCRIPT, call_id="first")).call_id == "first"   # the script, now known valid
        for kwargs in ({"call_id": "bad\nid"}, {"call_id": "x" * (Limits().max_call_id_bytes + 1)},
                       {"call_id": "big", "payload": b"x" * (Limits().max_payload_bytes + 1)}):
            call = client.prepare(SCRIPT, **kwargs)
            with pytest.raises(CallError) as err:
                call.start()
            assert err.value.code == codes.RPC_S_INVALID_ARG
            assert _moves(log, call.call_id) == [START_FAILED]   # C -> End, never sent
        bad = pb.Script(outcome=pb.OUTCOME_COMPLETE, reply_bytes=-1)
        for _ in range(2):   # refused each time: an invalid script is never remembered
            with pytest.raises(CallError) as err:
                client.start(bad)
            assert err.value.code == codes.RPC_S_INVALID_ARG
        await client.close()
    asyncio.run(go())
    assert _moves(log, "first") == [STARTED, COMPLETE, COMPLETED]


def test_cancelling_the_task_that_awaits_a_sent_call_cancels_and_completes_it() -> None:
    log = Log()

    async def go() -> Any:
        client = _client(log, held=True)
        call = client.start(SCRIPT, call_id="held")
        task = asyncio.ensure_future(_await(call))
        await asyncio.sleep(0)   # the task awaits the call
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        state, code = call.state, call.code
        await client.close()
        return state, code
    state, code = asyncio.run(go())
    assert (state, code) == (END, codes.RPC_S_CALL_CANCELLED)   # completed on the cancelled caller's behalf
    assert _moves(log, "held") == [STARTED, CANCEL, CANCEL_ISSUED, COMPLETE, COMPLETED]


async def _await(call: Any) -> Any:
    return await call
