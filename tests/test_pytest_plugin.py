"""The pytest plugin (callstate.pytest_plugin), driven through inner pytest runs (`pytester`):
passing and failing tests, the failure messages, sync and asyncio tests in one run, an
existing server, an unreachable one, kept logs, and the README's example test file."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from callstate.lifecycle import CLIENT, COMP, D, ENTER, END, SERVER
from callstate.pytest_plugin.servers import START_TIMEOUT, ServerUnavailable, ThreadServer
from callstate.server.app import ServerOptions
from tests.conftest import read_entries, start_server
from tests.documentation import blocks, section

pytestmark = pytest.mark.timeout(90)

INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
timeout = 60
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makeini(INI)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *args, timeout=80)


def readme_block(heading: str, lang: str, index: int = 0) -> str:
    """The `index`-th ```lang block of the README section `heading` (examples are run as written)."""
    return blocks(section(heading), lang)[index]


SYNC_AND_ASYNC = '''
import threading
import pytest
from callstate.client import CallError, Script
from callstate.lifecycle import A, C, CAN, COMP, D, END, WCOMP
from callstate.pytest_plugin import assert_lifecycle

LOOPS = set()

def test_sync_complete(callstate_client, callstate_server):
    call = callstate_client.start(Script("complete", reply_bytes=3))
    assert len(call.result(timeout=5).payload) == 3
    assert_lifecycle(call, client=[C, WCOMP, COMP, END], server=[D, COMP, END], code=0, server_saw_cancel=False)
    assert callstate_server.history(call.call_id)[-1]["code"] == 0
    assert callstate_server.log_path.exists()

@pytest.mark.asyncio
async def test_function_loop(callstate_async_client):
    import asyncio
    LOOPS.add(id(asyncio.get_running_loop()))
    call = callstate_async_client.start(Script("abort", abort_code=5001))
    with pytest.raises(CallError) as err:
        await call
    assert err.value.code == 5001
    assert_lifecycle(call, server=[D, A, END], code=5001)

@pytest.mark.asyncio(loop_scope="session")
async def test_session_loop_one(callstate_async_client, callstate_server):
    import asyncio
    LOOPS.add(id(asyncio.get_running_loop()))
    call = callstate_async_client.start(Script("hold"))
    await callstate_server.await_history(call.call_id, until=bool)   # the server holds it
    call.cancel()
    with pytest.raises(CallError):
        await call
    assert_lifecycle(call, client=[C, WCOMP, CAN, WCOMP, COMP, END], server=[D, A, END],
                     code=1818, server_saw_cancel=True)

@pytest.mark.asyncio(loop_scope="session")
async def test_session_loop_two(callstate_async_client):
    import asyncio
    LOOPS.add(id(asyncio.get_running_loop()))
    await callstate_async_client.start(Script("complete"))

def test_one_server_for_all(callstate_server):
    assert len(LOOPS) == 2          # one function loop, one session loop, one server for both
    assert callstate_server.counters().dispatched == 4
    assert [t.name for t in threading.enumerate()].count("callstate-pytest-server") == 1
'''


def test_sync_and_asyncio_tests_in_one_run_share_one_server(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mixed=SYNC_AND_ASYNC)
    result = run(pytester)
    result.assert_outcomes(passed=5)


def test_failing_assert_lifecycle_shows_both_histories_and_the_first_difference(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_fails='''
import pytest
from callstate.client import CallError, Script
from callstate.lifecycle import A, C, COMP, D, END, WCOMP
from callstate.pytest_plugin import assert_lifecycle

def test_expects_a_reply(callstate_client, callstate_server):
    call = callstate_client.start(Script("hold"))
    callstate_server.wait_dispatched(call.call_id)
    call.cancel()
    with pytest.raises(CallError):
        call.result(timeout=5)
    assert_lifecycle(call, client=[C, WCOMP, COMP, END], server=[D, COMP, END], code=0, server_saw_cancel=False)
''')
    result = run(pytester)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    result.stdout.fnmatch_lines([
        "*did not follow the expected lifecycle",
        "*client states: expected C -> WComp -> Comp -> End",
        "*got      C -> WComp -> Can -> WComp -> Comp -> End",
        "*first difference at state 3: expected Comp, got Can (at 20*Z)",
        "*server states: expected D -> Comp -> End",
        "*first difference at state 2: expected Comp, got A (at 20*Z)",
        "*final code: expected 0 RPC_S_OK, got 1818 RPC_S_CALL_CANCELLED",
        "*server saw a cancel: expected no, got yes",
        "*client*| server",
    ])
    # side by side, in time order, with timestamps; the differing entries flagged
    assert re.search(r">> \d\d:\d\d:\d\d\.\d{6}Z  Can +cancel \[abortive\]", out), out
    assert re.search(r"\| \d\d:\d\d:\d\d\.\d{6}Z  End +aborted  1818 RPC_S_CALL_CANCELLED", out), out
    assert re.search(r">> +\| \d\d:\d\d:\d\d\.\d{6}Z  A +abort", out), out


def test_broken_invariant_fails_the_test_at_teardown_with_both_histories(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_broken='''
import time
from callstate.client import Script
from callstate.lifecycle import CLIENT, COMPLETED, END, ENTER
from callstate.statelog import Entry

def test_client_logs_a_second_end(callstate_client):
    call = callstate_client.start(Script("complete"))
    call.result(timeout=5)
    # a client that logs one End too many: the teardown check must catch it
    callstate_client.log.append(Entry(time.time(), CLIENT, call.call_id, END, END, ENTER, COMPLETED, 0))

def test_clean(callstate_client):
    callstate_client.start(Script("complete")).result(timeout=5)
''')
    result = run(pytester)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_client_logs_a_second_end*",
        "*callstate: 1 call(s) of this test broke an invariant of the call lifecycle",
        "*call *:",
        "*after_end: client enter End after End",
        "*client*| server",
        "*| *End    completed  0 RPC_S_OK",
        "*End    completed  0 RPC_S_OK*|",
        "*End    completed  0 RPC_S_OK*|",
    ])
    assert "ERROR at teardown of test_clean" not in result.stdout.str()


def test_existing_server_option_uses_that_server(pytester: pytest.Pytester, tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--max-hold", "20")
    try:
        pytester.makepyfile(test_remote='''
from callstate.client import Script

def test_call(callstate_client, callstate_server):
    call = callstate_client.start(Script("complete"))
    call.result(timeout=5)
    assert callstate_server.log_path is None       # not ours: we only know its journal
    assert callstate_server.history(call.call_id)[-1]["code"] == 0
    print("CALL_ID", call.call_id, "TARGET", callstate_server.target)
''')
        result = run(pytester, "-s", "--callstate-target", srv.target)
        result.assert_outcomes(passed=1)
        call_id = re.search(r"CALL_ID (\w+) TARGET (\S+)", result.stdout.str())
        assert call_id and call_id.group(2) == srv.target
        entries = srv.wait_entries(call_id.group(1))   # the external server's own log has the call
        assert [e["state"] for e in entries if e["event"] == ENTER] == [D, COMP, END]
    finally:
        srv.stop()


def test_unreachable_target_is_one_clear_error_not_a_hang(pytester: pytest.Pytester) -> None:
    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pytester.makepyfile(test_unreachable='''
def test_needs_it(callstate_client):
    pass

def test_needs_it_too(callstate_server):
    pass

def test_does_not_need_it():
    pass
''')
    t0 = time.monotonic()
    result = run(pytester, "--callstate-target", f"127.0.0.1:{port}", "--callstate-connect-timeout", "1")
    elapsed = time.monotonic() - t0
    result.assert_outcomes(passed=1, errors=2)
    out = result.stdout.str()
    assert f"callstate: cannot reach the callstate server at --callstate-target 127.0.0.1:{port} " \
           "(no connection within 1 s)" in out
    assert "Traceback" not in out and "grpc._channel" not in out
    assert elapsed < 30   # once, not once per test, and bounded


def test_a_server_that_fails_to_start_and_a_client_given_a_log_are_each_one_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bad_server='''
def test_bad_mix(callstate_server_factory):
    callstate_server_factory(mix="sometimes=1")

def test_a_log_of_its_own(callstate_server_factory):
    callstate_server_factory().client(log="mine.jsonl")
''')
    result = run(pytester)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*callstate: bad emulator configuration: mix entry 'sometimes=1': unknown name*"])
    # a factory server's client records for the teardown's check: another log would replace that
    result.stdout.fnmatch_lines(["*TypeError: .client() takes no log=: its calls are recorded for the test's "
                                 "teardown, which checks them; a failed test's logs (both sides) are kept under "
                                 "--callstate-log-dir*"])


def test_thread_server_starts_fast_and_reports_a_failed_bind(tmp_path: Path) -> None:
    t0 = time.monotonic()
    srv = ThreadServer(ServerOptions(port=0, log=tmp_path / "s.jsonl")).start()
    started = time.monotonic() - t0
    try:
        assert started < START_TIMEOUT * 0.8, f"started in {started:.2f} s"   # when ready, not at the start timeout
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            with pytest.raises(ServerUnavailable, match="failed to start: cannot bind 127.0.0.1:"):
                ThreadServer(ServerOptions(port=s.getsockname()[1], log=None)).start()
    finally:
        srv.stop()
    assert not srv._thread.is_alive()


def test_log_dir_keeps_both_sides_logs_of_failed_tests_only(pytester: pytest.Pytester, tmp_path: Path) -> None:
    logs = tmp_path / "kept"
    pytester.makepyfile(test_logs='''
from callstate.client import Script

def test_fails(callstate_client):
    call = callstate_client.start(Script("abort", abort_code=77))
    try:
        call.result(timeout=5)
    except Exception:
        pass
    print("FAILED_CALL", call.call_id)
    assert False, "the test's own failure"

def test_passes(callstate_client):
    callstate_client.start(Script("complete")).result(timeout=5)
''')
    result = run(pytester, "-s", "--callstate-log-dir", str(logs))
    result.assert_outcomes(passed=1, failed=1)
    call_id = re.search(r"FAILED_CALL (\w+)", result.stdout.str()).group(1)  # type: ignore[union-attr]
    kept = [p for p in logs.iterdir()]
    assert [p.name for p in kept] == ["test_logs.py_test_fails"]
    client = read_entries(kept[0] / "client.jsonl")
    server = read_entries(kept[0] / "server.jsonl")
    assert {e["call_id"] for e in client} == {e["call_id"] for e in server} == {call_id}
    assert {e["side"] for e in client} == {CLIENT} and {e["side"] for e in server} == {SERVER}
    assert client[-1]["code"] == server[-1]["code"] == 77
    from tests.conftest import cli
    assert cli("check", str(kept[0] / "client.jsonl"), str(kept[0] / "server.jsonl")).returncode == 0


def test_plugin_costs_nothing_when_unused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain='''
import sys, threading

def test_nothing_started():
    assert "grpc" not in sys.modules and "callstate.server" not in sys.modules
    assert not any(t.name == "callstate-pytest-server" for t in threading.enumerate())
''')
    result = run(pytester)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*plugins:*callstate*"])


def test_readme_example_test_file_runs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_cancel_paths=readme_block("Use it in your tests", "python"))
    result = run(pytester)
    result.assert_outcomes(passed=4)


def test_async_client_in_auto_mode_and_a_clear_error_in_a_sync_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_auto='''
from callstate.client import Script

async def test_unmarked(callstate_async_client):
    await callstate_async_client.start(Script("complete"))

def test_sync_asks_for_async(callstate_async_client):
    pass
''')
    result = run(pytester, "-o", "asyncio_mode=auto")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*callstate: callstate_async_client is for asyncio tests run by pytest-asyncio*"])
