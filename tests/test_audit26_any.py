"""Audit of the any-service feature as a test engineer with their own protos meets it: several
files with imports, an `Any` of the user's own types, proto2's required fields, methods whose
response is a well-known type, and protos that cannot sit beside the server's own files.

Each test here failed before its fix (the docstring says which)."""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from callstate.client import AsyncClient, Client, PipeScript, Script
from callstate.rules import RulesError, parse_rules
from callstate.schema import Schema, SchemaError, from_protos
from tests.conftest import ROOT, ServerProcess, cli, final, read_entries, start_server, states
from tests.documentation import blocks, section
from tests.test_third_party_and_crash import run_grpcurl

TYPES = """\
syntax = "proto3";
package acme.common.v1;
import "google/protobuf/timestamp.proto";
enum Currency { CURRENCY_UNSPECIFIED = 0; EUR = 1; USD = 2; }
message Money { Currency currency = 1; int64 units = 2; }
message Audit { google.protobuf.Timestamp at = 1; map<string, string> labels = 2; }
"""

ORDERS = """\
syntax = "proto3";
package acme.orders.v2;
import "acme/common/v1/types.proto";
import "google/protobuf/any.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/timestamp.proto";
message Order {
  message Line { string sku = 1; acme.common.v1.Money price = 2; }
  string id = 1;
  repeated Line lines = 2;
  oneof payer { string card = 3; string iban = 4; }
  acme.common.v1.Audit audit = 5;
  google.protobuf.Any detail = 6;
}
message CreateRequest { Order order = 1; }
message GetRequest { string id = 1; }
service Orders {
  rpc Create(CreateRequest) returns (Order);
  rpc Get(GetRequest) returns (Order);
  rpc Wrap(google.protobuf.Any) returns (google.protobuf.Any);
  rpc Now(google.protobuf.Empty) returns (google.protobuf.Timestamp);
  rpc List(GetRequest) returns (stream Order);
}
"""

LEGACY = """\
syntax = "proto2";
package acme.legacy;
message Req { required string key = 1; optional int32 n = 2; extensions 100 to 199; }
extend Req { optional string tag = 100; }
message Inner { required int32 code = 1; }
message Rep { required string value = 1; required Inner inner = 2; optional string note = 3; }
service Old {
  rpc Lookup(Req) returns (Rep);
  rpc Watch(Req) returns (stream Rep);
  rpc Feed(stream Req) returns (Rep);
}
"""

MONEY = "type.googleapis.com/acme.common.v1.Money"
RULES = f"""\
rules:
  - name: money-detail
    method: acme.orders.v2.Orders/Create
    match: {{request: {{order: {{detail: {{"@type": "{MONEY}", units: "5"}}}}}}}}
    script: {{outcome: abort, abort_code: 5002}}
  - name: by-id
    method: acme.orders.v2.Orders/Create
    match: {{request: {{order: {{id: "x"}}}}}}
    script: {{outcome: abort, abort_code: 5001}}
  - name: get
    method: acme.orders.v2.Orders/Get
    script: {{outcome: complete}}
    reply: {{id: g1, detail: {{"@type": "{MONEY}", currency: EUR, units: "9"}}}}
  - name: now
    method: acme.orders.v2.Orders/Now
    script: {{outcome: complete}}
    reply: "2026-02-03T04:05:06Z"
  - name: wrap
    method: acme.orders.v2.Orders/Wrap
    script: {{outcome: complete}}
    reply: {{"@type": "{MONEY}", units: "9"}}
  - name: legacy
    method: acme.legacy.Old/Lookup
    match: {{request: {{n: 3}}}}
    script: {{outcome: complete}}
    reply: {{value: v, inner: {{code: 7}}}}
"""


def write_protos(root: Path) -> Path:
    """A proto tree as users keep one: packages in folders, imported from the tree's root."""
    for rel, text in (("acme/common/v1/types.proto", TYPES), ("acme/orders/v2/orders.proto", ORDERS),
                      ("acme/legacy/old.proto", LEGACY)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture(scope="module")
def protos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_protos(tmp_path_factory.mktemp("protos"))


@pytest.fixture(scope="module")
def schema(protos: Path) -> Schema:
    return from_protos([protos / "acme/orders/v2/orders.proto", protos / "acme/legacy/old.proto"], [protos])


@pytest.fixture(scope="module")
def acme(protos: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("acme")
    (tmp / "rules.yaml").write_text(RULES)
    srv = start_server(tmp, "--proto", str(protos / "acme/orders/v2/orders.proto"), "--proto",
                       str(protos / "acme/legacy/old.proto"), "--proto-path", str(protos), "--rules",
                       str(tmp / "rules.yaml"), "--mix", "complete=100", "--max-hold", "20")
    yield srv
    srv.stop()


def grpcurl_call(srv: ServerProcess, method: str, data: object, call_id: str,
                 *headers: str) -> subprocess.CompletedProcess[str]:
    args = ["-H", f"callstate-call-id: {call_id}"]
    for header in headers:
        args += ["-H", header]
    return run_grpcurl(*args, "-d", json.dumps(data), srv.target, method)


# -- an Any of the user's own types ------------------------------------------------------------

def test_a_rule_matches_a_request_whose_any_holds_the_users_own_type(schema: Schema) -> None:
    """Before: the rules file did not load ("Can not find message descriptor by type_url"):
    the JSON forms were made in protobuf's default pool, which holds none of the user's types."""
    rules = parse_rules(RULES, schema)
    create = schema.method("acme.orders.v2.Orders/Create")
    request = create.request()
    request.order.detail.Pack(schema.message_class("acme.common.v1.Money")(units=5))
    assert rules.first_match(create.name, {}, request).label == "money-detail"


def test_an_any_pattern_matches_field_by_field_as_a_sub_message_does(schema: Schema) -> None:
    """Before: the pattern `{"@type": Money, units: "5"}` was the whole packed Money (currency
    UNSPECIFIED included), so a request whose Money had a currency matched nothing, silently."""
    rules = parse_rules(RULES, schema)
    create, money = schema.method("acme.orders.v2.Orders/Create"), schema.message_class("acme.common.v1.Money")
    request = create.request()
    request.order.detail.Pack(money(units=5, currency=1))
    assert rules.first_match(create.name, {}, request).label == "money-detail"
    request.order.detail.Pack(money(units=6, currency=1))
    assert rules.first_match(create.name, {}, request) is None
    request.order.detail.Pack(schema.message_class("acme.common.v1.Audit")())   # another type: no match
    assert rules.first_match(create.name, {}, request) is None
    empty = parse_rules("rules:\n  - method: acme.orders.v2.Orders/Create\n"
                        "    match: {request: {order: {detail: {}}}}\n", schema)
    request = create.request()
    request.order.detail.SetInParent()
    assert empty.first_match(create.name, {}, request) is not None


def test_a_method_that_takes_a_struct_or_an_any_can_be_matched(tmp_path: Path) -> None:
    """Before: `match.request` on a method whose request is itself a Struct or an Any stopped
    `callstate serve` with an AssertionError traceback (its keys are no fields of the message)."""
    protos = write_protos(tmp_path)
    proto = protos / "acme/dyn/v1/dyn.proto"
    proto.parent.mkdir(parents=True, exist_ok=True)
    proto.write_text('syntax = "proto3";\npackage acme.dyn.v1;\nimport "google/protobuf/any.proto";\n'
                     'import "google/protobuf/struct.proto";\nimport "acme/common/v1/types.proto";\n'
                     "service Dyn {\n  rpc Put(google.protobuf.Struct) returns (google.protobuf.Struct);\n"
                     "  rpc Wrap(google.protobuf.Any) returns (google.protobuf.Any);\n}\n")
    schema = from_protos([proto], [protos])
    rules = parse_rules(f"""\
rules:
  - {{name: a-is-1, method: acme.dyn.v1.Dyn/Put, match: {{request: {{a: 1}}}}}}
  - {{name: five, method: acme.dyn.v1.Dyn/Wrap, match: {{request: {{"@type": "{MONEY}", units: "5"}}}}}}
""", schema)
    put, wrap = schema.method("acme.dyn.v1.Dyn/Put"), schema.method("acme.dyn.v1.Dyn/Wrap")
    struct = put.request()
    struct.update({"a": 1, "b": "x"})
    assert rules.first_match(put.name, {}, struct).label == "a-is-1"
    struct.update({"a": 2})
    assert rules.first_match(put.name, {}, struct) is None
    packed = wrap.request()
    packed.Pack(schema.message_class("acme.common.v1.Money")(units=5, currency=2))
    assert rules.first_match(wrap.name, {}, packed).label == "five"


def test_an_any_whose_type_is_not_text_is_one_line_in_rules_and_the_library(schema: Schema,
                                                                             acme: ServerProcess) -> None:
    """Before: `"@type": 5` in a rule stopped `callstate serve` with an AttributeError traceback,
    and so did a dict request of the library (the JSON text of --data said it in one line)."""
    with pytest.raises(RulesError, match=r"rules\[0\] \(acme.orders.v2.Orders/Wrap\).match.request: "
                                         r"google.protobuf.Any: Failed to parse JSON: AttributeError"):
        parse_rules('rules:\n  - {method: acme.orders.v2.Orders/Wrap, match: {request: {"@type": 5}}}\n', schema)
    with Client(acme.target, schema=schema) as client:
        with pytest.raises(SchemaError, match=r"^acme.orders.v2.Orders/Wrap: google.protobuf.Any: Failed to parse"):
            client.start(method="acme.orders.v2.Orders/Wrap", request={"@type": 5})


def test_a_request_with_an_any_reaches_a_rule_on_its_other_fields(schema: Schema) -> None:
    """Before: the request's JSON form raised TypeError inside the handler: grpcurl got UNKNOWN
    with a Python exception's text, and the call was never logged."""
    rules = parse_rules(RULES, schema)
    create = schema.method("acme.orders.v2.Orders/Create")
    request = create.request()
    request.order.id = "x"
    request.order.detail.Pack(schema.message_class("acme.common.v1.Audit")())
    assert rules.first_match(create.name, {}, request).label == "by-id"


def test_an_any_of_a_type_the_schema_lacks_matches_no_request_pattern_and_raises_nothing(
        schema: Schema) -> None:
    rules = parse_rules(RULES + "  - name: tenant\n    method: acme.orders.v2.Orders/Create\n"
                                "    match: {metadata: {x-tenant: acme}}\n    script: {outcome: complete}\n", schema)
    create = schema.method("acme.orders.v2.Orders/Create")
    request = create.request()
    request.order.id = "x"
    request.order.detail.type_url, request.order.detail.value = "type.googleapis.com/nowhere.X", b"\x08\x01"
    assert rules.first_match(create.name, {}, request) is None
    assert rules.first_match(create.name, {"x-tenant": "acme"}, request).label == "tenant"


def test_grpcurl_sends_an_any_of_the_users_type_and_the_rule_answers(acme: ServerProcess) -> None:
    """The whole way: grpcurl (by reflection) packs the Any, the stand-in's rule aborts the call
    with its code, and the state log names the rule."""
    data = {"order": {"id": "x", "detail": {"@type": MONEY, "units": "5"}}}
    out = grpcurl_call(acme, "acme.orders.v2.Orders/Create", data, "audit26-any-1")
    assert out.returncode != 0 and "5002" in out.stdout + out.stderr, out.stdout + out.stderr
    entries = acme.wait_entries("audit26-any-1")
    assert final(entries)["code"] == 5002 and entries[0]["rule"] == "money-detail"

    # another Any under a rule on the order's id: the id rule answers (before: UNKNOWN, not logged)
    data = {"order": {"id": "x", "detail": {"@type": "type.googleapis.com/acme.common.v1.Audit"}}}
    out = grpcurl_call(acme, "acme.orders.v2.Orders/Create", data, "audit26-any-2")
    assert "5001" in out.stdout + out.stderr, out.stdout + out.stderr
    assert final(acme.wait_entries("audit26-any-2"))["code"] == 5001


def test_call_sends_and_prints_an_any_of_the_users_type(acme: ServerProcess, tmp_path: Path) -> None:
    """Before: `call --data` with such an Any exited 2 ("Can not find message descriptor"), and a
    reply holding one could not be printed."""
    log = tmp_path / "client.jsonl"
    out = cli("call", "--target", acme.target, "--method", "acme.orders.v2.Orders/Create", "--no-script",
              "--data", json.dumps({"order": {"detail": {"@type": MONEY, "units": "5"}}}), "--log-file", str(log))
    assert out.returncode == 1 and "final: 5002" in out.stderr, out.stderr
    out = cli("call", "--target", acme.target, "--method", "acme.orders.v2.Orders/Get", "--no-script")
    assert out.returncode == 0, out.stderr
    assert f'"detail":{{"@type":"{MONEY}","currency":"EUR","units":"9"}}' in out.stderr


def test_a_reply_whose_any_the_callers_schema_lacks_is_printed_not_a_traceback(acme: ServerProcess,
                                                                                tmp_path: Path) -> None:
    """A caller whose .proto declares Wrap without the Money type: before, the completed call
    ended in a traceback (exit 1) after its End line."""
    proto = tmp_path / "acme/orders/v2/orders.proto"
    proto.parent.mkdir(parents=True)
    proto.write_text('syntax = "proto3";\npackage acme.orders.v2;\nimport "google/protobuf/any.proto";\n'
                     "service Orders { rpc Wrap(google.protobuf.Any) returns (google.protobuf.Any); }\n")
    out = cli("call", "--target", acme.target, "--method", "acme.orders.v2.Orders/Wrap", "--proto", str(proto),
              "--no-script", "--data", json.dumps({"@type": "type.googleapis.com/google.protobuf.Empty"}))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "final: 0 RPC_S_OK: reply (text form: an Any of a type the schema lacks) "
        f'type_url: "{MONEY}" value: "\\020\\t"')


# -- proto2's required fields ------------------------------------------------------------------

def test_the_stand_in_completes_a_proto2_method_whose_response_has_required_fields(acme: ServerProcess) -> None:
    """Before: the default reply (the empty message) could not be serialized: the server logged
    Comp and End 0 while grpcurl got UNKNOWN "EncodeError"; a server stream ended 1726."""
    out = grpcurl_call(acme, "acme.legacy.Old/Lookup", {"key": "k"}, "audit26-p2-unary",
                       'callstate-script: {"outcome": "complete"}')
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout) == {"value": "", "inner": {"code": 0}}
    assert final(acme.wait_entries("audit26-p2-unary"))["code"] == 0

    out = grpcurl_call(acme, "acme.legacy.Old/Watch", {"key": "k"}, "audit26-p2-stream",
                       'callstate-script: {"outcome": "complete", "messages": 2}')
    assert out.returncode == 0, out.stdout + out.stderr
    assert final(acme.wait_entries("audit26-p2-stream"))["code"] == 0

    out = grpcurl_call(acme, "acme.legacy.Old/Lookup", {"key": "k", "n": 3}, "audit26-p2-rule")
    assert out.returncode == 0 and json.loads(out.stdout) == {"value": "v", "inner": {"code": 7}}, out.stdout


def test_a_request_missing_a_required_field_is_refused_before_it_is_sent(acme: ServerProcess,
                                                                         schema: Schema, tmp_path: Path) -> None:
    """Before: grpc.aio sent an EMPTY request in its place and said nothing (the call completed
    0 with the user's fields lost); the sync client raised grpc's raw "Exception serializing"."""
    lookup = schema.method("acme.legacy.Old/Lookup")
    log, sync_log = tmp_path / "aio.jsonl", tmp_path / "sync.jsonl"

    async def aio() -> None:
        async with AsyncClient(acme.target, schema=schema, log=str(log)) as client:
            with pytest.raises(SchemaError, match=r"Old/Lookup: acme.legacy.Req: required field not set: key"):
                client.start(Script("complete"), method=lookup, request={"n": 3})
            with pytest.raises(SchemaError, match="required field not set: key"):
                client.start(Script("complete"), method=lookup, request=lookup.request(n=3))
            with pytest.raises(SchemaError, match="required field not set: key"):
                client.start(Script("complete"), method=lookup)

    asyncio.run(aio())
    assert read_entries(log) == []
    with Client(acme.target, schema=schema, log=str(sync_log)) as client:
        with pytest.raises(SchemaError, match="required field not set: key"):
            client.start(Script("complete"), method=lookup, request='{"n": 3}')
        # a message that has it goes out and completes
        assert client.start(Script("complete"), method=lookup, request={"key": "k"}).result(10).inner.code == 0
        # a pipe's push is refused as the request is, and the pipe goes on
        pipe = client.pipe(PipeScript("complete"), method="acme.legacy.Old/Feed").start()
        with pytest.raises(SchemaError, match=r"Old/Feed push 1: acme.legacy.Req: required field not set: key"):
            pipe.push(lookup.request(n=3))
        with pytest.raises(SchemaError, match="required field not set: key"):
            pipe.push({"n": 3})
        with pytest.raises(SchemaError, match="required field not set: key"):
            pipe.push()   # the pipe's request: none given, so the empty one
        with pytest.raises(ValueError, match=r"push: a message of 2000004 bytes is over the server's limit"):
            pipe.push({"key": "k" * 2_000_000})   # before: measured as len(dict), 1, and sent
        pipe.push({"key": "k"})
        pipe.close_push()
        assert pipe.result(10).inner.code == 0 and pipe.sent == 1
    assert len({e["call_id"] for e in read_entries(sync_log)}) == 2

    out = cli("call", "--target", acme.target, "--method", "acme.legacy.Old/Lookup", "--data", '{"n": 3}',
              "--log-file", str(tmp_path / "cli.jsonl"))
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == "callstate call: --data: acme.legacy.Req: required field not set: key"
    assert not (tmp_path / "cli.jsonl").exists() or not (tmp_path / "cli.jsonl").read_text()


def test_rules_need_required_fields_in_a_reply_not_in_a_pattern(schema: Schema) -> None:
    rules = parse_rules("rules:\n  - method: acme.legacy.Old/Lookup\n    match: {request: {n: 1}}\n"
                        "    reply: {value: v, inner: {code: 1}}\n", schema)
    assert rules.count == 1
    with pytest.raises(RulesError, match=r"rules\[0\] \(acme.legacy.Old/Lookup\).reply: acme.legacy.Rep: "
                                         r"required field not set: inner.code"):
        parse_rules("rules:\n  - method: acme.legacy.Old/Lookup\n    reply: {value: v, inner: {}}\n", schema)


def test_a_pattern_may_name_a_proto2_extension(schema: Schema) -> None:
    """Before: a key "[acme.legacy.tag]" (the JSON form's name of an extension) parsed, then
    stopped `callstate serve` with an AssertionError traceback."""
    rules = parse_rules('rules:\n  - {name: tagged, method: acme.legacy.Old/Lookup, '
                        'match: {request: {"[acme.legacy.tag]": t}}}\n', schema)
    lookup = schema.method("acme.legacy.Old/Lookup")
    request = lookup.request(key="k")
    assert rules.first_match(lookup.name, {}, request) is None
    request.Extensions[schema.pool.FindExtensionByName("acme.legacy.tag")] = "t"
    assert rules.first_match(lookup.name, {}, request).label == "tagged"


# -- a response of a well-known type whose JSON is not an object -------------------------------

def test_a_rule_replies_with_a_timestamp(acme: ServerProcess, schema: Schema) -> None:
    """Before: `reply: "2026-..."` for a method returning google.protobuf.Timestamp was refused
    ("a mapping"), so such a method could only ever answer 1970-01-01."""
    out = run_grpcurl(acme.target, "acme.orders.v2.Orders/Now")
    assert out.returncode == 0 and json.loads(out.stdout) == "2026-02-03T04:05:06Z", out.stdout + out.stderr
    with pytest.raises(RulesError, match=r"\(acme.orders.v2.Orders/Now\).reply: date is not a JSON value: quote it"):
        parse_rules("rules:\n  - method: acme.orders.v2.Orders/Now\n    reply: 2026-02-03\n", schema)
    with pytest.raises(RulesError, match=r"\(acme.orders.v2.Orders/Get\).reply: a mapping"):
        parse_rules("rules:\n  - method: acme.orders.v2.Orders/Get\n    reply: 5\n", schema)


# -- protos that cannot be served ---------------------------------------------------------------

def test_a_missing_import_names_the_line_that_imports_it(protos: Path) -> None:
    """Before: only "acme/common/v1/types.proto: File not found." and where imports are looked up;
    in a tree of many files, which one imports it was protoc's second line, dropped."""
    out = cli("serve", "--port", "0", "--no-state-log", "--proto", str(protos / "acme/orders/v2/orders.proto"))
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"callstate serve: acme/common/v1/types.proto: File not found. (imports are looked up under "
        f"{protos / 'acme/orders/v2'}: give the folder your import lines are written from with --proto-path; "
        f"imported at {protos / 'acme/orders/v2/orders.proto'}:3:1)")


def test_a_folder_given_as_a_proto_is_named_a_folder(protos: Path) -> None:
    """Before: "protos: no such .proto file", of a folder that is there."""
    out = cli("serve", "--port", "0", "--no-state-log", "--proto", str(protos))
    assert out.returncode == 2
    assert out.stderr.strip() == (f"callstate serve: {protos}: a folder, not a .proto file: give each file to serve "
                                  "(their imports are looked up under --proto-path)")


def test_two_protos_of_one_name_in_two_folders_say_to_give_the_proto_path(tmp_path: Path) -> None:
    """v1/api.proto and v2/api.proto with no --proto-path: before, protoc's "Input is shadowed in
    the --proto_path ... reorder the --proto_path", of a flag the user never gave (nor can spell so)."""
    for version in ("v1", "v2"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "api.proto").write_text(
            f'syntax = "proto3";\npackage api.{version};\nmessage Q {{ string a = 1; }}\n'
            "service A { rpc Do(Q) returns (Q); }\n")
    out = cli("serve", "--port", "0", "--no-state-log", "--proto", "v1/api.proto", "--proto", "v2/api.proto",
              cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "callstate serve: v1/api.proto and v2/api.proto: both are named api.proto below their own folders (the "
        "default --proto-path): give --proto-path the folder your import lines are written from")
    schema = from_protos([tmp_path / "v1/api.proto", tmp_path / "v2/api.proto"], [tmp_path])
    assert sorted(schema.methods) == ["api.v1.A/Do", "api.v2.A/Do"]


# -- protos that cannot sit beside the server's own --------------------------------------------

def test_a_file_named_as_the_servers_own_is_refused_at_start(tmp_path: Path) -> None:
    """Before: the stand-in served it, `grpcurl list` listed its service, and grpcurl could
    neither describe nor call it (the reflection pool kept the server's file of that name)."""
    proto = tmp_path / "callstate/v1/callstate.proto"
    proto.parent.mkdir(parents=True)
    proto.write_text('syntax = "proto3";\npackage mine.v1;\nmessage Z { string a = 1; }\n'
                     "service Thing { rpc Do(Z) returns (Z); }\n")
    out = cli("serve", "--port", "0", "--no-state-log", "--proto", str(proto), "--proto-path", str(tmp_path))
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == (
        "callstate serve: callstate/v1/callstate.proto (package mine.v1): the server's own file of this name "
        "(package callstate.v1) is served beside it: give yours another path below --proto-path")


def test_a_schema_read_from_another_callstate_server_still_serves(acme: ServerProcess) -> None:
    """Its callstate/v1/callstate.proto is the server's own (same package): taken once, no error."""
    from callstate.schema import from_reflection
    from callstate.server.reflection import server_pool

    pool = server_pool(from_reflection(acme.target))
    assert pool.FindServiceByName("acme.orders.v2.Orders").methods_by_name["Create"]


def test_a_schema_whose_services_are_all_the_servers_own_names_them(tmp_path: Path) -> None:
    """Before: "the schema has no service to stand in for", of a schema with two services."""
    proto = tmp_path / "emu.proto"
    proto.write_text('syntax = "proto3";\npackage callstate.v1;\nmessage Y { string a = 1; }\n'
                     "service Emulator { rpc Call(Y) returns (Y); }\nservice Mine { rpc Do(Y) returns (Y); }\n")
    out = cli("serve", "--port", "0", "--no-state-log", "--proto", str(proto))
    assert out.returncode == 2, out.stderr
    assert "callstate.v1.Emulator, callstate.v1.Mine are among them" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


# -- the page's own example --------------------------------------------------------------------

def test_the_three_commands_of_docs_any_service_work_as_shown(tmp_path: Path) -> None:
    """Before: the page served `protos/shop/v1/shop.proto`, which is nowhere in the repository
    ("no such .proto file"). The commands run as written, the port and grpcurl's deadline aside."""
    lines = blocks(section("From your .proto to a cancelled call in three commands"), "sh")[0]
    lines = lines.replace("\\\n", " ").splitlines()
    lines = [line for line in lines if not line.startswith("callstate health")]   # start_server waits
    serve = shlex.split(lines[0].removesuffix("&"))
    assert serve[:2] == ["callstate", "serve"] and serve[-2] == "--log-file"
    args = [str(ROOT / a) if a.startswith("tests/") else a for a in serve[2:-2]]
    srv = start_server(tmp_path, *args)
    try:
        for line in lines[1:]:
            words = [w.replace("localhost:50051", srv.target) for w in shlex.split(line)]
            if "-max-time" in words:   # 1 s covers grpcurl's reflection too: on a busy machine, 5 s
                words[words.index("-max-time") + 1] = "5"
            assert words[:2] == ["grpcurl", "-plaintext"]
            out = run_grpcurl(*words[2:])
            if "list" in words:
                assert out.returncode == 0 and "shop.v1.Shop.Charge" in out.stdout, out.stdout + out.stderr
            else:
                assert "DeadlineExceeded" in out.stdout + out.stderr   # grpcurl's deadline cancels the held call
        entries = []
        deadline = time.monotonic() + 20
        while not any(e["state"] == "End" for e in entries) and time.monotonic() < deadline:
            entries = srv.entries()
            time.sleep(0.05)
        assert states(entries) == ["D", "A", "End"] and final(entries)["code"] == 1818
        assert {e["method"] for e in entries} == {"shop.v1.Shop/Charge"}
        assert any(e.get("cancel") == "abortive" for e in entries)
    finally:
        srv.stop()


def test_a_schema_with_the_any_type_under_a_vendored_file_name_still_loads(tmp_path: Path) -> None:
    """The pool's well-known types (what an Any may carry) step aside for a schema that defines
    them under a file name of its own (`third_party/google/protobuf/any.proto`)."""
    vendored = tmp_path / "third_party/google/protobuf/any.proto"
    vendored.parent.mkdir(parents=True)
    vendored.write_text('syntax = "proto3";\npackage google.protobuf;\n'
                        "message Any { string type_url = 1; bytes value = 2; }\n")
    (tmp_path / "s.proto").write_text('syntax = "proto3";\npackage t;\n'
                                      'import "third_party/google/protobuf/any.proto";\n'
                                      "service S { rpc Do(google.protobuf.Any) returns (google.protobuf.Any); }\n")
    schema = from_protos([tmp_path / "s.proto"], [tmp_path])
    assert sorted(schema.methods) == ["t.S/Do"]


# -- grpc/health/v1/health.proto, as Go and Java servers name it ---------------------------------

HEALTH = """\
syntax = "proto3";
package grpc.health.v1;
option go_package = "google.golang.org/grpc/health/grpc_health_v1";
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health {
  rpc Check(HealthCheckRequest) returns (HealthCheckResponse);
  rpc Watch(HealthCheckRequest) returns (stream HealthCheckResponse);
}
"""


def health_tree(root: Path) -> Path:
    """An app whose service imports the standard health proto, vendored where grpc-proto keeps it."""
    (root / "grpc/health/v1").mkdir(parents=True)
    (root / "grpc/health/v1/health.proto").write_text(HEALTH)
    (root / "app").mkdir()
    (root / "app/app.proto").write_text(
        'syntax = "proto3";\npackage app.v1;\nimport "grpc/health/v1/health.proto";\n'
        "service App { rpc Probe(grpc.health.v1.HealthCheckRequest) returns (grpc.health.v1.HealthCheckResponse); }\n")
    return root


def test_a_vendored_health_proto_gives_way_to_the_servers_own(tmp_path: Path) -> None:
    """Before: `callstate serve` refused the schema ("cannot be served beside the server's own
    services ... duplicate symbol 'grpc.health.v1.HealthCheckRequest'"): grpcio names the file
    grpc_health/v1/health.proto, the user's copy (and Go's, Java's) grpc/health/v1/health.proto."""
    root = health_tree(tmp_path)
    srv = start_server(tmp_path, "--proto", str(root / "app/app.proto"), "--proto",
                       str(root / "grpc/health/v1/health.proto"), "--proto-path", str(root), "--mix", "complete=100")
    try:
        described = run_grpcurl(srv.target, "describe", "app.v1.App")
        assert "rpc Probe ( .grpc.health.v1.HealthCheckRequest )" in described.stdout, described.stderr
        out = grpcurl_call(srv, "app.v1.App/Probe", {"service": "x"}, "audit26-health-1")
        assert out.returncode == 0, out.stdout + out.stderr
        assert final(srv.wait_entries("audit26-health-1"))["code"] == 0
    finally:
        srv.stop()


def test_reflect_from_a_server_that_serves_health_as_go_names_it(tmp_path: Path) -> None:
    """Before: `--reflect-from` a server registering health as Go does (the file
    grpc/health/v1/health.proto) stopped at start with the duplicate-symbol line: a stand-in
    could not be made from most real servers' reflection."""
    from concurrent import futures

    import grpc
    from google.protobuf import descriptor_pool
    from grpc_reflection.v1alpha import reflection

    root = health_tree(tmp_path)
    schema = from_protos([root / "app/app.proto"], [root])
    pool = descriptor_pool.DescriptorPool()
    for file in schema.files.file:
        pool.Add(file)
    real = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    reflection.enable_server_reflection(("app.v1.App", "grpc.health.v1.Health", reflection.SERVICE_NAME), real,
                                        pool=pool)
    port = real.add_insecure_port("127.0.0.1:0")
    real.start()
    try:
        srv = start_server(tmp_path, "--reflect-from", f"127.0.0.1:{port}", "--mix", "complete=100")
        try:
            out = grpcurl_call(srv, "app.v1.App/Probe", {"service": "x"}, "audit26-health-2")
            assert out.returncode == 0, out.stdout + out.stderr
            assert final(srv.wait_entries("audit26-health-2"))["code"] == 0
        finally:
            srv.stop()
    finally:
        real.stop(None)


def test_a_users_file_whose_names_are_the_servers_with_other_fields_is_still_refused(tmp_path: Path) -> None:
    """Giving way is for copies: a callstate.v1.Script of other fields would be described wrongly."""
    (tmp_path / "callstate/v1").mkdir(parents=True)
    (tmp_path / "callstate/v1/mine.proto").write_text(
        'syntax = "proto3";\npackage callstate.v1;\nmessage Script { string a = 1; }\n')
    (tmp_path / "mine.proto").write_text('syntax = "proto3";\npackage mine;\nimport "callstate/v1/mine.proto";\n'
                                         "service S { rpc Do(callstate.v1.Script) returns (callstate.v1.Script); }\n")
    out = cli("serve", "--port", "0", "--no-state-log", "--proto", str(tmp_path / "mine.proto"))
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == (
        "callstate serve: callstate/v1/mine.proto: cannot be served beside the server's own services (Couldn't build "
        "proto file into descriptor pool: duplicate symbol 'callstate.v1.Script')")



def test_the_start_line_counts_one_method_in_the_singular(tmp_path: Path) -> None:
    (tmp_path / "ping.proto").write_text('syntax = "proto3";\npackage ping.v1;\nmessage P {}\n'
                                         'service Pinger { rpc Ping(P) returns (P); }\n')
    srv = start_server(tmp_path, "--proto", str(tmp_path / "ping.proto"), name="one-method")
    try:
        deadline = time.monotonic() + 30
        while "standing in for" not in (text := srv.stderr.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "standing in for ping.v1.Pinger (1 method; rules: none)" in text, text
    finally:
        srv.stop()


def test_a_users_method_called_on_a_server_that_does_not_serve_it_says_why(shared_server: ServerProcess) -> None:
    # a plain callstate serve (not a stand-in) answers a user's method UNIMPLEMENTED
    protos = ROOT / "tests" / "protos"
    result = cli("call", "--target", shared_server.target, "--method", "shop.v1.Shop/Charge",
                 "--proto", str(protos / "shop" / "v1" / "shop.proto"), "--proto-path", str(protos),
                 "--data", '{"order_id": "o-1"}', timeout=60)
    assert result.returncode == 1, result.stderr
    final_line = result.stderr.strip().splitlines()[-1]
    assert final_line.startswith("final: 1726 RPC_S_CALL_FAILED: Method not found! (the server does not serve "
                                 "this method; a callstate server serves a user's methods only as a stand-in"), final_line
