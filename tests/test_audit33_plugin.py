"""Audit of the pytest plugin from the seat of a test engineer dropping it into an existing
suite: pytest-xdist workers, anyio tests, `callstate_calls` read by the test, and the
assertion helper given states as a person types them.

Each test here failed before the fix it names."""

from __future__ import annotations

import pytest

from callstate.client import CallError, Script
from callstate.lifecycle import C, COMP, D, END, WCOMP
from callstate.pytest_plugin import assert_lifecycle

pytestmark = pytest.mark.timeout(60)

# plugins of the suite's environment the inner runs do not need (hypothesis's alone costs
# each xdist worker seconds to import)
LEAN = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:locust", "-p", "no:anyio")


def test_under_xdist_the_summary_names_the_folder_of_each_failed_tests_logs(pytester: pytest.Pytester) -> None:
    """The folders were gathered in the config of the process that ran the test: under
    pytest-xdist a worker's, so the controller's summary listed none (a parametrized id's
    folder carries a digest: the summary is the one place saying which test it holds)."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_w='''
import pytest

@pytest.mark.parametrize("name", ["a b"])
def test_fails(callstate_server_factory, name):
    callstate_server_factory().client().start().result(timeout=5)
    assert False
''')
    result = pytester.runpytest_subprocess(*LEAN, "-n", "1", "--callstate-log-dir", "kept", timeout=50)
    result.assert_outcomes(failed=1)
    [folder] = (pytester.path / "kept").iterdir()
    assert "callstate: both sides' logs kept" in result.stdout.str()
    result.stdout.fnmatch_lines([f"*{folder}  test_w.py::test_fails?a b?"])


def test_callstate_calls_counts_and_lists_the_tests_own_calls(callstate_server_factory, callstate_calls) -> None:
    """`callstate_calls`, "the calls the test made", had no len, no iteration and a bare
    object repr: a test could not count its calls with it."""
    srv = callstate_server_factory()
    client = srv.client()
    assert len(callstate_calls) == 0 and list(callstate_calls) == []
    calls = [client.start(Script("complete")) for _ in range(3)]
    for call in calls:
        call.result(timeout=5)
    assert len(callstate_calls) == 3
    assert list(callstate_calls) == [call.call_id for call in calls]
    assert calls[1].call_id in callstate_calls
    assert repr(callstate_calls).endswith(": 3 call(s)>")


def test_assert_lifecycle_takes_states_as_text_and_names_a_state_that_is_none(callstate_server_factory) -> None:
    """A string was compared letter by letter ("expected C ->   -> W -> C -> o ..."), and a
    misspelt state was reported as the call's mismatch, not as the test's own slip."""
    call = callstate_server_factory().client().start(Script("complete"))
    call.result(timeout=5)
    assert_lifecycle(call, client="C -> WComp -> Comp -> End", server="D Comp End", code=0)
    assert_lifecycle(call, client=[C, WCOMP, COMP, END], server=[D, COMP, END])
    with pytest.raises(ValueError, match=r"^assert_lifecycle: client=: 'WCOMP' is no client state \(the client "
                                         r"states: C, Can, Comp, End, Pull, Push, WComp\)$"):
        assert_lifecycle(call, client=["C", "WCOMP", "Comp", "End"])
    with pytest.raises(ValueError, match=r"server=: 'WComp' is no server state"):
        assert_lifecycle(call, server="D -> WComp -> End")
    with pytest.raises(TypeError, match=r"^assert_lifecycle: expected a call .*, got str$"):
        assert_lifecycle(call.call_id, client=[C])


def test_assert_lifecycle_says_the_server_had_not_ended_the_call(callstate_server_factory) -> None:
    """Asserting before the outcome listed the missing states with nothing saying why: that
    the server still ran the call when the helper stopped waiting."""
    call = callstate_server_factory().client().start(Script("complete", outcome_delay=2))
    with pytest.raises(AssertionError) as err:
        assert_lifecycle(call, server=[D, COMP, END], timeout=0.2)
    assert "the server had not ended the call when the check gave up waiting, 0.2 s on" in str(err.value)
    call.cancel()   # abortive: the server ends it at once, and the teardown's check passes it
    with pytest.raises(CallError):
        call.result(timeout=5)


def test_an_anyio_test_asking_for_the_async_client_is_told_what_works(pytester: pytest.Pytester) -> None:
    """An anyio test was told to use pytest-asyncio's marker as if it had none; it is told
    its own loop's way too (the factory's async_client, made in the test)."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n"
                     "markers =\n    anyio: stands in for anyio's marker\n")
    pytester.makepyfile(test_any='''
import pytest

@pytest.mark.anyio
def test_anyio(callstate_async_client):
    pass
''')
    result = pytester.runpytest_inprocess(*LEAN)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["callstate: callstate_async_client is made on pytest-asyncio's loop, and this test "
                                 "runs on anyio's: mark it @pytest.mark.asyncio instead, or make the client in the "
                                 "test, on its own loop: callstate_server_factory().async_client()"])


def test_under_pytest_timeout_a_call_left_in_flight_is_said_so_not_cut_off_by_the_timer(
        pytester: pytest.Pytester) -> None:
    """The teardown's check waited its full 5 s for the server to end the call, so a
    `--timeout` shorter than that cut it off: a stack dump of `time.sleep` in the journal poll
    instead of "still in flight" (and no logs kept). It now takes half the time left."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_t='''
from callstate.client import Script

def test_left_held(callstate_server_factory):
    srv = callstate_server_factory()
    call = srv.client().start(Script("hold", on_cancel="ignore"))
    srv.wait_dispatched(call.call_id)
    call.cancel(abortive=False)   # a notice its script ignores: the server holds the call on
''')
    result = pytester.runpytest_subprocess(*LEAN, "--timeout", "3", "--callstate-log-dir", "kept", timeout=50)
    result.assert_outcomes(passed=1, errors=1)
    out = result.stdout.str()
    assert "still in flight: the server holds it in D" in out and "Timeout" not in out, out
    assert (pytester.path / "kept" / "test_t.py_test_left_held" / "server.jsonl").exists()


@pytest.mark.asyncio
async def test_an_async_test_blocking_its_loop_on_wait_dispatched_is_warned_and_has_an_awaitable_twin(
        callstate_server_factory) -> None:
    """`wait_dispatched` in an asyncio test blocks the loop the AsyncClient's call goes out on:
    it returned [] after its timeout with nothing saying why, and there was no awaitable
    `await_dispatched` (only `await_history`)."""
    srv = callstate_server_factory()
    call = srv.async_client().start(Script("hold"))
    with pytest.warns(RuntimeWarning, match=r"gave up while blocking a running event loop.*await_dispatched"):
        assert srv.wait_dispatched(call.call_id, timeout=0.2) == []
    assert [e["state"] for e in await srv.await_dispatched(call.call_id)] == [D]
    call.cancel()
    with pytest.raises(CallError):
        await call


def test_a_plain_clients_states_below_the_servers_are_said_to_carry_no_time(callstate_server_factory) -> None:
    """A client of the test's own logs no times: its states were listed after the server's
    End as if the client had moved last, with nothing saying their order is unknown."""
    from callstate.client import Client

    srv = callstate_server_factory()
    with Client(srv.target) as client:
        call = client.start(Script("complete"))
        call.result(timeout=5)
        with pytest.raises(AssertionError) as err:
            assert_lifecycle(call, client=[C, END], journal=srv)
    assert "the client's states carry no time, so they stand below the server's" in str(err.value)
