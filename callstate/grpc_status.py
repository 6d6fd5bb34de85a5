"""The code table's gRPC statuses as `grpc.StatusCode` (the one core module that imports grpc:
`callstate.codes` keeps the mapping as status names, so the core runs without it)."""

from __future__ import annotations

import grpc

from callstate import codes


def grpc_status_for(code: int) -> grpc.StatusCode:
    """The gRPC status an abort with `code` is sent with when the script names none."""
    return grpc.StatusCode[codes.grpc_status_name_for(code)]


def status_from_value(value: int) -> grpc.StatusCode | None:
    """grpc.StatusCode for its integer value (None when there is no such status)."""
    status = codes.status_name_of_value(value)
    return grpc.StatusCode[status] if status is not None else None
