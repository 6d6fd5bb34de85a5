"""A non-abortive cancel's notice on gRPC's and timer threads (`Call`, `Pipe`): the
`Emulator/Cancel` RPC as a future, and the timer that escalates the cancel to abortive when it
goes unanswered. What becomes of the notice is `NoticeBase`'s (notice.py)."""

from __future__ import annotations

import threading
import grpc

from callstate.client.notice import NoticeBase


class ThreadNotice(NoticeBase):
    def send(self, escalate_after: float | None) -> None:
        notice = self._client._stub.Cancel.future(self._request, timeout=self._timeout,
                                                  metadata=self._metadata)
        notice.add_done_callback(self._on_answer)
        if escalate_after is not None:
            if self._timer is not None:   # a second non-abortive cancel: its own timeout counts
                self._timer.cancel()
            self._timer = threading.Timer(escalate_after, self.escalate, (escalate_after,))
            self._timer.daemon = True
            self._timer.start()

    def _on_answer(self, notice: grpc.Future) -> None:
        if notice.cancelled():
            self.cut_off()
        elif isinstance(err := notice.exception(), grpc.Call):
            self.failed(err.code())
        else:
            self.answered(notice.result())

