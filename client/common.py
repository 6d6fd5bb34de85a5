"""What the sync and asyncio clients share besides the lifecycle core."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import grpc

from callstate import codes
from callstate.script import Script
from callstate.statelog import StateLog
from callstate.v1 import callstate_pb2 as pb


def new_call_id() -> str:
    """Client-chosen and unguessable: 128 random bits."""
    return os.urandom(16).hex()


def request_for(script: Script | pb.Script | None, payload: bytes, call_id: str) -> pb.CallRequest:
    """The wire request; a Python `Script` is converted (raising ScriptError on bad names)."""
    if isinstance(script, Script):
        script = script.to_proto()
    return pb.CallRequest(call_id=call_id, script=script, payload=payload)


def outcome_of_error(status: grpc.StatusCode | None, trailing: Iterable[tuple[str, str | bytes]] | None,
                     details: str | None) -> tuple[int, str, str]:
    """(MS-RPC code, gRPC status name, details) of a failed gRPC call."""
    return codes.from_grpc(status, trailing), status.name if status is not None else "", details or ""


class ClientBase:
    """Target, state log and options shared by `Client` and `AsyncClient`."""

    def __init__(self, target: str, *, log: str | Path | StateLog | None, timeout: float | None) -> None:
        self.target = target
        self.timeout = timeout
        self.closed = False
        # a path: the client opens (and closes) the log; any sink with append() is used as given
        self._owns_log = isinstance(log, (str, Path))
        self.log: StateLog | None = StateLog(log) if isinstance(log, (str, Path)) else log

    def _close_log(self) -> None:
        if self._owns_log and self.log is not None:
            self.log.close()
