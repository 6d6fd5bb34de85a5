"""Review of session 35's two merges (lib35: done-callbacks off the caller's verb; srv35: abort
codes, health --wait, refused option pairs): the defects the review found, each pinned here.

1. lib35: after a sync abortive `cancel()` of a call or pipe with a callback subscribed (a
   `CompletionQueue`, `on_complete`), `done()` was True and `status()` 1818, yet `wait(0)` was False
   and `result(0)` raised WaitTimedOut ("still pending") until gRPC's thread had run the callbacks
   the cancel left owed: always, right after `cancel()` (50 of 50 tries), and for as long as that
   thread was busy (another call's callback). The asyncio twin's wait runs them first (it lets the
   loop run them) and answers True. Now a sync wait that finds them still owed runs them itself,
   first, as the asyncio wait lets the loop do: never inside `cancel()`, and the wait still returns
   after them.
2. srv35: Locust's --callstate-abort-code refused 997, 1914 and 1915 (the commands' own type) but
   its help still said "non-zero, 32 bits"; serve, load and call name the rule.
"""

from __future__ import annotations

import ast
import asyncio
import threading
from typing import Any, Iterator

import pytest

from callstate.client import AsyncClient, CallError, Client, CompletionQueue, PipeScript, Script
from tests.conftest import ROOT, ServerProcess

pytestmark = pytest.mark.timeout(60)

BOUND = 10.0   # a wait that must not be needed: it only bounds a defect
OBJECTS = ["unary", "in", "out", "both"]


def _held(client: Any, what: str, queue: CompletionQueue) -> Any:
    """A started call or pipe that the server holds, its notification posted to `queue`."""
    if what == "unary":
        return client.start(Script("hold"), queue=queue)
    pipe = client.pipe(what, PipeScript(outcome="hold"))
    pipe.add_done_callback(queue.post)
    return pipe.start()


class _BusyGrpcThread:
    """The client's gRPC thread held in another call's done-callback (a slow callback, a busy
    harness): what it delivers waits until `release()`."""

    def __init__(self, client: Client) -> None:
        self.inside, self.go = threading.Event(), threading.Event()
        blocker = client.start(Script("hold"), on_complete=self._hold)
        blocker.cancel()   # its callback runs on gRPC's thread, and stays there
        assert self.inside.wait(BOUND), "the blocking callback never ran"
        self.blocker = blocker

    def _hold(self, _call: Any) -> None:
        self.inside.set()
        self.go.wait(BOUND)

    def release(self) -> None:
        self.go.set()
        with pytest.raises(CallError):
            self.blocker.result(BOUND)


@pytest.fixture
def sync_client(shared_server: ServerProcess) -> Iterator[Client]:
    with Client(shared_server.target) as client:
        yield client


# -- 1. lib35: a wait right after a sync cancel ---------------------------------------------------------------
@pytest.mark.parametrize("what", OBJECTS)
def test_a_sync_wait_0_right_after_cancel_is_true_when_done_is(sync_client: Client, what: str) -> None:
    """`cancel(); done()` is True (the notification is rushed): `wait(0)` and `result(0)` agree with
    it, as the asyncio twin's do, even while gRPC's thread is busy elsewhere; the queue is posted
    once, after `cancel()` returned."""
    busy = _BusyGrpcThread(sync_client)
    try:
        queue = CompletionQueue()
        call = _held(sync_client, what, queue)
        call.cancel()
        assert queue.qsize() == 0, "the queue was posted inside cancel()"
        assert call.done() and call.status() == 1818
        assert call.wait(0) is True, "done() is True but wait(0) says the call is still pending"
        assert queue.get(timeout=0) is call   # the callbacks ran before the wait returned
        with pytest.raises(CallError) as err:
            call.result(0)
        assert err.value.code == 1818 and call.history[-1] == "End"
    finally:
        busy.release()
    assert queue.qsize() == 0   # posted once: gRPC's thread found nothing left to run


def test_the_asyncio_twin_answers_the_same(shared_server: ServerProcess) -> None:
    """The behaviour the sync surface now matches: `await wait(0)` right after `cancel()` is True,
    with the queue posted, on the loop."""
    async def main() -> None:
        async with AsyncClient(shared_server.target) as client:
            for what in OBJECTS:
                queue = CompletionQueue()
                call = _held(client, what, queue)
                call.cancel()
                assert queue.qsize() == 0 and call.done()
                assert await call.wait(0) is True and queue.get(timeout=0) is call
                with pytest.raises(CallError) as err:
                    await call.result(0)
                assert err.value.code == 1818

    asyncio.run(main())


# -- 2. srv35: every place an abort code is given says what it may be ---------------------------------------
def test_locusts_abort_code_option_says_what_the_other_commands_say() -> None:
    """serve, load and call name the rule in their help (`ABORT_CODE_RULE`: not 997, 1914, 1915)
    and refuse those codes; Locust's --callstate-abort-code refused them too (the same `abort_code`
    type) but its help still said "non-zero, 32 bits". Read from the source: importing locust here
    would patch this process's threads with gevent's."""
    from callstate.arg_types import abort_code
    from callstate.script import ABORT_CODE_RULE

    tree = ast.parse((ROOT / "integrations" / "locust" / "options.py").read_text())
    [entry] = [value for node in ast.walk(tree) if isinstance(node, ast.Dict)
               for key, value in zip(node.keys, node.values)
               if isinstance(key, ast.Constant) and key.value == "--callstate-abort-code"]
    assert isinstance(entry, ast.Tuple) and ast.unparse(entry.elts[1]) == "abort_code"   # the commands' own type
    text = eval(compile(ast.Expression(entry.elts[2]), "options.py", "eval"), {"ABORT_CODE_RULE": ABORT_CODE_RULE})
    assert ABORT_CODE_RULE in text, text
    for code in ("997", "1914", "1915"):
        with pytest.raises(Exception, match=f"must not be {code}"):
            abort_code(code)
