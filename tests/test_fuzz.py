"""Fuzzing the server over a real socket with hypothesis-generated requests.

* random bytes as the serialized message of every method;
* random scripts (in range and far out of it): whatever the server accepts ends with the
  same code on the caller's side as in the server's log, and a reply arrives intact.

After each run the server's in-flight count is back at zero and every call it dispatched
has exactly one End in its log. A few examples by default (CI stays fast); thousands with
`CALLSTATE_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/test_fuzz.py`.
"""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path
from typing import Iterator

import grpc
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callstate import codes
from callstate.lifecycle import DISPATCH, END, ENTER
from callstate.script import ABORT_CODE_MAX, ABORT_CODE_MIN, Limits
from callstate.v1 import callstate_pb2 as pb
from callstate.wire import CALL_ID_KEY
from tests.conftest import ServerProcess, read_entries, start_server

EXAMPLES = int(os.environ.get("CALLSTATE_FUZZ_EXAMPLES", "40"))
pytestmark = pytest.mark.timeout(max(120, EXAMPLES // 5))
LIMITS = Limits()
MAX_HOLD = 0.2   # every call of the run ends within this (held, delayed or ignoring its cancel)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
METHODS = ["/callstate.v1.Emulator/Call", "/callstate.v1.Emulator/Cancel", "/callstate.v1.Journal/GetCall",
           "/callstate.v1.Journal/ListCalls", "/callstate.v1.Journal/GetCounters"]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # hypothesis draws the same ids again and again ("0"): none is kept reserved after its call
    srv = start_server(tmp_path_factory.mktemp("fuzz"), "--max-hold", str(MAX_HOLD), "--id-retention", "0")
    yield srv
    assert srv.stop() == 0   # a clean exit: it never crashed


@pytest.fixture(scope="module")
def channel(fuzz_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzz_server.target) as ch:
        yield ch


def settled(srv: ServerProcess, channel: grpc.Channel) -> None:
    """In flight back at zero, every dispatched call logged with exactly one End, the log checks."""
    counters = channel.unary_unary("/callstate.v1.Journal/GetCounters", request_serializer=pb.CountersRequest.SerializeToString,
                                   response_deserializer=pb.Counters.FromString)
    deadline = time.monotonic() + 10
    while (c := counters(pb.CountersRequest(), timeout=5)).in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert c.in_flight == 0
    while True:   # the log writer flushes every 50 ms: wait for as many End lines as calls ended
        entries = read_entries(srv.log)
        ends = collections.Counter(e["call_id"] for e in entries if e["state"] == END and e["event"] == ENTER)
        if sum(ends.values()) >= c.ended or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert sum(ends.values()) == c.ended == c.dispatched
    # ids repeat across examples (a call id may be reused once its call ended): per id, each
    # dispatch is followed by exactly one End before the next dispatch
    open_calls: dict[str, bool] = {}
    for e in entries:
        if e.get("move") == DISPATCH:
            assert not open_calls.get(e["call_id"]), f"dispatched again before its End: {e}"
            open_calls[e["call_id"]] = True
        elif e["state"] == END and e["event"] == ENTER:
            assert open_calls.get(e["call_id"]), f"an End without a dispatch, or a second End: {e}"
            open_calls[e["call_id"]] = False
    assert not any(open_calls.values())


def test_random_bytes_as_any_message(fuzz_server: ServerProcess, channel: grpc.Channel) -> None:
    stubs = {m: channel.unary_unary(m) for m in METHODS}   # no serializers: the bytes go out as they are
    seen: collections.Counter[str] = collections.Counter()

    @FUZZ
    @given(method=st.sampled_from(METHODS), data=st.binary(max_size=2048))
    def one(method: str, data: bytes) -> None:
        try:
            stubs[method](data, timeout=10)
            seen["OK"] += 1
        except grpc.RpcError as err:
            assert err.code() != grpc.StatusCode.UNAVAILABLE, err   # the server is still there
            seen[err.code().name] += 1

    one()
    settled(fuzz_server, channel)
    assert sum(seen.values()) >= min(EXAMPLES, 10)


def entries_since(log: Path, offset: int, call_id: str, timeout: float = 5) -> list[dict]:  # type: ignore[type-arg]
    """This call's lines written after `offset`, once its End is among them."""
    deadline = time.monotonic() + timeout
    while True:
        with open(log, "rb") as f:
            f.seek(offset)
            lines = f.read().split(b"\n")[:-1]   # complete lines only: the writer may be mid-line
        entries = [e for e in map(orjson.loads, filter(None, lines)) if e["call_id"] == call_id]
        if any(e["state"] == END and e["event"] == ENTER for e in entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.01)


ints64 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-5, 300))
small_delay = st.one_of(st.just(0), st.integers(1, int(MAX_HOLD * 1500)), ints64)
scripts = st.builds(
    pb.Script,
    dispatch_delay_ms=small_delay, outcome_delay_ms=small_delay,
    outcome=st.integers(0, 6), on_cancel=st.integers(0, 4),
    reply_bytes=st.one_of(st.integers(0, 64), st.sampled_from([LIMITS.max_reply_bytes, LIMITS.max_reply_bytes + 1]),
                          ints64),
    echo=st.booleans(),
    abort_code=st.one_of(st.sampled_from([0, ABORT_CODE_MIN, ABORT_CODE_MAX, ABORT_CODE_MIN - 1, ABORT_CODE_MAX + 1]),
                         st.integers(-(2**40), 2**40), ints64),
    abort_grpc_status=st.integers(-3, 20),
    abort_message=st.one_of(st.text(max_size=50), st.text(min_size=LIMITS.max_message_bytes // 2, max_size=2500)),
    fatal_message=st.text(max_size=50),
)
call_ids = st.one_of(st.just(""), st.text(min_size=1, max_size=140))
requests = st.builds(pb.CallRequest, call_id=call_ids, script=st.one_of(st.none(), scripts),
                     payload=st.binary(max_size=256))


def test_every_accepted_script_ends_with_the_same_code_on_both_sides(fuzz_server: ServerProcess,
                                                                     channel: grpc.Channel) -> None:
    call = channel.unary_unary("/callstate.v1.Emulator/Call", request_serializer=pb.CallRequest.SerializeToString,
                               response_deserializer=pb.CallReply.FromString)
    accepted = 0
    n = iter(range(10**9))

    @FUZZ
    @given(request=requests)
    def one(request: pb.CallRequest) -> None:
        nonlocal accepted
        # no id drawn: it travels in metadata instead (a unique one), the other way a caller may send it
        server_id = request.call_id or f"fuzz-{os.getpid()}-{next(n)}"
        metadata = () if request.call_id else ((CALL_ID_KEY, server_id),)
        offset = fuzz_server.log.stat().st_size   # ids repeat across examples: read only this call's lines
        try:
            reply, rpc = call.with_call(request, metadata=metadata, timeout=10)
            status, trailers = grpc.StatusCode.OK, rpc.trailing_metadata()
        except grpc.RpcError as err:
            reply, status, trailers = None, err.code(), err.trailing_metadata()
            if status == grpc.StatusCode.INVALID_ARGUMENT and (err.details() or "").startswith("call_id:"):
                # refused before dispatch (not a short metadata value): 87, and nothing logged
                assert codes.from_grpc(status, trailers) == codes.RPC_S_INVALID_ARG
                assert not (request.call_id.isascii() and request.call_id.isprintable()
                            and len(request.call_id) <= LIMITS.max_call_id_bytes)
                return
        client_code = codes.from_grpc(status, trailers) if status != grpc.StatusCode.OK else codes.RPC_S_OK
        entries = entries_since(fuzz_server.log, offset, server_id)
        ends = [e for e in entries if e["state"] == END and e["event"] == ENTER]
        assert len(ends) == 1, entries
        assert ends[0]["code"] == client_code, (request, status, entries)
        if client_code != codes.RPC_S_INVALID_ARG:
            accepted += 1
        if reply is not None:
            script = request.script
            want = len(request.payload) if script.echo else script.reply_bytes
            assert len(reply.payload) == want and reply.call_id == server_id

    one()
    settled(fuzz_server, channel)
    assert accepted or EXAMPLES < 20   # the strategy reaches the accepted space, not only refusals
