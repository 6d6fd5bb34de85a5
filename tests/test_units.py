"""Unit tests of the pieces around the core: codes, scripts, the client core, the state log."""

from __future__ import annotations

import pickle
import subprocess
import time
import sys
from pathlib import Path

import grpc
import orjson
import pytest

from callstate import codes
from callstate.grpc_status import grpc_status_for, status_from_value
from callstate.client import CallError, CallPending, InvalidAsyncHandle
from callstate.client.call_core import CallCore
from callstate.lifecycle import ABORTIVE, NON_ABORTIVE, PIPE_BOTH, PIPE_IN, PIPE_OUT
from callstate.pipe_script import PipeCancelPoint
from callstate.scenario import HELD_PIPE_INTERVAL, Plan, Scenario, expected_codes, pipe_cancel, pipe_script
from callstate.script import Limits, Mix, MixError, Script, ScriptError, validate
from callstate.statelog import END, Entry, format_ts, parse_ts
from callstate.logfile import StateLog, read_log
from callstate.v1 import callstate_pb2 as pb
from tests.conftest import ROOT


def test_code_names_and_grpc_mapping() -> None:
    for code in (0, 5, 87, 997, 1722, 1723, 1726, 1818, 1914, 1915):
        assert codes.name(code).startswith(("RPC_S_", "ERROR_"))
    assert codes.name(5001) == "APPLICATION_ERROR_5001"
    S = grpc.StatusCode
    assert codes.from_grpc(S.OK) == 0
    assert codes.from_grpc(S.CANCELLED) == codes.from_grpc(S.DEADLINE_EXCEEDED) == 1818
    assert codes.from_grpc(S.UNKNOWN) == codes.from_grpc(S.INTERNAL) == 1726
    assert codes.from_grpc(S.UNAVAILABLE) == 1722
    assert codes.from_grpc(S.RESOURCE_EXHAUSTED) == 1723
    assert codes.from_grpc(S.INVALID_ARGUMENT) == 87
    assert codes.from_grpc(S.PERMISSION_DENIED) == codes.from_grpc(S.UNAUTHENTICATED) == 5
    assert codes.from_grpc(S.ABORTED, [("callstate-code", "5001")]) == 5001   # the trailer wins
    assert codes.from_grpc(S.ABORTED, [("callstate-code", "junk")]) == 1726   # garbled: fall back
    assert grpc_status_for(1818) == S.CANCELLED and grpc_status_for(5001) == S.ABORTED


def test_the_code_table_names_grpc_statuses_as_grpc_does() -> None:
    """codes.py keeps gRPC statuses by name and number without importing grpc: the same as grpc's."""
    assert codes.GRPC_STATUS_VALUES == {s.name: s.value[0] for s in grpc.StatusCode}
    assert codes.from_grpc("UNAVAILABLE") == codes.from_grpc(grpc.StatusCode.UNAVAILABLE) == 1722   # a name or a status
    assert status_from_value(14) == grpc.StatusCode.UNAVAILABLE and status_from_value(99) is None
    assert codes.client_outcome(grpc.StatusCode.CANCELLED, None, None, abortive_cancel=True)[:2] == (1818, "CANCELLED")


def test_a_status_outcome_worked_out_once_is_the_same_each_time() -> None:
    """client_outcome keeps a plain status's outcome (no trailers, details or local cancel) to
    answer the next call with it: what it keeps never stands for another case."""
    S = grpc.StatusCode
    for status in (*S, "OK", "UNAVAILABLE"):
        for abortive in (False, True):
            first = codes.client_outcome(status, None, None, abortive_cancel=abortive)
            assert codes.client_outcome(status, None, None, abortive_cancel=abortive) == first
            assert first[0] == (1818 if abortive and codes.status_name(status) == "CANCELLED"
                                else codes.from_grpc(status))
    # CANCELLED after the caller's own abortive cancel is that cancel; without one, gRPC's word
    assert codes.client_outcome(S.CANCELLED, None, None)[2] == ""
    assert codes.client_outcome(S.CANCELLED, None, None, abortive_cancel=True)[2] == "cancelled by the caller"
    # a trailer, details or a local cancel are read each time, whatever was kept for the status
    assert codes.client_outcome(S.OK, [("callstate-code", "5001")], None)[0] == 5001
    assert codes.client_outcome(S.ABORTED, None, "why")[2] == "why"
    assert codes.client_outcome(S.OK, None, None, cancelled_here=True)[0] == codes.RPC_S_SERVER_UNAVAILABLE


def test_script_validation_names_fields() -> None:
    validate(Script("abort", abort_code=3).to_proto())
    with pytest.raises(ScriptError, match="script.dispatch_delay_ms"):
        validate(Script(dispatch_delay=-0.5).to_proto())
    with pytest.raises(ScriptError, match="script.outcome_delay_ms"):
        validate(Script(outcome_delay=5).to_proto(), Limits(max_delay_ms=1000))
    with pytest.raises(ScriptError, match="script.outcome"):
        Script("explode").to_proto()  # type: ignore[arg-type]
    with pytest.raises(ScriptError, match="script.abort_code"):
        validate(pb.Script(outcome=pb.OUTCOME_ABORT))


def test_mix_parse_and_draw() -> None:
    mix = Mix.parse("complete=80, abort=10,fatal=5,hold=5")
    import random
    rng = random.Random(1)
    draws = [mix.draw(rng) for _ in range(4000)]
    assert 0.75 < draws.count("complete") / 4000 < 0.85 and "hold" in draws
    for bad, msg in [("complete", "NAME=WEIGHT"), ("boom=1", "unknown name"), ("complete=x", "not a number"),
                     ("complete=0", "positive"), ("complete=-1", ">= 0")]:
        with pytest.raises(MixError, match=msg):
            Mix.parse(bad)


def test_a_pipe_plans_cancel_script_and_expected_codes() -> None:
    """What `callstate load` and the Locust user both derive from a pipe plan."""
    held = Plan("hold", None, None, "abort", pipe=PIPE_IN)   # never left to hold: cancelled after its headers
    assert pipe_cancel(held) == (PipeCancelPoint.parse("after-headers"), ABORTIVE)
    assert expected_codes(held, 5001) == {codes.RPC_S_CALL_CANCELLED}
    script = pipe_script(held, Scenario(pipe_messages=3), 7)
    assert (script.outcome, script.messages, script.message_bytes, script.interval) == ("hold", 3, 7, HELD_PIPE_INTERVAL)
    point = PipeCancelPoint.parse("after-received:2")
    cancelled = Plan("abort", NON_ABORTIVE, None, "complete", pipe=PIPE_OUT, pipe_point=point)
    assert pipe_cancel(cancelled) == (point, NON_ABORTIVE)
    assert expected_codes(cancelled, 5001) == {5001, codes.RPC_S_CALL_CANCELLED, codes.RPC_S_OK}
    plain = Plan("fatal", None, None, "abort", pipe=PIPE_BOTH)
    assert pipe_cancel(plain) == (None, None) and expected_codes(plain, 5001) == {codes.RPC_S_CALL_FAILED}


def test_call_core_rules_without_io() -> None:
    log_entries: list[Entry] = []

    class Sink:
        enabled = True
        append = staticmethod(log_entries.append)

    core = CallCore("id1", Sink())  # type: ignore[arg-type]
    core.started()
    assert core.status() == 997
    with pytest.raises(CallPending):
        core.complete()
    assert core.state == "WComp"
    fired = []
    core.add_done_callback(fired.append)
    assert core.notify(1818, None, "CANCELLED")
    assert not core.notify(0)          # only the first notification counts
    assert fired == [core] and core.status() == 1818 and core.status() == 1818
    with pytest.raises(CallError) as info:
        core.complete()
    assert info.value.code == 1818 and info.value.name == "RPC_S_CALL_CANCELLED"
    with pytest.raises(InvalidAsyncHandle):
        core.complete()
    with pytest.raises(InvalidAsyncHandle):
        core._cancel_moves(True, sent=True)
    assert core.status() == 1914
    assert [e.state for e in log_entries if e.event == "enter"] == ["C", "WComp", "Comp", "End"]
    assert log_entries[-1].state == END   # nothing logged after End


def test_a_call_error_says_its_code_and_survives_pickling() -> None:
    # pytest-xdist and multiprocessing harnesses send a failed call's error between processes
    err = CallError(1818, "c1", grpc_status="CANCELLED", details="cancelled here")
    assert str(err) == "1818 RPC_S_CALL_CANCELLED (gRPC CANCELLED: cancelled here) [call c1]"
    assert str(CallError(1722)) == "1722 RPC_S_SERVER_UNAVAILABLE"
    for e in (err, CallPending("c2"), InvalidAsyncHandle("c3", "cancel")):
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e)
        assert (back.code, back.name, back.call_id, back.grpc_status, back.details, str(back)) == \
            (e.code, e.name, e.call_id, e.grpc_status, e.details, str(e))
    assert str(InvalidAsyncHandle("c3", "cancel")) == \
        "1914 RPC_S_INVALID_ASYNC_HANDLE: cancel after the call was completed [call c3]"


def test_a_target_is_host_port_a_host_alone_or_a_grpc_uri() -> None:
    import argparse
    from callstate.arg_types import grpc_target
    for good in ("127.0.0.1:50051", "[::1]:50051", "emulator:1", "api.example.com", "dns:///svc:50051",
                 "unix:/tmp/s.sock", "unix-abstract:cs", "ipv4:127.0.0.1:1,127.0.0.2:1"):
        assert grpc_target(good) == good
    for bad, says in (("127.0.0.1:", "none given"), (":50051", "no host"), ("[]:1", "no host"), ("::1", "brackets"),
                      ("h:0", "1 to 65535"), ("h:65536", "1 to 65535"), ("h:+1", "1 to 65535"), ("", "HOST:PORT"),
                      ("h:1 ", "HOST:PORT")):
        with pytest.raises(argparse.ArgumentTypeError, match=says):
            grpc_target(bad)


def test_format_ts_is_rfc3339_utc_microseconds() -> None:
    assert format_ts(0.25) == "1970-01-01T00:00:00.250000Z"
    assert format_ts(1_700_000_000.000001)[:20] == "2023-11-14T22:13:20."
    # the second's text is cached: times from other seconds, either side and at its edges,
    # in any order, each get their own second and the microsecond they were in
    base = 1_700_000_000.0
    for t in (base + 0.5, base - 1e-7, base + 0.5, base + 1 - 1e-7, base + 1, base + 0.999999, base - 3.25):
        sec = int(t)
        want = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{int((t - sec) * 1_000_000):06d}Z"
        assert format_ts(t) == want, t
        assert parse_ts(format_ts(t)) == pytest.approx(t, abs=1e-6)


def test_state_log_close_flushes_everything(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = StateLog(path, flush_interval=60)   # the writer thread would not wake by itself
    for i in range(5000):
        log.append(Entry(1.0 + i, "server", f"c{i}", "D", None, "enter", "dispatch"))
    log.append(Entry(9999.0, "server", "c0", END, "Comp", "enter", "completed", 0, "OK"))
    log.close()
    lines = list(read_log(path))
    assert len(lines) == 5001
    assert lines[-1][1] == {"ts": format_ts(9999.0), "side": "server", "call_id": "c0", "state": "End",
                            "prev": "Comp", "event": "enter", "move": "completed", "code": 0, "grpc_status": "OK"}


def test_generated_code_is_fresh() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "genproto.py"), "--check"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_only_the_callstate_namespace_is_installed() -> None:
    import importlib.util
    import callstate.client
    import callstate.server
    assert Path(callstate.server.__file__).parent.name == "server"
    assert Path(callstate.client.__file__).parent.name == "client"
    probe = subprocess.run([sys.executable, "-c", "import server"], capture_output=True, cwd="/", timeout=30)
    assert probe.returncode != 0   # no bare top-level `server` module
    assert importlib.util.find_spec("callstate.v1.callstate_pb2") is not None


def test_fast_log_lines_equal_the_dict_form() -> None:
    from callstate.statelog import format_line, to_dict
    samples = [
        Entry(1.5, "server", "plain", "D", None, "enter", "dispatch"),
        Entry(2.000001, "server", 'quote"back\\slash\nnewline\u2603', "End", "A", "enter", "aborted", 5001, "ABORTED",
              'detail with "quotes" and \t tabs'),
        Entry(3.0, "client", "x", "WComp", "WComp", "cancel_sent", None, detail="delivered"),
        Entry(4.0, "client", "x", "End", "C", "enter", "start_failed", 87, None, "bad"),
        Entry(5.25, "client", "x", "Can", "WComp", "enter", "cancel", cancel="non-abortive"),
        Entry(6.5, "server", "x", "D", "D", "cancel_seen", cancel="abortive"),
        # ids written without escaping (letters and digits of any script) and ids that need it
        Entry(7.0, "client", "0f3a9c" * 5, "C", None, "enter", "call"),
        Entry(7.0, "client", "caf\u00e9\u65e5\u672c\u00b2\u0663", "C", None, "enter", "call"),
        Entry(7.0, "client", "", "C", None, "enter", "call"),
        Entry(7.0, "client", 'said "hi"', "C", None, "enter", "call"),
        Entry(7.0, "client", "back\\slash", "C", None, "enter", "call"),
        Entry(7.0, "client", "a-b c\u2028\x7f\x00", "C", None, "enter", "call"),
    ]
    for e in samples:
        line = format_line(e)
        assert line.endswith("\n") and line.count("\n") == 1
        assert orjson.loads(line) == to_dict(e)


def test_the_three_forms_of_an_entry_convert_into_each_other() -> None:
    from callstate.statelog import from_dict, proto_to_dict, to_dict, to_proto
    samples = [
        Entry(1.5, "server", "a", "D", None, "enter", "dispatch"),
        Entry(2.000001, "server", "a", "End", "A", "enter", "aborted", 5001, "ABORTED", "why"),
        Entry(3.25, "client", "b", "Can", "WComp", "enter", "cancel", cancel="abortive"),
        Entry(4.5, "server", "b", "D", "D", "cancel_seen", cancel="non-abortive"),
        Entry(5.75, "client", "c", "End", "Comp", "enter", "completed", 0, "OK"),
    ]
    for e in samples:
        d = to_dict(e)
        assert from_dict(d) == e
        assert proto_to_dict(to_proto(e)) == d


def test_pipe_plans_never_draw_a_default_cancel_point_past_the_pipe_messages() -> None:
    """With fewer --pipe-messages than a default point counts, that point is never drawn (the
    pipe would never get there); a point the user names past them is refused by the apps."""
    import random

    from callstate.scenario import (parse_cancel_shares, parse_pipe_cancel_points, parse_pipe_shares,
                                    unreachable_pipe_points)
    rng = random.Random(7)
    scenario = Scenario(pipes=parse_pipe_shares("in=50,both=50"), cancel=parse_cancel_shares("abortive=100"),
                        pipe_messages=1)
    counts = {plan.pipe_point.count for plan in (scenario.plan(rng) for _ in range(400))
              if plan.pipe_point is not None}
    assert counts == {0}, counts   # the uncounted points only: after-sent:2 and after-received:2 are out
    assert not unreachable_pipe_points(scenario.pipe_cancel_at, 1)   # the defaults: no complaint
    named = parse_pipe_cancel_points("after-sent:1,after-received:3")
    assert [str(p) for p in unreachable_pipe_points(named, 2)] == ["after-received:3"]


def test_call_ids_and_cancel_keys_are_drawn_once_each_across_threads_and_forks(tmp_path: Path) -> None:
    """Ids and keys come from a pool of OS random bytes (callstate/wire.py): threads sharing it
    never get the same one, and a forked child does not hand out what its parent holds next."""
    import concurrent.futures
    import subprocess
    import sys

    from callstate.wire import _SECRETS_PER_DRAW, new_call_id, new_cancel_key

    def draw(n: int) -> list[str]:
        return [new_call_id() if i % 2 else new_cancel_key() for i in range(n)]

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)   # threads switch as often as they can: a race would show
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            got = [s for part in pool.map(draw, [40 * _SECRETS_PER_DRAW] * 8) for s in part]
    finally:
        sys.setswitchinterval(switch)
    assert len(set(got)) == len(got) == 320 * _SECRETS_PER_DRAW
    assert all(len(s) == 32 and int(s, 16) >= 0 for s in got)
    script = tmp_path / "fork.py"   # a fresh interpreter: no gRPC threads to fork under
    script.write_text("import os, sys\nfrom callstate.wire import new_call_id\nnew_call_id()\n"
                      "r, w = os.pipe()\npid = os.fork()\n"
                      "if pid == 0:\n    os.write(w, new_call_id().encode()); os._exit(0)\n"
                      "os.waitpid(pid, 0)\nprint(os.read(r, 64).decode(), new_call_id())\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    child, parent = out.stdout.split()
    assert child != parent, "a forked child handed out its parent's next id"


def test_a_stream_the_server_refused_is_explained() -> None:
    """6,000 held calls on one connection to a default server: grpc core refuses the ones over
    its stream limit with RST_STREAM REFUSED_STREAM (error code 7), which the caller reads as
    1722 UNAVAILABLE with only this text (captured from such a run): the hint says why and what to do."""
    from callstate.client.channel import ChannelSettings

    said = ChannelSettings().explain(grpc.StatusCode.UNAVAILABLE,
                                     "Stream removed (RST_STREAM (Received RST_STREAM with error code 7))")
    assert said.startswith("Stream removed") and "--max-concurrent-streams" in said and "--channels" in said
    other = ChannelSettings().explain(grpc.StatusCode.UNAVAILABLE,
                                      "Stream removed (RST_STREAM (Received RST_STREAM with error code 2))")
    assert "--channels" not in other


def test_summaries_count_one_call_and_one_violation_in_the_singular() -> None:
    from callstate.check import check_entries, counted

    assert (counted(1, "call"), counted(0, "call"), counted(2, "entry", "entries")) == ("1 call", "0 calls", "2 entries")
    one = [{"ts": "2026-12-05T10:00:00.000000Z", "side": "client", "call_id": "a", "state": "C", "prev": None,
            "event": "enter"}]
    summary = check_entries(one).summary(allow_one_side=True)
    assert summary.startswith("1 call, 1 entry from in-memory files"), summary
    assert "FAILED: 1 violation\n" in summary, summary


def test_a_port_served_in_this_process_is_known_by_its_loop_and_a_local_host_only() -> None:
    """A client's blocking reflection read is refused at once only against this process's own
    server on the client's own loop: the same port on another host is another server."""
    from callstate import in_process

    loop, other = object(), object()
    in_process.serving(55001, loop, "127.0.0.1")
    try:
        for target in ("127.0.0.1:55001", "localhost:55001", "[::1]:55001"):
            assert in_process.served_on(target, loop), target
        assert not in_process.served_on("10.1.2.3:55001", loop)    # another host's port of that number
        assert not in_process.served_on("127.0.0.1:55001", other)  # another loop can answer it
        assert not in_process.served_on("127.0.0.1:55002", loop)
    finally:
        in_process.stopped(55001, loop)
    assert not in_process.served_on("127.0.0.1:55001", loop)
