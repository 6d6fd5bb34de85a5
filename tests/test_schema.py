"""A user's schema from each source: .proto files, a descriptor set, a real server's reflection."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from callstate.lifecycle import PIPE_BOTH, PIPE_IN, PIPE_OUT, UNARY
from callstate.schema import (SchemaError, from_descriptor_set, from_protos, from_reflection, message_from_json,
                              message_to_dict)
from callstate.schema.sources import well_known_include
from tests.conftest import ROOT

PROTOS = ROOT / "tests" / "protos"
SHOP = PROTOS / "shop" / "v1" / "shop.proto"
SHAPES = {"shop.v1.Shop/Charge": UNARY, "shop.v1.Shop/Track": PIPE_OUT, "shop.v1.Shop/Upload": PIPE_IN,
          "shop.v1.Shop/Chat": PIPE_BOTH}


def test_a_proto_with_imports_and_well_known_types_compiles_at_start() -> None:
    schema = from_protos([SHOP], [PROTOS])
    assert {name: m.kind for name, m in schema.methods.items()} == SHAPES
    charge = schema.method("/shop.v1.Shop/Charge")
    assert schema.method("shop.v1.Shop.Charge") is charge   # grpcurl's spelling too
    request = message_from_json(charge.request, {
        "order_id": "o-1", "amount": {"currency": "EUR", "units": 12}, "card": {"number": "4242"},
        "tags": ["a", "b"], "labels": {"k": "v"}, "guest_email": "g@example.org",
        "requested_at": "2026-01-01T00:00:00Z"}, where="test")
    assert request.WhichOneof("payer") == "guest_email"
    assert message_to_dict(request)["amount"] == {"currency": "EUR", "units": "12"}
    assert request.requested_at.seconds == 1767225600


def test_a_descriptor_set_written_by_protoc_is_the_same_schema(tmp_path: Path) -> None:
    out = tmp_path / "shop.pb"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"-I{well_known_include()}",
                    "--include_imports", f"--descriptor_set_out={out}", str(SHOP)], check=True)
    assert {name: m.kind for name, m in from_descriptor_set(out).methods.items()} == SHAPES


def test_a_descriptor_set_without_its_imports_names_the_missing_file(tmp_path: Path) -> None:
    out = tmp_path / "shop.pb"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"-I{well_known_include()}",
                    f"--descriptor_set_out={out}", str(SHOP)], check=True)
    with pytest.raises(SchemaError, match=r"imports .*money.proto.*--include_imports"):
        from_descriptor_set(out)


def test_reflection_of_a_running_server_gives_its_services(shared_server) -> None:
    schema = from_reflection(shared_server.target)
    assert "callstate.v1.Emulator" in schema.services
    assert schema.method("callstate.v1.Emulator/Call").kind == UNARY


@pytest.mark.parametrize("make, message", [
    (lambda tmp, _: from_protos([tmp / "missing.proto"]), r"missing.proto: no such .proto file"),
    (lambda tmp, _: from_protos([SHOP], [tmp / "nowhere"]), r"--proto-path .*nowhere: no such directory"),
    (lambda tmp, _: from_descriptor_set(tmp / "x.pb"), r"x.pb: no such descriptor-set file"),
    # a refused connection fails at once: the deadline is only a bound a busy machine cannot reach
    (lambda tmp, refused: from_reflection(refused, timeout=20), r"reflection from 127.0.0.1:\d+: UNAVAILABLE"),
])
def test_a_source_that_cannot_be_read_is_one_line_naming_it(tmp_path: Path, refused_target: str, make,
                                                           message: str) -> None:
    with pytest.raises(SchemaError, match=message) as err:
        make(tmp_path, refused_target)
    assert "\n" not in str(err.value)


def test_a_proto_that_does_not_compile_names_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.proto"
    bad.write_text('syntax = "proto3";\nmessage A {\n  strin x = 1;\n}\n')
    with pytest.raises(SchemaError, match=r"bad.proto:3:3: \"strin\" is not defined"):
        from_protos([bad])


def test_a_descriptor_set_that_is_not_one_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pb"
    junk.write_bytes(b"\xff\xff\xff not protobuf")
    with pytest.raises(SchemaError, match="junk.pb: not a FileDescriptorSet"):
        from_descriptor_set(junk)


def test_json_that_does_not_fit_the_message_names_where_and_the_field() -> None:
    charge = from_protos([SHOP], [PROTOS]).method("shop.v1.Shop/Charge")
    with pytest.raises(SchemaError, match=r"rule 3: shop.v1.ChargeRequest: .*no field named \"currenc\"") as err:
        message_from_json(charge.request, {"amount": {"currenc": "EUR"}}, where="rule 3")
    assert "\n" not in str(err.value)
    for text, got in (("[1]", "an array"), ('"o-1"', "a string"), ("7", "a number")):   # protobuf said "Failed to parse 1 field"
        with pytest.raises(SchemaError) as not_object:
            message_from_json(charge.request, text, where="--data")
        assert str(not_object.value) == f"--data: shop.v1.ChargeRequest: expected a JSON object of its fields, got {got}"
    from google.protobuf.timestamp_pb2 import Timestamp   # a well-known type's JSON need not be an object
    assert message_from_json(Timestamp, '"1970-01-01T00:00:07Z"', where="--data").seconds == 7
    with pytest.raises(SchemaError, match="Timestamp: .*") as not_a_time:
        message_from_json(Timestamp, "[1]", where="--data")
    assert "JSON object" not in str(not_a_time.value)


def test_an_unknown_method_lists_what_the_schema_has() -> None:
    with pytest.raises(SchemaError, match=r"unknown method 'shop.v1.Shop/Refund'; the schema has: shop.v1.Shop/Charge"):
        from_protos([SHOP], [PROTOS]).method("shop.v1.Shop/Refund")


GREET = 'syntax = "proto3";\npackage greet.v1;\nservice Greeter { rpc Hello(Hi) returns (Hi); }\nmessage Hi { string name = 1; }\n'


def test_relative_and_absolute_paths_compile_however_they_are_mixed(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """protoc matches a file to an include path by spelling: a lone .proto in a subfolder (the
    default include is its folder) and a relative file with an absolute -I, or the reverse,
    were refused with protoc's "File does not reside within any path"."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "greet.proto").write_text(GREET)
    monkeypatch.chdir(tmp_path)
    assert list(from_protos(["sub/greet.proto"]).methods) == ["greet.v1.Greeter/Hello"]
    for protos, paths in (([str(SHOP.relative_to(ROOT))], [PROTOS]), ([SHOP], [str(PROTOS.relative_to(ROOT))])):
        monkeypatch.chdir(ROOT)
        assert set(from_protos(protos, paths).methods) == set(SHAPES)


def test_a_file_outside_the_proto_path_or_a_missing_import_says_what_to_give(tmp_path: Path) -> None:
    (tmp_path / "greet.proto").write_text(GREET)
    with pytest.raises(SchemaError) as outside:
        from_protos([tmp_path / "greet.proto"], [PROTOS])
    assert str(outside.value) == (f"{tmp_path / 'greet.proto'}: not under any --proto-path ({PROTOS}): protoc names "
                                  "each file by its path below one of them")
    with pytest.raises(SchemaError) as no_import:   # shop.proto imports "shop/v1/money.proto"
        from_protos([SHOP])
    assert str(no_import.value).startswith("shop/v1/money.proto: File not found. (imports are looked up under ")
    assert "--proto-path" in str(no_import.value) and "\n" not in str(no_import.value)


def test_reflection_of_a_server_that_serves_only_v1_gives_its_services() -> None:
    """grpc-java's ProtoReflectionServiceV1, for one, serves grpc.reflection.v1 alone: it was
    refused as UNIMPLEMENTED (v1alpha was the only one asked)."""
    from concurrent import futures

    import grpc
    from grpc_reflection.v1alpha import reflection, reflection_pb2 as rpb

    shop = from_protos([SHOP], [PROTOS])
    servicer = reflection.ReflectionServicer(("shop.v1.Shop",), pool=shop.pool)
    handler = grpc.stream_stream_rpc_method_handler(servicer.ServerReflectionInfo,
                                                    rpb.ServerReflectionRequest.FromString,
                                                    rpb.ServerReflectionResponse.SerializeToString)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("grpc.reflection.v1.ServerReflection",
                                                                          {"ServerReflectionInfo": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        assert {name: m.kind for name, m in from_reflection(f"127.0.0.1:{port}").methods.items()} == SHAPES
    finally:
        server.stop(None)
    bare = grpc.server(futures.ThreadPoolExecutor(max_workers=1))   # no reflection at all: said so, in one line
    port = bare.add_insecure_port("127.0.0.1:0")
    bare.start()
    try:
        with pytest.raises(SchemaError) as none:
            from_reflection(f"127.0.0.1:{port}")
        assert str(none.value) == (f"reflection from 127.0.0.1:{port}: UNIMPLEMENTED: the server serves no "
                                   "reflection (neither grpc.reflection.v1alpha nor v1)")
    finally:
        bare.stop(None)
