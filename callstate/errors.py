"""The one error type of the client library, carrying the MS-RPC code."""

from __future__ import annotations

from typing import Any

from callstate import codes


class CallError(Exception):
    """A call's final code (or a refused operation) that is not RPC_S_OK.

    `code` is the MS-RPC code and `name` its symbol, e.g. 1818
    RPC_S_CALL_CANCELLED; `grpc_status` and `details` are what gRPC said.
    """

    def __init__(self, code: int, call_id: str = "", *, grpc_status: str = "", details: str = "") -> None:
        # The text is made when asked for (str(), a traceback): a cancel-heavy load raises one
        # per cancelled call and most are caught unread.
        super().__init__(code, call_id, grpc_status, details)
        self.code = code
        self.call_id = call_id
        self.grpc_status = grpc_status
        self.details = details

    @property
    def name(self) -> str:
        return codes.name(self.code)

    def __str__(self) -> str:
        text = f"{self.code} {self.name}"
        if self.grpc_status:
            text += f" (gRPC {self.grpc_status}{': ' + self.details if self.details else ''})"
        elif self.details:
            text += f": {self.details}"
        if self.call_id:
            text += f" [call {self.call_id}]"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        # args are CallError's own (the subclasses take others): rebuilt from the fields
        return _rebuild, (type(self), self.__dict__)


def _rebuild(cls: type[CallError], fields: dict[str, Any]) -> CallError:
    err = cls.__new__(cls)
    Exception.__init__(err, fields.get("code"), fields.get("call_id"), fields.get("grpc_status"), fields.get("details"))
    err.__dict__.update(fields)
    return err


class CallPending(CallError):
    """RPC_S_ASYNC_CALL_PENDING (997): complete() before the notification; nothing changed."""

    def __init__(self, call_id: str = "") -> None:
        super().__init__(codes.RPC_S_ASYNC_CALL_PENDING, call_id, details="the call has not completed yet")


class InvalidAsyncHandle(CallError):
    """RPC_S_INVALID_ASYNC_HANDLE (1914): complete() or cancel() after the call was completed."""

    def __init__(self, call_id: str = "", operation: str = "") -> None:
        super().__init__(codes.RPC_S_INVALID_ASYNC_HANDLE, call_id,
                         details=f"{operation} after the call was completed" if operation else "")


class WaitTimedOut(CallError, TimeoutError):
    """RPC_S_TIMEOUT (1460) from the caller's own wait: `result(timeout)` ran out before the
    notification. Unlike a 1460 ending (the server's max hold), the call is still pending: wait
    again, cancel it, or complete it later. Caught as `TimeoutError` too."""

    def __init__(self, call_id: str = "", timeout: float = 0.0) -> None:
        super().__init__(codes.RPC_S_TIMEOUT, call_id,
                         details=f"no notification within {timeout:g}s (the call is still pending)")

