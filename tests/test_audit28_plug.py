"""Audit of the pytest plugin as a test engineer adopting it would use it: inner pytest
sessions (`pytester`) against the plugin's own emulators and a real `callstate serve`.

Each test here failed before the fix it names."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, read_entries, start_server

pytestmark = pytest.mark.timeout(120)

INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
timeout = 60
"""

# a client that logs one End too many: a broken invariant the teardown check must report
SECOND_END = '''
import time
from callstate.client import Script
from callstate.lifecycle import CLIENT, COMPLETED, END, ENTER
from callstate.statelog import Entry


def second_end(client):
    call = client.start(Script("complete"))
    call.result(timeout=5)
    client.log.append(Entry(time.time(), CLIENT, call.call_id, END, END, ENTER, COMPLETED, 0))
    print("BROKEN_CALL", call.call_id)
    return call
'''


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makeini(INI)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *args, timeout=90)


def reports(result: pytest.RunResult) -> str:
    """The inner session's output above its short test summary, which repeats each failure's
    message cut to the terminal's width: a count of a message must not depend on that width."""
    return result.stdout.str().partition("short test summary info")[0]


def test_a_broken_invariant_on_a_factory_server_fails_the_test(pytester: pytest.Pytester) -> None:
    """The factory checked its test's calls before stopping its servers and dropped the verdict:
    `callstate_calls` then found the check done and passed the test."""
    pytester.makepyfile(test_factory=SECOND_END + '''

def test_broken_on_its_own_server(callstate_server_factory):
    second_end(callstate_server_factory().client())

def test_clean_on_its_own_server(callstate_server_factory):
    callstate_server_factory().client().start(Script("complete")).result(timeout=5)
''')
    result = run(pytester)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_broken_on_its_own_server*",
        "*callstate: 1 call(s) of this test broke an invariant of the call lifecycle",
        "*after_end: client enter End after End",
    ])
    assert "ERROR at teardown of test_clean_on_its_own_server" not in result.stdout.str()
    assert reports(result).count("broke an invariant") == 1   # reported once, not again by another fixture


def test_a_broken_invariant_on_the_standin_fails_the_test(pytester: pytest.Pytester) -> None:
    """The same dropped verdict in `callstate_standin`."""
    shutil.copytree(ROOT / "tests" / "protos", pytester.path / "protos")
    pytester.makepyfile(test_standin=SECOND_END + '''
import pytest

@pytest.mark.callstate_standin(protos=["protos/shop/v1/shop.proto"], proto_path=["protos"])
def test_broken_on_the_standin(callstate_standin):
    second_end(callstate_standin.client())
''')
    result = run(pytester)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_broken_on_the_standin*",
                                 "*callstate: 1 call(s) of this test broke an invariant*"])


def test_an_async_client_whose_loop_is_gone_closes_without_a_false_violation(pytester: pytest.Pytester) -> None:
    """A factory's async client left with a call in flight, its loop closed by teardown: it ended
    the call with 1722 without recording that its close cut it off (`client_closed`), so the
    check saw a code mismatch (client 1722, server 1818) in a test that did nothing wrong."""
    pytester.makepyfile(test_loop_gone='''
import asyncio
import pytest
from callstate.client import Script

def test_left_in_flight_by_asyncio_run(callstate_server_factory):
    srv = callstate_server_factory()

    async def main():
        client = srv.async_client()
        done = client.start(Script("complete"))
        await done
        assert done.code == 0
        held = client.start(Script("hold"))
        await srv.await_history(held.call_id, until=bool)   # the server holds it

    asyncio.run(main())

@pytest.mark.asyncio
async def test_left_in_flight_on_pytest_asyncio_loop(callstate_server_factory):
    srv = callstate_server_factory()
    held = srv.async_client().start(Script("hold"))
    await srv.await_history(held.call_id, until=bool)
''')
    result = run(pytester, "--callstate-log-dir", "kept")
    result.assert_outcomes(passed=2)
    assert not (pytester.path / "kept").exists()   # no test failed: no logs kept


def test_a_relative_log_dir_is_from_where_pytest_started_not_the_tests_cwd(pytester: pytest.Pytester) -> None:
    """`--callstate-log-dir kept` was resolved at teardown, from a working directory the test had
    moved (monkeypatch.chdir): the logs landed in the test's tmp_path."""
    pytester.makepyfile(test_moves='''
from callstate.client import Script

def test_fails_elsewhere(monkeypatch, tmp_path, callstate_client):
    monkeypatch.chdir(tmp_path)
    callstate_client.start(Script("complete")).result(timeout=5)
    assert False, "the test's own failure"
''')
    result = run(pytester, "--callstate-log-dir", "kept")
    result.assert_outcomes(failed=1)
    kept = pytester.path / "kept" / "test_moves.py_test_fails_elsewhere"
    assert [e["state"] for e in read_entries(kept / "client.jsonl")][-1] == "End"
    assert read_entries(kept / "server.jsonl")


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "soon"])
def test_a_bad_connect_timeout_is_one_usage_error(pytester: pytest.Pytester, value: str) -> None:
    """nan waited forever on a server that is down, inf died in a traceback (OverflowError),
    -1 and 0 gave up at once with 'no connection within -1 s'."""
    pytester.makepyfile(test_t="def test_needs(callstate_server):\n    pass\n")
    t0 = time.monotonic()
    result = run(pytester, "--callstate-target", "127.0.0.1:1", f"--callstate-connect-timeout={value}")
    assert time.monotonic() - t0 < 80   # bounded (the inner run's own timeout is 90 s)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert f"argument --callstate-connect-timeout: '{value}' is not a positive number of seconds" in err
    assert "Traceback" not in err + result.stdout.str()


def test_a_violation_names_the_servers_state_log(pytester: pytest.Pytester) -> None:
    """The teardown verdict named the call and the violation but not where the server's side of
    it is logged: a reader had to hunt for the session's temporary directory."""
    pytester.makepyfile(test_logged=SECOND_END + '''

def test_broken(callstate_client):
    second_end(callstate_client)
''')
    result = run(pytester, "-s")
    result.assert_outcomes(passed=1, errors=1)
    out = result.stdout.str()
    found = re.search(r"the server's state log: (\S+)", out)
    assert found, out
    call_id = re.search(r"BROKEN_CALL (\w+)", out).group(1)  # type: ignore[union-attr]
    assert f"call {call_id}:" in out
    assert {e["call_id"] for e in read_entries(Path(found.group(1)))} == {call_id}


PARAMETRIZED = '''
import os
import pytest
from callstate.client import Script

@pytest.mark.parametrize("name", ["a b", "a_b", "a/b"])
def test_p(callstate_client, name):
    call = callstate_client.start(Script("complete"))
    call.result(timeout=5)
    print("CALL", name, call.call_id)
    assert os.environ.get("PASS_NOW"), name
'''


def test_log_dir_keeps_each_failed_test_apart_and_forgets_one_that_passes_now(pytester: pytest.Pytester,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Three parametrized ids made one folder name (`[a b]`, `[a_b]`, `[a/b]` all `a_b`): two
    tests' logs were written over; and a rerun in which they pass left that folder there, as
    if they had failed in it."""
    pytester.makepyfile(test_params=PARAMETRIZED)
    result = run(pytester, "-s", "--callstate-log-dir", "kept")
    result.assert_outcomes(failed=3)
    out = result.stdout.str()
    ids = dict(re.findall(r"CALL (a.b) (\w+)", out))
    assert len(ids) == 3
    kept = pytester.path / "kept"
    folders = sorted(kept.iterdir())
    assert len(folders) == 3
    assert {read_entries(f / "client.jsonl")[0]["call_id"] for f in folders} == set(ids.values())
    for name, call_id in ids.items():   # the summary says which folder is which test's
        folder = next(f for f in folders if read_entries(f / "client.jsonl")[0]["call_id"] == call_id)
        assert f"{folder}  test_params.py::test_p[{name}]" in out
    monkeypatch.setenv("PASS_NOW", "1")
    result = run(pytester, "--callstate-log-dir", "kept")
    result.assert_outcomes(passed=3)
    assert list(kept.iterdir()) == []
    assert "both sides' logs kept" not in result.stdout.str()


def test_a_target_that_dies_mid_session_is_one_line_at_the_teardown_of_the_test_that_saw_it(
        pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `--callstate-target` server gone by a test's teardown: the check's journal read raised
    grpc's _InactiveRpcError, a page of gRPC traceback instead of what happened."""
    srv = start_server(tmp_path)
    try:
        pytester.makepyfile(test_dies='''
import os
import signal
import pytest
from callstate.client import CallError, Script

def test_before(callstate_client):
    callstate_client.start(Script("complete")).result(timeout=5)

def test_server_dies(callstate_client):
    os.kill(int(os.environ["CALLSTATE_TEST_SERVER_PID"]), signal.SIGKILL)   # the outer test's server
    with pytest.raises(CallError):
        callstate_client.start(Script("complete")).result(timeout=5)
''')
        monkeypatch.setenv("CALLSTATE_TEST_SERVER_PID", str(srv.proc.pid))
        result = run(pytester, "--callstate-target", srv.target)
    finally:
        srv.stop()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_server_dies*",
                                 f"callstate: 1 call(s) of this test on {srv.target} could not be checked: its journal "
                                 "does not answer (UNAVAILABLE: *"])
    out = result.stdout.str()
    assert "Traceback" not in out and "_InactiveRpcError" not in out and "grpc/_channel.py" not in out


def test_a_misspelt_server_setting_is_named_with_the_known_ones(pytester: pytest.Pytester) -> None:
    """`callstate_server_factory(maxhold=5)` or the stand-in marker's `maxhold=5` failed with
    `EmulatorConfig.__init__() got an unexpected keyword argument`: a class the user never met."""
    shutil.copytree(ROOT / "tests" / "protos", pytester.path / "protos")
    pytester.makepyfile(test_misspelt='''
import pytest

def test_factory(callstate_server_factory):
    callstate_server_factory(maxhold=5)

@pytest.mark.callstate_standin(protos=["protos/shop/v1/shop.proto"], proto_path=["protos"], maxhold=5)
def test_standin(callstate_standin):
    pass
''')
    result = run(pytester)
    result.assert_outcomes(failed=1, errors=1)
    out = result.stdout.str()
    assert "callstate: bad emulator configuration: unknown setting 'maxhold' (known: abort_code, " in out
    assert "callstate: callstate_standin: unknown setting 'maxhold' (known: abort_code, " in out
    assert reports(result).count("journal_size") == 1 and "max_hold, " in out   # the factory's own keyword too
    assert "EmulatorConfig" not in out


def test_a_call_the_server_still_holds_after_the_test_is_said_so_not_a_broken_invariant(
        pytester: pytest.Pytester) -> None:
    """A test that cancelled non-abortively a call whose script ignores cancels, and ended: the
    server rightly still holds it, but the verdict said the call 'broke an invariant of the call
    lifecycle' with `not_ended: server stopped in D`, as if the server had lost it."""
    pytester.makepyfile(test_left='''
from callstate.client import Script

def test_left_held(callstate_client, callstate_server):
    call = callstate_client.start(Script("hold", on_cancel="ignore"))
    callstate_server.wait_dispatched(call.call_id)
    call.cancel(abortive=False)
    print("LEFT", call.call_id)
''')
    result = run(pytester, "-s")
    result.assert_outcomes(passed=1, errors=1)
    out = result.stdout.str()
    call_id = re.search(r"LEFT (\w+)", out).group(1)  # type: ignore[union-attr]
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_left_held*",
                                 "callstate: 1 call(s) of this test were still in flight on the server at its end",
                                 f"call {call_id}:",
                                 "  still in flight: the server holds it in D 5 s after the client ended it *"])
    assert "broke an invariant" not in out and "not_ended" not in out


def test_an_emulator_that_starts_too_late_is_stopped_not_left_serving(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`ThreadServer.start` gave up after its bound with a clear error, but left the thread
    starting the server: once up, it served on until the process ended, stopped by nobody."""
    import asyncio
    import threading

    from callstate.pytest_plugin.servers import ServerUnavailable, ThreadServer
    from callstate.server.app import EmulatorServer, ServerOptions

    gate = threading.Event()
    real_start = EmulatorServer.start

    async def late_start(self: EmulatorServer) -> None:
        await asyncio.to_thread(gate.wait, 60)   # held until the test has seen start() give up
        await real_start(self)

    monkeypatch.setattr(EmulatorServer, "start", late_start)
    srv = ThreadServer(ServerOptions(port=0, log=tmp_path / "late.jsonl"))
    with pytest.raises(ServerUnavailable, match=r"the callstate emulator did not start within 0.2 s"):
        srv.start(timeout=0.2)
    gate.set()
    srv._thread.join(30)   # it starts, sees it was abandoned and stops at once
    assert not srv._thread.is_alive()


TOKEN = "audit28-token"


def test_a_target_behind_tls_and_a_token_is_reached_and_its_calls_checked(
        pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The docs point `--callstate-target` at a server in containers, whose locked-down form
    (docker-compose.secure.yml) wants TLS and a bearer token: the plugin had no way to give
    either, and said `UNAUTHENTICATED: is it a callstate server?`."""
    from tests.certs import make_tls_files

    monkeypatch.delenv("CALLSTATE_TOKEN", raising=False)   # the inner runs get the token from the option only
    tls = make_tls_files(tmp_path / "tls")
    srv = start_server(tmp_path, "--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key),
                       "--token", TOKEN)
    try:
        pytester.makepyfile(test_secure=SECOND_END + '''
import pytest
from callstate.lifecycle import COMP, D, END
from callstate.pytest_plugin import assert_lifecycle

def test_sync(callstate_client):
    call = callstate_client.start(Script("complete"))
    call.result(timeout=10)
    assert_lifecycle(call, server=[D, COMP, END], code=0)

@pytest.mark.asyncio
async def test_async(callstate_async_client):
    call = callstate_async_client.start(Script("complete"))
    await call
    assert call.code == 0

def test_broken(callstate_client):
    second_end(callstate_client)
''')
        target = f"localhost:{srv.port}"
        ok = run(pytester, "--callstate-target", target, "--callstate-tls-ca", str(tls.ca), "--callstate-token", TOKEN)
        no_token = run(pytester, "--callstate-target", target, "--callstate-tls-ca", str(tls.ca), "-k", "test_sync")
        missing_ca = run(pytester, "--callstate-target", target, "--callstate-tls-ca", str(tmp_path / "nope.pem"))
    finally:
        srv.stop()
    ok.assert_outcomes(passed=3, errors=1)   # the broken call is still caught, its server side read over TLS
    ok.stdout.fnmatch_lines(["*ERROR at teardown of test_broken*", "*after_end: client enter End after End"])
    no_token.assert_outcomes(errors=1)
    no_token.stdout.fnmatch_lines([f"callstate: --callstate-target {target} answers UNAUTHENTICATED: it wants a token "
                                   "(--callstate-token, or CALLSTATE_TOKEN)"])
    assert missing_ca.ret == pytest.ExitCode.USAGE_ERROR
    assert "callstate: cannot read the TLS CA certificate" in missing_ca.stderr.str()
    assert "Traceback" not in ok.stdout.str() + no_token.stdout.str() + missing_ca.stderr.str()


def test_an_async_client_asked_for_outside_a_loop_is_one_line(pytester: pytest.Pytester) -> None:
    """`srv.async_client()` in a sync test made the client, then died in asyncio's bare
    `RuntimeError: no running event loop`, pointing into the plugin."""
    pytester.makepyfile(test_no_loop='''
def test_sync(callstate_server_factory):
    callstate_server_factory().async_client()
''')
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["callstate: .async_client() belongs to the event loop that uses it: make it in an "
                                 "async test or in a coroutine (asyncio.run); a sync test uses .client()"])
    assert "no running event loop" not in result.stdout.str()
