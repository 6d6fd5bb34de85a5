from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_COMPLETE: _ClassVar[Outcome]
    OUTCOME_ABORT: _ClassVar[Outcome]
    OUTCOME_FATAL: _ClassVar[Outcome]
    OUTCOME_HOLD: _ClassVar[Outcome]

class OnCancel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ON_CANCEL_UNSPECIFIED: _ClassVar[OnCancel]
    ON_CANCEL_ABORT: _ClassVar[OnCancel]
    ON_CANCEL_COMPLETE: _ClassVar[OnCancel]
    ON_CANCEL_IGNORE: _ClassVar[OnCancel]

class PipePoint(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIPE_POINT_UNSPECIFIED: _ClassVar[PipePoint]
    PIPE_POINT_BEFORE_FIRST: _ClassVar[PipePoint]
    PIPE_POINT_AFTER_IN: _ClassVar[PipePoint]
    PIPE_POINT_AFTER_OUT: _ClassVar[PipePoint]
    PIPE_POINT_AFTER_HALF_CLOSE: _ClassVar[PipePoint]

class PipeBreach(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIPE_BREACH_NONE: _ClassVar[PipeBreach]
    PIPE_BREACH_COMPLETE_UNDRAINED: _ClassVar[PipeBreach]
    PIPE_BREACH_PUSH_AFTER_END: _ClassVar[PipeBreach]
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_COMPLETE: Outcome
OUTCOME_ABORT: Outcome
OUTCOME_FATAL: Outcome
OUTCOME_HOLD: Outcome
ON_CANCEL_UNSPECIFIED: OnCancel
ON_CANCEL_ABORT: OnCancel
ON_CANCEL_COMPLETE: OnCancel
ON_CANCEL_IGNORE: OnCancel
PIPE_POINT_UNSPECIFIED: PipePoint
PIPE_POINT_BEFORE_FIRST: PipePoint
PIPE_POINT_AFTER_IN: PipePoint
PIPE_POINT_AFTER_OUT: PipePoint
PIPE_POINT_AFTER_HALF_CLOSE: PipePoint
PIPE_BREACH_NONE: PipeBreach
PIPE_BREACH_COMPLETE_UNDRAINED: PipeBreach
PIPE_BREACH_PUSH_AFTER_END: PipeBreach

class Script(_message.Message):
    __slots__ = ("dispatch_delay_ms", "outcome", "outcome_delay_ms", "reply_bytes", "echo", "abort_code", "abort_grpc_status", "abort_message", "fatal_message", "on_cancel", "headers_first", "cancel_poll_ms")
    DISPATCH_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    REPLY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ECHO_FIELD_NUMBER: _ClassVar[int]
    ABORT_CODE_FIELD_NUMBER: _ClassVar[int]
    ABORT_GRPC_STATUS_FIELD_NUMBER: _ClassVar[int]
    ABORT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FATAL_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ON_CANCEL_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIRST_FIELD_NUMBER: _ClassVar[int]
    CANCEL_POLL_MS_FIELD_NUMBER: _ClassVar[int]
    dispatch_delay_ms: int
    outcome: Outcome
    outcome_delay_ms: int
    reply_bytes: int
    echo: bool
    abort_code: int
    abort_grpc_status: int
    abort_message: str
    fatal_message: str
    on_cancel: OnCancel
    headers_first: bool
    cancel_poll_ms: int
    def __init__(self, dispatch_delay_ms: _Optional[int] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., outcome_delay_ms: _Optional[int] = ..., reply_bytes: _Optional[int] = ..., echo: _Optional[bool] = ..., abort_code: _Optional[int] = ..., abort_grpc_status: _Optional[int] = ..., abort_message: _Optional[str] = ..., fatal_message: _Optional[str] = ..., on_cancel: _Optional[_Union[OnCancel, str]] = ..., headers_first: _Optional[bool] = ..., cancel_poll_ms: _Optional[int] = ...) -> None: ...

class CallRequest(_message.Message):
    __slots__ = ("call_id", "script", "payload", "cancel_key")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CANCEL_KEY_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    script: Script
    payload: bytes
    cancel_key: str
    def __init__(self, call_id: _Optional[str] = ..., script: _Optional[_Union[Script, _Mapping]] = ..., payload: _Optional[bytes] = ..., cancel_key: _Optional[str] = ...) -> None: ...

class CallReply(_message.Message):
    __slots__ = ("call_id", "payload", "cancel_seen")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CANCEL_SEEN_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    payload: bytes
    cancel_seen: bool
    def __init__(self, call_id: _Optional[str] = ..., payload: _Optional[bytes] = ..., cancel_seen: _Optional[bool] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("call_id", "cancel_key")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CANCEL_KEY_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    cancel_key: str
    def __init__(self, call_id: _Optional[str] = ..., cancel_key: _Optional[str] = ...) -> None: ...

class CancelReply(_message.Message):
    __slots__ = ("delivered", "state")
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    delivered: bool
    state: str
    def __init__(self, delivered: _Optional[bool] = ..., state: _Optional[str] = ...) -> None: ...

class PipeScript(_message.Message):
    __slots__ = ("dispatch_delay_ms", "outcome", "at", "at_count", "messages", "message_bytes", "interval_ms", "outcome_delay_ms", "abort_code", "abort_grpc_status", "abort_message", "fatal_message", "on_cancel", "cancel_poll_ms", "breach")
    DISPATCH_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    AT_COUNT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    ABORT_CODE_FIELD_NUMBER: _ClassVar[int]
    ABORT_GRPC_STATUS_FIELD_NUMBER: _ClassVar[int]
    ABORT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FATAL_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ON_CANCEL_FIELD_NUMBER: _ClassVar[int]
    CANCEL_POLL_MS_FIELD_NUMBER: _ClassVar[int]
    BREACH_FIELD_NUMBER: _ClassVar[int]
    dispatch_delay_ms: int
    outcome: Outcome
    at: PipePoint
    at_count: int
    messages: int
    message_bytes: int
    interval_ms: int
    outcome_delay_ms: int
    abort_code: int
    abort_grpc_status: int
    abort_message: str
    fatal_message: str
    on_cancel: OnCancel
    cancel_poll_ms: int
    breach: PipeBreach
    def __init__(self, dispatch_delay_ms: _Optional[int] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., at: _Optional[_Union[PipePoint, str]] = ..., at_count: _Optional[int] = ..., messages: _Optional[int] = ..., message_bytes: _Optional[int] = ..., interval_ms: _Optional[int] = ..., outcome_delay_ms: _Optional[int] = ..., abort_code: _Optional[int] = ..., abort_grpc_status: _Optional[int] = ..., abort_message: _Optional[str] = ..., fatal_message: _Optional[str] = ..., on_cancel: _Optional[_Union[OnCancel, str]] = ..., cancel_poll_ms: _Optional[int] = ..., breach: _Optional[_Union[PipeBreach, str]] = ...) -> None: ...

class PipeMessage(_message.Message):
    __slots__ = ("seq", "payload", "null_push")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    NULL_PUSH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    payload: bytes
    null_push: bool
    def __init__(self, seq: _Optional[int] = ..., payload: _Optional[bytes] = ..., null_push: _Optional[bool] = ...) -> None: ...

class PipeRequest(_message.Message):
    __slots__ = ("call_id", "script")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    script: PipeScript
    def __init__(self, call_id: _Optional[str] = ..., script: _Optional[_Union[PipeScript, _Mapping]] = ...) -> None: ...

class PipeReply(_message.Message):
    __slots__ = ("call_id", "received", "received_bytes", "cancel_seen")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CANCEL_SEEN_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    received: int
    received_bytes: int
    cancel_seen: bool
    def __init__(self, call_id: _Optional[str] = ..., received: _Optional[int] = ..., received_bytes: _Optional[int] = ..., cancel_seen: _Optional[bool] = ...) -> None: ...

class StateEntry(_message.Message):
    __slots__ = ("ts", "side", "call_id", "state", "prev", "event", "move", "code", "grpc_status", "detail", "cancel", "sent", "received", "dropped", "delay_ms", "method", "rule")
    TS_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PREV_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    MOVE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    GRPC_STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    ts: str
    side: str
    call_id: str
    state: str
    prev: str
    event: str
    move: str
    code: int
    grpc_status: str
    detail: str
    cancel: str
    sent: int
    received: int
    dropped: int
    delay_ms: float
    method: str
    rule: str
    def __init__(self, ts: _Optional[str] = ..., side: _Optional[str] = ..., call_id: _Optional[str] = ..., state: _Optional[str] = ..., prev: _Optional[str] = ..., event: _Optional[str] = ..., move: _Optional[str] = ..., code: _Optional[int] = ..., grpc_status: _Optional[str] = ..., detail: _Optional[str] = ..., cancel: _Optional[str] = ..., sent: _Optional[int] = ..., received: _Optional[int] = ..., dropped: _Optional[int] = ..., delay_ms: _Optional[float] = ..., method: _Optional[str] = ..., rule: _Optional[str] = ...) -> None: ...

class GetCallRequest(_message.Message):
    __slots__ = ("call_id",)
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    def __init__(self, call_id: _Optional[str] = ...) -> None: ...

class CallHistory(_message.Message):
    __slots__ = ("call_id", "entries", "ended", "deadline_ms", "omitted")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    OMITTED_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    entries: _containers.RepeatedCompositeFieldContainer[StateEntry]
    ended: bool
    deadline_ms: int
    omitted: int
    def __init__(self, call_id: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[StateEntry, _Mapping]]] = ..., ended: _Optional[bool] = ..., deadline_ms: _Optional[int] = ..., omitted: _Optional[int] = ...) -> None: ...

class ListCallsRequest(_message.Message):
    __slots__ = ("state", "code", "in_flight", "limit", "method", "rule")
    STATE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    state: str
    code: int
    in_flight: bool
    limit: int
    method: str
    rule: str
    def __init__(self, state: _Optional[str] = ..., code: _Optional[int] = ..., in_flight: _Optional[bool] = ..., limit: _Optional[int] = ..., method: _Optional[str] = ..., rule: _Optional[str] = ...) -> None: ...

class CallSummary(_message.Message):
    __slots__ = ("call_id", "state", "outcome", "code", "grpc_status", "started", "ended", "cancel_seen", "method", "rule")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    GRPC_STATUS_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    CANCEL_SEEN_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    state: str
    outcome: str
    code: int
    grpc_status: str
    started: str
    ended: str
    cancel_seen: bool
    method: str
    rule: str
    def __init__(self, call_id: _Optional[str] = ..., state: _Optional[str] = ..., outcome: _Optional[str] = ..., code: _Optional[int] = ..., grpc_status: _Optional[str] = ..., started: _Optional[str] = ..., ended: _Optional[str] = ..., cancel_seen: _Optional[bool] = ..., method: _Optional[str] = ..., rule: _Optional[str] = ...) -> None: ...

class ListCallsReply(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[CallSummary]
    def __init__(self, calls: _Optional[_Iterable[_Union[CallSummary, _Mapping]]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("call_id",)
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    def __init__(self, call_id: _Optional[str] = ...) -> None: ...

class StateEntries(_message.Message):
    __slots__ = ("entries", "dropped")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[StateEntry]
    dropped: int
    def __init__(self, entries: _Optional[_Iterable[_Union[StateEntry, _Mapping]]] = ..., dropped: _Optional[int] = ...) -> None: ...

class CountersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Counters(_message.Message):
    __slots__ = ("in_flight", "dispatched", "ended", "cancels_seen", "by_state", "by_code", "journal_calls", "watch_dropped")
    class ByStateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ByCodeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    DISPATCHED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    CANCELS_SEEN_FIELD_NUMBER: _ClassVar[int]
    BY_STATE_FIELD_NUMBER: _ClassVar[int]
    BY_CODE_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_CALLS_FIELD_NUMBER: _ClassVar[int]
    WATCH_DROPPED_FIELD_NUMBER: _ClassVar[int]
    in_flight: int
    dispatched: int
    ended: int
    cancels_seen: int
    by_state: _containers.ScalarMap[str, int]
    by_code: _containers.ScalarMap[int, int]
    journal_calls: int
    watch_dropped: int
    def __init__(self, in_flight: _Optional[int] = ..., dispatched: _Optional[int] = ..., ended: _Optional[int] = ..., cancels_seen: _Optional[int] = ..., by_state: _Optional[_Mapping[str, int]] = ..., by_code: _Optional[_Mapping[int, int]] = ..., journal_calls: _Optional[int] = ..., watch_dropped: _Optional[int] = ...) -> None: ...
