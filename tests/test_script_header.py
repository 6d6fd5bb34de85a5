"""The script header codec: what the client encodes the server decodes, and bad headers name the field."""

from __future__ import annotations

import pytest

from callstate.lifecycle import PIPE_OUT, UNARY
from callstate.script import ScriptError
from callstate.script_header import SCRIPT_HEADER, SCRIPT_HEADER_BIN, decode, encode
from callstate.v1 import callstate_pb2 as pb


def test_cli_names_and_the_proto_json_form_decode_alike() -> None:
    cli = decode({SCRIPT_HEADER: '{"outcome": "abort", "abort_code": 4321, "on_cancel": "ignore"}'}, UNARY)
    proto = decode({SCRIPT_HEADER: '{"outcome": "OUTCOME_ABORT", "abortCode": "4321", "onCancel": 3}'}, UNARY)
    assert cli == proto == pb.Script(outcome=pb.OUTCOME_ABORT, abort_code=4321, on_cancel=pb.ON_CANCEL_IGNORE)


def test_a_pipe_script_with_its_point_round_trips_through_the_header() -> None:
    script = pb.PipeScript(outcome=pb.OUTCOME_ABORT, at=pb.PIPE_POINT_AFTER_OUT, at_count=2, abort_code=7,
                           messages=5)
    header = encode(script)
    assert '"at":"after-out"' in header and '"outcome":"abort"' in header
    assert decode({SCRIPT_HEADER: header}, PIPE_OUT) == script


def test_the_binary_header_carries_the_serialized_message() -> None:
    script = pb.Script(outcome=pb.OUTCOME_FATAL, fatal_message="boom")
    assert decode({SCRIPT_HEADER_BIN: script.SerializeToString()}, UNARY) == script


def test_no_header_is_no_script() -> None:
    assert decode({"x-other": "1"}, UNARY) is None


@pytest.mark.parametrize("metadata, field", [
    ({SCRIPT_HEADER: "{not json"}, SCRIPT_HEADER),
    ({SCRIPT_HEADER: "[1, 2]"}, SCRIPT_HEADER),
    ({SCRIPT_HEADER: '{"outcome": "explode"}'}, "outcome"),
    ({SCRIPT_HEADER: '{"abort_cod": 5}'}, "abort_cod"),
    ({SCRIPT_HEADER: '{"outcome_delay_ms": "soon"}'}, "outcome_delay_ms"),
    ({SCRIPT_HEADER: "{}", SCRIPT_HEADER_BIN: b""}, SCRIPT_HEADER),
    ({SCRIPT_HEADER_BIN: b"\xff\xff\xff"}, SCRIPT_HEADER_BIN),
    ({SCRIPT_HEADER: '{"fatal_message": "' + "x" * 9000 + '"}'}, SCRIPT_HEADER),
])
def test_a_bad_header_names_its_field(metadata: dict, field: str) -> None:
    with pytest.raises(ScriptError) as err:
        decode(metadata, UNARY)
    assert err.value.field == field, err.value
