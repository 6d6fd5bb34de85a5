"""A non-abortive cancel's notice on the event loop (`AsyncCall`, `AsyncPipe`): the
`Emulator/Cancel` RPC, and the timer that escalates the cancel to abortive when it goes
unanswered. What becomes of the notice is `NoticeBase`'s (notice.py). And `after_this_step`: how
an asyncio call runs the callbacks of a notification given in the caller's own verb."""

from __future__ import annotations

import asyncio
from typing import Callable

import grpc

from callstate.client.notice import NoticeBase


def after_this_step(run: Callable[[], None]) -> None:
    """Run the callbacks of a notification given in the caller's own verb (a rushed `cancel()`) on
    the loop once the verb has returned, as asyncio's own Future runs its callbacks (call_soon),
    never inside the verb (call_core.py, `_off_the_verb`); with no loop running, here."""
    loop = asyncio._get_running_loop()
    if loop is None:
        run()
    else:
        loop.call_soon(run)


class AsyncNotice(NoticeBase):
    _task: asyncio.Future[None] | None = None

    def send(self, escalate_after: float | None) -> None:
        self._task = asyncio.ensure_future(self._notice_and_log())
        if escalate_after is not None:
            if self._timer is not None:   # a second non-abortive cancel: its own timeout counts
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(escalate_after, self.escalate, escalate_after)

    async def _notice_and_log(self) -> None:
        try:
            reply = await self._client._stub.Cancel(self._request, timeout=self._timeout,
                                                    metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            self.failed(err.code())
        except (asyncio.CancelledError, grpc.aio.UsageError):
            # the client closed before the notice was answered, or before this task ran: its
            # channel refuses new calls (UsageError), which no one would ever retrieve from the task
            self.cut_off()
        else:
            self.answered(reply)

