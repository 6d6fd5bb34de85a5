"""callstate.client: drive calls through the caller's lifecycle, sync or asyncio.

Both surfaces mirror each other name for name; every call object of both is a `CallCore`
(client/call_core.py: the call's lifecycle without I/O; pipes a `PipeCore`), with one error
type (`CallError`); only sending and waiting differ.
The modules in reading order, each calling only those below it: docs/client-design.md.
"""

from callstate.errors import CallError, CallPending, InvalidAsyncHandle, WaitTimedOut
from callstate.script import Script
from callstate.client.aio import AsyncCall, AsyncClient, AsyncCompletionQueue
from callstate.client.sync import Call, Client, CompletionQueue
from callstate.client.pipe_aio import AsyncPipe
from callstate.client.pipe_sync import Pipe
from callstate.pipe_script import PipeScript

__all__ = [
    "AsyncCall", "AsyncClient", "AsyncCompletionQueue", "Call", "CallError", "CallPending", "Client",
    "CompletionQueue", "InvalidAsyncHandle", "Script", "AsyncPipe", "Pipe", "PipeScript", "WaitTimedOut",
]
