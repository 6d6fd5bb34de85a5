"""The client library as a test engineer's harness uses it (audit 27): the sync and asyncio twins
answer the same misuse with the same error, close() ends every call it logged (also one never
started), and a wrong argument is one error naming it, raised before anything is logged."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from callstate import codes, lifecycle
from callstate.client import AsyncClient, CallError, Client, PipeScript, Script
from callstate.lifecycle import CLIENT_CLOSED, START_FAILED
from callstate.logfile import check_files
from tests.conftest import ServerProcess, final, read_entries, states

pytestmark = pytest.mark.timeout(120)

BOUND = 10.0   # a wait that must not be needed: with the defect it runs out, without it returns at once


def _calls(log: Path) -> dict[str, list[dict[str, Any]]]:
    by_id: dict[str, list[dict[str, Any]]] = {}
    for e in read_entries(log):
        by_id.setdefault(e["call_id"], []).append(e)
    return by_id


# -- waiting on a call that was never started ------------------------------------------------
def test_waiting_on_a_call_never_started_is_refused_by_both_twins(shared_server: ServerProcess,
                                                                   tmp_path: Path) -> None:
    """The sync `Call.wait()` / `result()` before `start()` blocked until its timeout (forever
    without one) while the asyncio twin refused at once with 1915: both refuse now."""
    log = tmp_path / "client.jsonl"
    with Client(shared_server.target, log=log) as client:
        call = client.prepare(Script("complete"))
        refused = []
        for wait in (lambda: call.wait(BOUND), lambda: call.result(BOUND)):
            with pytest.raises(CallError) as err:
                wait()
            refused.append(err.value)
        call.start()
        assert call.result(BOUND).call_id == call.call_id   # the call still works once started

    async def aio() -> list[CallError]:
        async with AsyncClient(shared_server.target, log=log) as client:
            call = client.prepare(Script("complete"))
            got = []
            for wait in (lambda: call.wait(BOUND), lambda: call.result(BOUND)):
                with pytest.raises(CallError) as err:
                    await wait()
                got.append(err.value)
            await call.start()
            return got

    refused += asyncio.run(aio())
    assert [(e.code, e.details) for e in refused] == [(codes.RPC_S_INVALID_ASYNC_CALL, "wait() before start()")] * 4
    assert check_files([log]).ok


# -- close() ends every call it logged --------------------------------------------------------
def test_closing_a_client_ends_the_calls_and_pipes_it_never_started(shared_server: ServerProcess,
                                                                    tmp_path: Path) -> None:
    """A prepared call (or pipe) that was neither started nor cancelled stayed in C in the log
    after close(): `callstate check` failed the harness's log (not_ended). close() ends it now,
    C -> End with 1915, as a start() after close() would; a later start() is refused."""
    log = tmp_path / "client.jsonl"
    with Client(shared_server.target, log=log) as client:
        left = [client.prepare(Script("complete")), client.pipe("in", PipeScript())]
        done = client.start(Script("complete"))
        done.result(BOUND)

    async def aio() -> list[Any]:
        async with AsyncClient(shared_server.target, log=log) as client:
            return [client.prepare(Script("complete")), client.pipe("both", PipeScript())]

    left += asyncio.run(aio())
    calls = _calls(log)
    for call in left:
        mine = calls[call.call_id]
        assert states(mine) == ["C", "End"], mine
        assert final(mine)["move"] == START_FAILED and final(mine)["code"] == codes.RPC_S_INVALID_ASYNC_CALL
        assert "closed before the call was started" in final(mine)["detail"]
        with pytest.raises(CallError) as err:
            call.start()
        assert err.value.code == codes.RPC_S_INVALID_ASYNC_CALL
    assert states(calls[done.call_id])[-1] == "End"
    assert check_files([log]).ok


def test_a_client_closed_while_a_call_is_being_made_ends_it_once(shared_server: ServerProcess,
                                                                 tmp_path: Path) -> None:
    """close() (another thread) while start() is making the RPC: the call ends once, with the
    code its error says; never a LifecycleError from a second end."""
    log = tmp_path / "client.jsonl"
    client = Client(shared_server.target, log=log)
    unary = client._unary

    def closing_first(request: Any) -> Any:
        client.close()   # as another thread would, between start()'s checks and the RPC
        return unary(request)

    client._unary = closing_first   # type: ignore[method-assign]
    call = client.prepare(Script("complete"))
    with pytest.raises(CallError) as err:
        call.start()
    mine = _calls(log)[call.call_id]
    assert states(mine) == ["C", "End"] and final(mine)["code"] == err.value.code == codes.RPC_S_INVALID_ASYNC_CALL
    assert check_files([log]).ok


def test_a_cancel_notice_after_the_client_closed_raises_nothing_unseen(shared_server: ServerProcess,
                                                                      tmp_path: Path) -> None:
    """A non-abortive cancel, then close() before the loop ran the notice: the notice's task
    failed with grpc's UsageError ('Channel is closed'), which nobody retrieves (asyncio printed
    'Task exception was never retrieved'). It is the notice cut off by the close now."""
    log = tmp_path / "client.jsonl"

    async def aio() -> tuple[Any, BaseException | None]:
        client = AsyncClient(shared_server.target, log=log)
        call = client.start(Script("hold"))
        call.cancel(abortive=False, timeout=None)
        await client.close()
        task = call._notice._task
        await asyncio.wait([task], timeout=BOUND)
        assert task.done()
        return call, task.exception()

    call, raised = asyncio.run(aio())
    assert raised is None, raised
    assert states(_calls(log)[call.call_id])[-1] == "End"
    assert check_files([log]).ok


# -- wrong arguments --------------------------------------------------------------------------
BAD_CALLS: list[tuple[str, Callable[[Any], Any], type[Exception], str]] = [
    ("script a str", lambda c: c.prepare("complete"), TypeError, "script must be a Script or callstate.v1.Script"),
    ("a delay as text", lambda c: c.prepare(Script(dispatch_delay="1")), ValueError, "script.dispatch_delay: must be"),
    ("a count as a float", lambda c: c.prepare(Script(reply_bytes=1.5)), ValueError, "script.reply_bytes: must be an int"),
    ("payload a str", lambda c: c.prepare(Script(), payload="abc"), TypeError, "payload must be bytes"),
    ("call_id an int", lambda c: c.prepare(Script(), call_id=5), TypeError, "call_id must be a str"),
    ("queue without post", lambda c: c.prepare(Script(), queue=5), TypeError, "queue must be a completion queue"),
    ("on_complete not callable", lambda c: c.prepare(Script(), on_complete=5), TypeError, "on_complete must be callable"),
    ("a pipe given a unary Script", lambda c: c.pipe("in", Script()), TypeError, "script must be a PipeScript"),
    ("a pipe script field of a wrong type", lambda c: c.pipe("out", PipeScript(messages="3")), ValueError,
     "script.messages: must be an int"),
    ("a pipe timeout that is not one", lambda c: c.pipe("in", PipeScript(), timeout=-1), ValueError,
     "timeout must be a positive number of seconds"),
]


@pytest.mark.parametrize("what,make,error,says", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_a_wrong_argument_is_one_error_naming_it_and_nothing_is_logged(
        shared_server: ServerProcess, tmp_path: Path, what: str, make: Callable[[Any], Any], error: type[Exception],
        says: str) -> None:
    """Before: protobuf's or round()'s words that name no argument, an AttributeError at start(),
    or (queue=, a pipe's script) a call left in C in the log; a non-callable on_complete was
    taken and failed later on gRPC's thread."""
    log = tmp_path / "client.jsonl"
    raised = []
    with Client(shared_server.target, log=log) as client:
        with pytest.raises(error) as err:
            make(client).start()
        raised.append(err.value)

    async def aio() -> None:
        async with AsyncClient(shared_server.target, log=log) as client:
            with pytest.raises(error) as err:
                make(client).start()
            raised.append(err.value)

    asyncio.run(aio())
    assert [type(e) for e in raised] == [type(raised[0])] * 2   # the twins agree
    assert all(says in str(e) for e in raised), raised
    assert not log.exists() or read_entries(log) == []


@pytest.mark.parametrize("make,says", [
    (lambda target: Client(50051), "target must be a str"),
    (lambda target: Client(target, log=5), "log must be a path, a StateLog or None"),
    (lambda target: AsyncClient(target, log=object()), "log must be a path, a StateLog or None"),
])
def test_a_client_made_with_a_wrong_target_or_log_says_which(make: Callable[[str], Any], says: str,
                                                             refused_target: str) -> None:
    """Before: Client(50051) failed inside grpc ('int' object has no attribute 'encode'), and
    log=5 was taken, each call then failing with an AttributeError."""
    with pytest.raises(TypeError, match=says):
        make(refused_target)


@pytest.mark.parametrize("timeout", ["2", -1, float("nan")])
def test_a_cancel_with_a_wrong_timeout_is_refused_before_any_move(shared_server: ServerProcess, tmp_path: Path,
                                                                  timeout: Any) -> None:
    """cancel(abortive=False, timeout="2") moved the call to Can and sent the notice, then its
    escalation timer died on its thread (sync) or cancel() raised a TypeError after the moves
    (asyncio). Now it is refused before anything moves, the same on both twins."""
    log = tmp_path / "client.jsonl"
    histories = []
    with Client(shared_server.target, log=log) as client:
        call = client.start(Script("hold"))
        with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0 or None"):
            call.cancel(abortive=False, timeout=timeout)
        histories.append(call.history)
        call.cancel()
        with pytest.raises(CallError):
            call.result(BOUND)

    async def aio() -> None:
        async with AsyncClient(shared_server.target, log=log) as client:
            call = client.start(Script("hold"))
            with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0 or None"):
                call.cancel(abortive=False, timeout=timeout)
            histories.append(call.history)
            call.cancel()
            with pytest.raises(CallError):
                await call

    asyncio.run(aio())
    assert histories == [["C", "WComp"]] * 2
    assert check_files([log]).ok


def test_a_plugin_test_that_prepares_a_call_and_never_starts_it_passes_its_teardown_check(
        pytester: pytest.Pytester) -> None:
    """With the pytest plugin, a test that made a call with prepare() and then did not need it
    errored at its teardown (not_ended: client stopped in C): the fixture's close ends it now.
    The sync test also waits on a prepared call: refused at once, where it blocked forever."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\ntimeout = 60\n")
    pytester.makepyfile(test_prepared='''
import pytest
from callstate.client import CallError, PipeScript, Script

def test_sync(callstate_client):
    call = callstate_client.prepare(Script("complete"))
    callstate_client.pipe("in", PipeScript())
    with pytest.raises(CallError):
        call.result()

@pytest.mark.asyncio
async def test_asyncio(callstate_async_client):
    callstate_async_client.prepare(Script("hold"))
    callstate_async_client.pipe("out", PipeScript())
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", timeout=80)
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=2)


def test_the_installed_library_declares_its_type_hints(tmp_path: Path) -> None:
    """A harness type-checked with mypy got `Skipping analyzing "callstate.client": module is
    installed, but missing library stubs or py.typed marker` (an error under --strict, and every
    name of the library Any): the wheel carries callstate/py.typed now (PEP 561), which covers
    callstate.client and the other subpackages."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from tests.conftest import ROOT

    src = tmp_path / "src"   # a copy: building writes build/ and egg-info beside the sources
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__",
                                                             "node_modules", "site", "reports"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "wheel"), str(src)], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheel").glob("callstate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "callstate/client/sync.py" in names   # the wheel seen is the library's
    assert "callstate/py.typed" in names


def test_repr_names_the_call_and_where_it_is(shared_server: ServerProcess) -> None:
    """A failing assertion showed `<callstate.client.sync.Call object at 0x7f...>`: nothing to
    find the call by in the logs. Calls, pipes and clients of both twins say who and where now."""
    with Client(shared_server.target) as client:
        call = client.prepare(Script("abort", abort_code=5001))
        pipe = client.pipe("out", PipeScript())
        assert repr(call) == f"<Call {call.call_id} C>"
        assert repr(pipe) == f"<Pipe out {pipe.call_id} C>"
        assert repr(client) == f"<Client {shared_server.target} open, 2 call(s) live>"
        with pytest.raises(CallError):
            call.start().result(BOUND)
        assert repr(call) == f"<Call {call.call_id} End code=5001 APPLICATION_ERROR_5001>"
    assert repr(client) == f"<Client {shared_server.target} closed>"

    async def aio() -> tuple[str, str]:
        async with AsyncClient(shared_server.target) as client:
            call = client.start(Script("complete"))
            await call
            return repr(call), repr(client)

    call_repr, client_repr = asyncio.run(aio())
    assert call_repr.startswith("<AsyncCall ") and call_repr.endswith(" End code=0 RPC_S_OK>")
    assert client_repr == f"<AsyncClient {shared_server.target} open, 0 call(s) live>"


def _printed_as_commented(block: str) -> list[str] | None:
    """What each `print(...)  # output` line of an example says it prints; None when a print
    has no such comment (its output is not shown)."""
    said = []
    for line in block.splitlines():
        if line.strip().startswith("print("):
            code, sep, comment = line.partition("  # ")
            if not sep:
                return None
            said.append(comment.strip())
    return said


def test_the_library_page_examples_print_what_their_comments_say(shared_server: ServerProcess,
                                                                  tmp_path: Path) -> None:
    """docs/library.md: every example whose prints carry the output as a comment prints exactly
    that (tests/test_docs.py runs them, but only for their exit status)."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.documentation import blocks

    checked = 0
    for block in blocks((ROOT / "docs" / "library.md").read_text(), "python"):
        said = _printed_as_commented(block)
        if said is None:
            continue
        script = tmp_path / f"example{checked}.py"
        script.write_text(block.replace("127.0.0.1:50051", shared_server.target))
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.splitlines() == said, block
        checked += 1
    assert checked >= 2


def _refused_in_a_worker(kind: str) -> None:
    """Raised in a worker process (what a harness's process pool sends back)."""
    from callstate.lifecycle import CLIENT, Lifecycle
    from callstate.script import validate_request
    from callstate.v1 import callstate_pb2 as pb

    if kind == "script":
        Script(reply_bytes=1.5).to_proto()
    elif kind == "request":
        validate_request(pb.CallRequest(call_id="a\nb"))
    else:
        lifecycle = Lifecycle(CLIENT)
        lifecycle.move("complete")


@pytest.mark.parametrize("kind,error,says", [
    ("script", "ScriptError", "script.reply_bytes: must be an int, got 1.5"),
    ("request", "RequestError", "call_id: only printable ASCII"),
    ("lifecycle", "LifecycleError", "client lifecycle: move 'complete' is illegal in state 'C'"),
])
def test_the_librarys_errors_cross_a_process_pool(kind: str, error: str, says: str) -> None:
    """ScriptError, RequestError and LifecycleError could not be unpickled (their __init__ takes
    other arguments than the text they keep): raised in a worker of a ProcessPoolExecutor, the
    harness got a TypeError about __init__'s arguments instead (CallError already crossed)."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        with pytest.raises(Exception) as err:
            pool.submit(_refused_in_a_worker, kind).result(timeout=120)
    assert type(err.value).__name__ == error and says in str(err.value), repr(err.value)
    if kind != "lifecycle":
        assert err.value.field == ("reply_bytes" if kind == "script" else "call_id")   # type: ignore[attr-defined]


def _held_in_making(client: Client, during: Callable[[], None]) -> None:
    """Make the client's next RPC wait in the making until `during()` (another thread's move) ran."""
    unary = client._unary

    def making(request: Any) -> Any:
        client._unary = unary   # type: ignore[method-assign]
        during()
        return unary(request)

    client._unary = making   # type: ignore[method-assign]


def test_a_call_started_from_two_threads_at_once_goes_out_once(shared_server: ServerProcess,
                                                               tmp_path: Path) -> None:
    """Two threads start() one prepared call: both passed the check for C, so the call was sent
    twice and the later start() raised LifecycleError, not CallError (157 of 200 on a 2-core
    machine). The second start() is refused with 1915 now, before it sends anything."""
    import threading

    log = tmp_path / "client.jsonl"
    with Client(shared_server.target, log=log) as client:
        call = client.prepare(Script("complete"))
        second: list[BaseException] = []

        def start_again() -> None:
            try:
                call.start()
            except BaseException as exc:   # what a harness thread would see
                second.append(exc)

        def other_thread() -> None:
            thread = threading.Thread(target=start_again)
            thread.start()
            thread.join(BOUND)
            assert not thread.is_alive()

        _held_in_making(client, other_thread)
        call.start()
        assert call.result(BOUND).call_id == call.call_id
    assert len(second) == 1 and isinstance(second[0], CallError), second
    assert second[0].code == codes.RPC_S_INVALID_ASYNC_CALL and "another start()" in second[0].details
    dispatched = shared_server.wait_entries(call.call_id)
    assert [e["move"] for e in dispatched if e.get("prev") is None] == ["dispatch"]   # one RPC reached it
    assert states(_calls(log)[call.call_id]) == ["C", "WComp", "Comp", "End"]


def test_a_cancel_while_the_call_is_being_made_stops_its_rpc(shared_server: ServerProcess, tmp_path: Path) -> None:
    """Another thread cancels a call while start() is making its RPC, before the RPC exists:
    the cancel gives the call its outcome (1818, cancelled before start), and start() then
    raised LifecycleError and left the RPC running on the server (a held call: until max hold).
    start() is refused with 1915 now and the RPC is cancelled: both sides end."""
    log = tmp_path / "client.jsonl"
    with Client(shared_server.target, log=log) as client:
        call = client.prepare(Script("hold"))
        _held_in_making(client, lambda: call.cancel())
        with pytest.raises(CallError) as err:
            call.start()
        assert err.value.code == codes.RPC_S_INVALID_ASYNC_CALL and "cancelled while it was starting" in err.value.details
        with pytest.raises(CallError) as cancelled:
            call.result(BOUND)
        assert cancelled.value.code == codes.RPC_S_CALL_CANCELLED
    assert call._rpc is not None and call._rpc.cancelled()   # the RPC made after the cancel is cancelled too
    assert check_files([log]).ok


def _answered_on_grpc_thread(client: Client, callback: Callable[[Any], None]) -> Any:
    """A call whose notification, and so `callback`, comes on gRPC's thread: held until a cancel
    notice, which the server answers with its reply (a call answered before start() returned is
    notified on the caller's thread instead)."""
    call = client.start(Script("hold", on_cancel="complete"))
    call.add_done_callback(callback)
    call.cancel(abortive=False)
    return call


def test_closing_a_sync_client_from_a_done_callback_ends_every_call(shared_server: ServerProcess,
                                                                    tmp_path: Path) -> None:
    """`on_complete=lambda call: client.close()` ("stop at the first answer") with other calls in
    flight: close() ran on gRPC's thread, and closing the channel waited for that thread to
    cancel the calls in flight: it never returned, and the calls stayed in WComp in the log.
    close() returns now, every call ends (1722, the one that answered with its reply)."""
    import threading

    log = tmp_path / "client.jsonl"
    client = Client(shared_server.target, log=log)
    held = [client.start(Script("hold")) for _ in range(2)]
    closed = threading.Event()

    closed_on: list[int] = []

    def stop(call: Any) -> None:
        closed_on.append(threading.get_ident())
        client.close()
        closed.set()

    answered = _answered_on_grpc_thread(client, stop)
    assert closed.wait(BOUND), "close() from the done-callback never returned"
    assert closed_on != [threading.get_ident()], "the callback ran on the caller's thread"
    assert answered.result(BOUND).call_id == answered.call_id   # completed on the caller's behalf: its reply
    calls = _calls(log)
    assert [final(calls[c.call_id])["code"] for c in held] == [codes.RPC_S_SERVER_UNAVAILABLE] * 2
    assert final(calls[answered.call_id])["code"] == codes.RPC_S_OK
    assert check_files([log]).ok


def test_waiting_in_a_done_callback_for_a_call_of_the_same_client_is_refused(shared_server: ServerProcess,
                                                                             tmp_path: Path) -> None:
    """A sync done-callback that starts the next call and waits for it (chaining calls) waited
    out its whole timeout, or for ever without one: the callback runs on the client's gRPC
    thread, which would deliver the notification. Refused at once with 1915 now, saying so;
    waiting for another client's call there works as before."""
    import threading

    log, other_log = tmp_path / "client.jsonl", tmp_path / "other.jsonl"
    with Client(shared_server.target, log=log) as client, Client(shared_server.target, log=other_log) as other:
        got: list[Any] = []
        done = threading.Event()

        ran_on: list[int] = []

        def chain(call: Any) -> None:
            ran_on.append(threading.get_ident())
            try:
                for target in (client, other):
                    try:
                        got.append(target.start(Script("complete")).result(BOUND).call_id)
                    except CallError as err:
                        got.append(err)
            finally:
                done.set()

        _answered_on_grpc_thread(client, chain)
        assert done.wait(3 * BOUND)
        assert ran_on != [threading.get_ident()], "the callback ran on the caller's thread"
    refused, answered = got
    assert isinstance(refused, CallError) and refused.code == codes.RPC_S_INVALID_ASYNC_CALL, refused
    assert "done-callback of the same client" in refused.details
    assert isinstance(answered, str)
    assert check_files([log, other_log]).ok


@pytest.mark.parametrize("access", [
    {"tls_ca": "/nonexistent/ca.pem"},
    {"channel_options": [("grpc.max_receive_message_length", object())]},
    {"tracing": 5},
], ids=["unreadable CA", "bad channel option", "not a tracer provider"])
def test_a_client_that_cannot_be_made_leaves_no_log_open(tmp_path: Path, access: dict[str, Any],
                                                          refused_target: str) -> None:
    """A client refused when its channel is opened (an unreadable CA, a bad channel option, a
    tracing value that is not a provider) had opened its log path: its writer thread and file
    stayed open, one more for every such attempt in a harness. The log is closed now."""
    import threading

    def writers() -> int:
        return sum(t.name == "callstate-statelog" for t in threading.enumerate())

    before = writers()
    for surface in (Client, AsyncClient):
        with pytest.raises(Exception):
            surface(refused_target, log=tmp_path / "client.jsonl", **access)
    assert writers() <= before   # (another test's writer may end meanwhile, none may be added)


def test_a_plugin_fixture_that_cannot_start_says_so_once(pytester: pytest.Pytester) -> None:
    """A bad callstate_server_factory configuration (or a stand-in without protos) failed the
    test with its message twice: the error itself, then 'During handling of the above
    exception, another exception occurred:' and the plugin's line. One line now."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\ntimeout = 60\n")
    pytester.makepyfile(test_bad='''
def test_bad_mix(callstate_server_factory):
    callstate_server_factory(mix="bogus=1")

def test_no_protos(callstate_standin):
    pass
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rN", timeout=80)
    out = result.stdout.str()
    result.assert_outcomes(failed=1, errors=1)
    assert "During handling" not in out, out
    assert out.count("unknown name 'bogus'") == 1, out
    assert out.count("callstate_standin needs protos") == 1, out


def test_closing_while_a_reply_is_on_its_way_checks_clean(shared_server: ServerProcess, tmp_path: Path) -> None:
    """A harness closes its client while a call's reply is on its way (the server completed it,
    0): the client, which never got the reply, recorded closing and ended it 1722, and
    `callstate check` called that a code mismatch (it took a client's close for its own only
    against a server that saw the caller vanish). A close the client recorded explains its 1722
    whatever the server did."""
    import time

    log = tmp_path / "client.jsonl"

    async def go() -> str:
        client = AsyncClient(shared_server.target, log=log)
        call = client.start(Script("complete"))
        await asyncio.sleep(0)   # the call goes out
        deadline = time.monotonic() + 20   # the loop is held meanwhile: the reply waits in gRPC
        while time.monotonic() < deadline and not any(
                e["state"] == "End" for e in read_entries(shared_server.log, call.call_id)):
            time.sleep(0.02)
        await client.close()
        assert call.code == codes.RPC_S_SERVER_UNAVAILABLE, call
        return call.call_id

    call_id = asyncio.run(go())
    assert final(read_entries(shared_server.log, call_id))["code"] == codes.RPC_S_OK
    assert CLIENT_CLOSED in [e["event"] for e in read_entries(log, call_id)]
    server = tmp_path / "server.jsonl"   # this call's server entries (the module's server has others in flight)
    server.write_text("".join(line for line in shared_server.log.read_text().splitlines(keepends=True)
                              if call_id in line))
    report = check_files([log, server])
    assert report.ok and report.calls == 1, report.summary()


@pytest.mark.parametrize("surface", ["sync", "asyncio"])
@pytest.mark.parametrize("pipe", [False, True])
def test_a_wait_that_runs_out_says_the_call_is_still_pending(shared_server: ServerProcess, surface: str,
                                                             pipe: bool, tmp_path: Path) -> None:
    """`result(timeout)` running out is the caller's own wait, not the call's end: `WaitTimedOut`,
    1460 as before and also a TimeoutError, and the call can still be cancelled and completed."""
    from callstate.client import WaitTimedOut

    def make(client: Any) -> Any:
        return client.pipe("out", PipeScript(outcome="hold")) if pipe else client.prepare(Script("hold"))

    if surface == "sync":
        with Client(shared_server.target, log=tmp_path / "c.jsonl") as client:
            call = make(client)
            call.start()
            with pytest.raises(TimeoutError) as info:
                call.result(timeout=0.05)
            assert not call.done() and call.state not in (lifecycle.END,)
            call.cancel()
            with pytest.raises(CallError) as ended:
                call.result(timeout=30)
    else:
        async def go() -> tuple[Any, Any, Any]:
            async with AsyncClient(shared_server.target, log=tmp_path / "c.jsonl") as client:
                call = make(client)
                call.start()
                with pytest.raises(TimeoutError) as info:
                    await call.result(timeout=0.05)
                assert not call.done()
                call.cancel()
                with pytest.raises(CallError) as ended:
                    await call.result(timeout=30)
                return info, ended, call
        info, ended, call = asyncio.run(go())
    assert isinstance(info.value, WaitTimedOut) and isinstance(info.value, CallError)
    assert info.value.code == codes.RPC_S_TIMEOUT and "still pending" in str(info.value)
    assert ended.value.code == codes.RPC_S_CALL_CANCELLED and call.state == lifecycle.END


def test_an_asyncio_completion_queue_takes_a_sync_clients_calls(shared_server: ServerProcess, tmp_path: Path) -> None:
    """A sync Client's calls post to their queue from gRPC's thread: an AsyncCompletionQueue
    waited on in a loop is woken by each (it was put into from that thread, and get() slept on)."""
    import threading

    from callstate.client import AsyncCompletionQueue

    async def go() -> list[int]:
        queue = AsyncCompletionQueue()
        client = Client(shared_server.target, log=tmp_path / "c.jsonl")
        started = threading.Event()

        def calls() -> None:
            for _ in range(3):
                client.start(Script("complete", outcome_delay=0.05), queue=queue)
            started.set()

        threading.Thread(target=calls, daemon=True).start()
        got = []
        t0 = time.monotonic()
        try:
            for _ in range(3):
                # unwoken, get() slept until wait_for's own timer woke the loop (and then found the call)
                call = await asyncio.wait_for(queue.get(), 90)
                assert time.monotonic() - t0 < 45, "the loop was not woken by the post"
                call.result(timeout=5)   # notified already: returns at once
                got.append(call.code)
        finally:
            client.close()
        assert started.is_set()
        return got

    assert asyncio.run(go()) == [0, 0, 0]
