"""The one error type of the client library, carrying the MS-RPC code."""

from __future__ import annotations

from callstate import codes


class CallError(Exception):
    """A call's final code (or a refused operation) that is not RPC_S_OK.

    `code` is the MS-RPC code and `name` its symbol, e.g. 1818
    RPC_S_CALL_CANCELLED; `grpc_status` and `details` are what gRPC said.
    """

    def __init__(self, code: int, call_id: str = "", *, grpc_status: str = "", details: str = "") -> None:
        self.code = code
        self.name = codes.name(code)
        self.call_id = call_id
        self.grpc_status = grpc_status
        self.details = details
        text = f"{code} {self.name}"
        if grpc_status:
            text += f" (gRPC {grpc_status}{': ' + details if details else ''})"
        elif details:
            text += f": {details}"
        if call_id:
            text += f" [call {call_id}]"
        super().__init__(text)


class CallPending(CallError):
    """RPC_S_ASYNC_CALL_PENDING (997): complete() before the notification; nothing changed."""

    def __init__(self, call_id: str = "") -> None:
        super().__init__(codes.RPC_S_ASYNC_CALL_PENDING, call_id, details="the call has not completed yet")


class InvalidAsyncHandle(CallError):
    """RPC_S_INVALID_ASYNC_HANDLE (1914): complete() or cancel() after the call was completed."""

    def __init__(self, call_id: str = "", operation: str = "") -> None:
        super().__init__(codes.RPC_S_INVALID_ASYNC_HANDLE, call_id,
                         details=f"{operation} after the call was completed" if operation else "")
