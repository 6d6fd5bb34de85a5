"""Fidelity audit (session 34): the client's polling (RpcAsyncGetCallStatus) against the rules
the other verbs follow.

A call never started has nothing pending: complete() and wait() refuse it with 1915
RPC_S_INVALID_ASYNC_CALL, since 997 would be polled for ever. status() answered 997 there, so
a harness polling `while call.status() == 997` on a call it forgot to start spun for ever.
"""

from __future__ import annotations

import asyncio

import pytest

from callstate import codes
from callstate.client import AsyncClient, Client
from callstate.client.call_core import CallCore
from callstate.errors import CallError
from callstate.script import Script


def test_status_of_a_core_never_started_is_1915_and_pending_once_it_starts() -> None:
    core = CallCore("fid34-core", None)
    assert core.status() == codes.RPC_S_INVALID_ASYNC_CALL
    with pytest.raises(CallError) as err:
        core.complete()
    assert err.value.code == codes.RPC_S_INVALID_ASYNC_CALL   # the same answer as complete()
    core.started()
    assert core.status() == codes.RPC_S_ASYNC_CALL_PENDING
    core.notify(codes.RPC_S_OK, b"r", "OK")
    assert core.status() == codes.RPC_S_OK and core.status() == codes.RPC_S_OK   # not consumed
    assert core.complete() == b"r"
    assert core.status() == codes.RPC_S_INVALID_ASYNC_HANDLE


def test_an_outcome_that_beat_started_still_polls_pending_not_1915() -> None:
    # the reply overtook started(): the call went out, so polling says pending, never "not started"
    core = CallCore("fid34-beat", None)
    core.notify(codes.RPC_S_OK, b"", "OK")
    assert core.status() == codes.RPC_S_ASYNC_CALL_PENDING


def test_status_before_start_is_1915_on_both_surfaces_and_for_pipes(refused_target: str) -> None:
    with Client(refused_target) as client:
        call = client.prepare(Script(outcome="complete"))
        assert call.status() == codes.RPC_S_INVALID_ASYNC_CALL
        assert client.pipe("in").status() == codes.RPC_S_INVALID_ASYNC_CALL

    async def aio() -> tuple[int, int]:
        async with AsyncClient(refused_target) as aclient:
            return aclient.prepare(Script(outcome="complete")).status(), aclient.pipe("out").status()

    assert asyncio.run(aio()) == (codes.RPC_S_INVALID_ASYNC_CALL, codes.RPC_S_INVALID_ASYNC_CALL)


@pytest.mark.parametrize("abortive", [True, False])
def test_a_cancel_after_the_answer_arrived_changes_nothing_but_the_log(abortive: bool) -> None:
    """docs/model.md, "Cancel kinds": a call that finished before its cancel completes with its own
    answer (0 here), not 1818; the cancel is logged (Can, then WComp again) and nothing goes out."""
    core = CallCore("fid34-late-cancel", None)
    core.started()
    core.notify(codes.RPC_S_OK, b"done", "OK")
    core.cancel(abortive=abortive)
    assert core.status() == codes.RPC_S_OK
    assert core.complete() == b"done"
    assert core.history == ["C", "WComp", "Can", "WComp", "Comp", "End"]


def test_an_abort_without_a_status_goes_with_its_codes_row_else_aborted() -> None:
    """docs/model.md, "Codes across the wire": the status an abort is sent with when its script
    names none, and what a caller that lost the trailer reads back from it."""
    own = {codes.RPC_S_INVALID_ARG: "INVALID_ARGUMENT", codes.ERROR_ACCESS_DENIED: "PERMISSION_DENIED",
           codes.RPC_S_SERVER_UNAVAILABLE: "UNAVAILABLE", codes.RPC_S_SERVER_TOO_BUSY: "RESOURCE_EXHAUSTED",
           codes.RPC_S_CALL_FAILED: "UNKNOWN", codes.RPC_S_CALL_CANCELLED: "CANCELLED"}
    for code, status in own.items():
        assert codes.grpc_status_name_for(code) == status
        assert codes.from_grpc(status) == code   # no trailer: the status alone gives the code back
    for code in (4242, codes.RPC_S_TIMEOUT, codes.RPC_S_ASYNC_CALL_PENDING, codes.RPC_S_INVALID_ASYNC_HANDLE,
                 codes.RPC_S_INVALID_ASYNC_CALL):
        assert codes.grpc_status_name_for(code) == codes.ABORTED


# -- the server: an abortive cancel that surfaces while a headers_first handler sends its headers --

class _HeadersCancelled:
    """A unary servicer context whose caller's abortive cancel surfaces at the handler's
    send_initial_metadata (gRPC cancels the handler's task there, or refuses the send)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def time_remaining(self) -> None:
        return None

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def send_initial_metadata(self, metadata: object) -> None:
        raise self.error

    async def abort(self, *args: object) -> None:   # never reached: the stream is gone
        raise AssertionError(f"a status sent to a cancelled caller: {args}")


def _headers_first_call(on_cancel: int, error: BaseException) -> list[tuple[object, ...]]:
    from callstate.server.emulator import EmulatorConfig, EmulatorServicer
    from callstate.server.journal import Journal
    from callstate.v1 import callstate_pb2 as pb

    entries: list = []
    servicer = EmulatorServicer(EmulatorConfig(), Journal(), entries.append)
    request = pb.CallRequest(call_id="fid34-headers-first", cancel_key="k", script=pb.Script(
        outcome=pb.OUTCOME_COMPLETE, outcome_delay_ms=20, headers_first=True, on_cancel=on_cancel))

    async def run() -> None:
        with pytest.raises(asyncio.CancelledError):   # no reply for a caller that is gone
            await asyncio.wait_for(servicer.Call(request, _HeadersCancelled(error)), 5)

    asyncio.run(run())
    return [(e.state, e.event, e.move, e.code, e.cancel) for e in entries]


@pytest.mark.parametrize("error", ["cancelled", "batch"])
def test_an_abortive_cancel_at_the_headers_is_a_cancel_seen_not_a_fatal_failure(error: str) -> None:
    """Before: the CancelledError out of send_initial_metadata ended the call as if the handler had
    raised (D --fatal--> End, 1726 UNKNOWN), whatever its on_cancel policy; a cancel changes no
    state and the policy decides (default: abort with 1818), as in the handler's waits."""
    from grpc._cython import cygrpc

    from callstate.v1 import callstate_pb2 as pb
    exc = asyncio.CancelledError() if error == "cancelled" else cygrpc.ExecuteBatchError("the stream is gone")
    assert _headers_first_call(pb.ON_CANCEL_ABORT, exc) == [
        ("D", "enter", "dispatch", None, None), ("D", "cancel_seen", None, None, "abortive"),
        ("A", "enter", "abort", None, None), ("End", "enter", "aborted", codes.RPC_S_CALL_CANCELLED, None)]


def test_a_headers_first_handler_ignoring_the_cancel_finishes_its_script() -> None:
    from callstate.v1 import callstate_pb2 as pb
    got = _headers_first_call(pb.ON_CANCEL_IGNORE, asyncio.CancelledError())
    assert [g[:2] for g in got] == [("D", "enter"), ("D", "cancel_seen"), ("Comp", "enter"), ("End", "enter")]
    assert got[-1][3] == codes.RPC_S_OK
