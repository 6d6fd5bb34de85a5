"""Second audit of the any-service feature, with protos as users bring them (tests/protos/audit27):
packages in folders importing each other, a vendored google/api/annotations.proto, an enum with
aliases whose zero is not UNSPECIFIED, nested messages and enums, oneofs, maps of messages,
`optional`, bytes, 64-bit integers, reserved fields, a deprecated method, two services in one
file, one short message name in two packages, streams of the three kinds and google.protobuf.Empty.

The tests whose docstring starts "Before:" failed before their fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from google.protobuf import struct_pb2

from callstate.client import Client, PipeScript, Script
from callstate.rules import RulesError, parse_rules
from callstate.schema import Schema, SchemaError, from_descriptor_set, from_protos, message_from_json
from tests.conftest import ROOT, ServerProcess, cli, ended, read_entries, start_server
from tests.test_third_party_and_crash import run_grpcurl

PROTOS = ROOT / "tests" / "protos" / "audit27"
BILLING = "acme/billing/v1/billing.proto"       # as its importers write it: below PROTOS
INVENTORY = "acme/inventory/v1/inventory.proto"
CREATE = "acme.billing.v1.Billing/CreateInvoice"

RULES = f"""\
rules:
  - name: by-alias
    method: {CREATE}
    match: {{request: {{priority: PRIORITY_DEFAULT}}}}
    script: {{outcome: abort, abort_code: 4001}}
  - name: by-uint64
    method: {CREATE}
    match: {{request: {{big: 18446744073709551615}}}}
    script: {{outcome: abort, abort_code: 4002}}
  - name: by-map-of-messages
    method: {CREATE}
    match: {{request: {{totals: {{eur: {{currency_code: EUR, units: 5}}}}}}}}
    script: {{outcome: abort, abort_code: 4003}}
  - name: by-optional-empty
    method: {CREATE}
    match: {{request: {{memo: ""}}}}
    script: {{outcome: abort, abort_code: 4004}}
  - name: by-oneof-bytes
    method: {CREATE}
    match: {{request: {{token: "AAE="}}}}
    script: {{outcome: abort, abort_code: 4005}}
  - name: other-item
    method: acme.inventory.v1.Inventory/Get
    match: {{request: {{billed: {{qty: "7"}}, common: {{name: n}}}}}}
    script: {{outcome: abort, abort_code: 4006}}
  - name: get
    method: acme.billing.v1.Billing/GetInvoice
    script: {{outcome: complete}}
    reply: {{id: inv-1, state: PAID, lines: [{{item: {{sku: s, qty: 3}}, kind: KIND_SERVICE}}],
             totals: {{eur: {{units: 1}}}}, notes: {{"5": five}}, token: "AAE=", memo: "",
             priority: PRIORITY_DEFAULT, big: "18446744073709551615"}}
  - name: empty
    method: acme.billing.v1.BillingAdmin/Purge
    script: {{outcome: complete}}
    reply: {{}}
"""


@pytest.fixture(scope="module")
def schema() -> Schema:
    return from_protos([PROTOS / BILLING, PROTOS / INVENTORY], [PROTOS])


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("audit27")
    (tmp / "rules.yaml").write_text(RULES)
    srv = start_server(tmp, "--proto", str(PROTOS / BILLING), "--proto", str(PROTOS / INVENTORY),
                       "--proto-path", str(PROTOS), "--rules", str(tmp / "rules.yaml"), "--mix", "complete=100",
                       "--max-hold", "20")
    yield srv
    srv.stop()


# -- a --proto written below its --proto-path, as protoc and grpcurl take it -------------------

def test_a_proto_named_below_its_proto_path_compiles(tmp_path: Path) -> None:
    """Before: `--proto acme/billing/v1/billing.proto --proto-path protos` (protoc's and grpcurl's
    way: `-I protos acme/...`) was "no such .proto file" unless the working folder was protos."""
    schema = from_protos([BILLING, PROTOS / INVENTORY], [PROTOS])   # one below the path, one absolute
    assert {"acme.billing.v1.Billing/GetInvoice", "acme.inventory.v1.Inventory/Get"} <= set(schema.methods)
    with pytest.raises(SchemaError) as err:
        from_protos(["acme/billing/v1/nope.proto"], [PROTOS])
    assert str(err.value) == f"acme/billing/v1/nope.proto: no such .proto file (nor below --proto-path {PROTOS})"


def test_call_and_serve_take_a_proto_named_below_the_proto_path(acme: ServerProcess, tmp_path: Path) -> None:
    """Before: both said "acme/inventory/v1/inventory.proto: no such .proto file", exit 2."""
    log = tmp_path / "client.jsonl"
    done = cli("call", "--target", acme.target, "--method", "acme.inventory.v1.Inventory/Get", "--proto", INVENTORY,
               "--proto-path", str(PROTOS), "--data", '{"billed": {"qty": "7"}, "common": {"name": "n"}}',
               "--no-script", "--log-file", str(log), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "final: 4006" in done.stderr   # the rule on the two packages' `Item`s answered
    assert ended(acme.wait_entries(read_entries(log)[0]["call_id"]))
    checked = cli("check", str(log), str(acme.log))
    assert checked.returncode == 0, checked.stdout
    # `serve` reads the same options: a stand-in whose --proto is below its --proto-path starts
    bad = cli("serve", "--port", "0", "--proto", "acme/billing/v1/nope.proto", "--proto-path", str(PROTOS),
              cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"callstate serve: acme/billing/v1/nope.proto: no such .proto file (nor below --proto-path {PROTOS})"]


# -- reflection describes a method by its full name --------------------------------------------

def test_grpcurl_describes_a_method_by_its_full_name(acme: ServerProcess) -> None:
    """Before: `grpcurl describe acme.billing.v1.Billing.GetInvoice` (and callstate.v1.Emulator.Call)
    was "Symbol not found": protobuf's upb pool finds no method by name, and reflection asked it alone."""
    out = run_grpcurl(acme.target, "describe", "acme.billing.v1.Billing.GetInvoice")
    assert out.returncode == 0, out.stderr
    assert "acme.billing.v1.Billing.GetInvoice is a method" in out.stdout
    assert 'get:"/v1/invoices/{id}"' in out.stdout   # the vendored google.api.http option travels with it
    deprecated = run_grpcurl(acme.target, "describe", "acme.billing.v1.Billing.OldCharge")
    assert "option deprecated = true" in deprecated.stdout, deprecated.stderr
    own = run_grpcurl(acme.target, "describe", "callstate.v1.Emulator.Call")
    assert "callstate.v1.Emulator.Call is a method" in own.stdout, own.stderr
    missing = run_grpcurl(acme.target, "describe", "acme.billing.v1.Billing.Nope")
    assert missing.returncode != 0 and "Symbol not found" in missing.stderr


# -- a JSON array is no request ------------------------------------------------------------------

def test_a_json_array_is_refused_not_sent_as_the_empty_request(acme: ServerProcess, schema: Schema) -> None:
    """Before: `--data '[]'` (and `request=[]`) was taken for `{}`: the empty request went out and
    completed, where `--data '[{...}]'` or `null` was refused."""
    get = schema.method("acme.billing.v1.Billing/GetInvoice")
    for data in ("[]", " [ ]", []):
        with pytest.raises(SchemaError, match="expected a JSON object of its fields, got an array"):
            message_from_json(get.request, data, where="--data")   # type: ignore[arg-type]
    done = cli("call", "--target", acme.target, "--method", get.name, "--data", "[]")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == ("callstate call: --data: acme.billing.v1.GetInvoiceRequest: expected a JSON "
                                   "object of its fields, got an array")
    # a well-known type whose JSON is an array still parses from one
    assert len(message_from_json(struct_pb2.ListValue, "[1, 2]", where="x").values) == 2


def test_pipe_of_another_shape_names_the_one_to_give(acme: ServerProcess) -> None:
    """Before: "... is server-streaming, a out pipe"."""
    done = cli("call", "--target", acme.target, "--method", "acme.billing.v1.Billing/Watch", "--pipe", "in")
    assert done.returncode == 2
    assert "acme.billing.v1.Billing/Watch is server-streaming, a pipe of --pipe out" in done.stderr


# -- what was checked and holds: the real-world protos end to end --------------------------------

@pytest.mark.parametrize("data, code", [
    ({"priority": "PRIORITY_NORMAL"}, 4001),      # an alias matches its value under any of its names
    ({"priority": 1}, 4001),
    ({"big": "18446744073709551615"}, 4002),      # uint64's largest, written as YAML's int
    ({"totals": {"eur": {"currency_code": "EUR", "units": "5"}}}, 4003),
    ({"memo": ""}, 4004),                         # `optional`: set to "" is not unset
    ({"token": "AAE="}, 4005),                    # a bytes member of a oneof
    ({"card": "c"}, 0),
])
def test_rules_match_the_real_world_field_kinds(schema: Schema, data: dict[str, object], code: int) -> None:
    rules = parse_rules(RULES, schema)
    request = message_from_json(schema.method(CREATE).request, data, where="t")
    rule = rules.first_match(CREATE, {}, request)
    assert (0 if rule is None else int(rule.script.abort_code)) == code   # type: ignore[union-attr]


def test_every_shape_and_grpcurl_on_the_real_world_protos(acme: ServerProcess, tmp_path: Path) -> None:
    log = tmp_path / "client.jsonl"
    with Client(acme.target, log=str(log)) as client:   # the schema from the stand-in's reflection
        got = client.start(Script("complete"), method="acme.billing.v1.Billing/GetInvoice",
                           request={"id": "q"}).result(30)
        assert (got.id, got.big, got.priority, got.token) == ("inv-1", 2**64 - 1, 1, b"\x00\x01")
        assert got.totals["eur"].units == 1 and got.notes[5] == "five"
        assert client.start(method="acme.billing.v1.Billing/Ping").result(30).ByteSize() == 0
        watch = client.pipe(PipeScript(messages=2), method="acme.billing.v1.Billing/Watch",
                            request={"page_size": 1}).start()
        assert [watch.pull() is not None for _ in range(2)] == [True, True]
        watch.result(30)
        upload = client.pipe(method="acme.billing.v1.Billing/Upload", request={"data": "aGk=", "offset": "3"}).start()
        upload.push()
        upload.close_push()
        upload.result(30)
        sync = client.pipe(PipeScript("hold"), method="acme.billing.v1.Billing/Sync", request={"id": "s"}).start()
        sync.push()
        sync.cancel()
        with pytest.raises(Exception) as cancelled:
            sync.result(30)
        assert getattr(cancelled.value, "code", None) == 1818
    for call_id in {e["call_id"] for e in read_entries(log)}:   # each call ended on the server's side too
        assert ended(acme.wait_entries(call_id)), call_id
    checked = cli("check", str(log), str(acme.log))
    assert checked.returncode == 0, checked.stdout
    purge = run_grpcurl("-H", "callstate-call-id: a27-purge", acme.target, "acme.billing.v1.BillingAdmin.Purge")
    assert purge.returncode == 0 and json.loads(purge.stdout) == {}, purge.stderr
    entries = acme.wait_entries("a27-purge")
    assert {e.get("rule") for e in entries} == {"empty"}
    assert {e.get("method") for e in entries} == {"acme.billing.v1.BillingAdmin/Purge"}


def test_a_data_file_saved_with_a_bom_and_crlf_is_read(tmp_path: Path, refused_target: str) -> None:
    """Before: a --data-file as Windows editors save it (UTF-8 with a BOM) was "bom.jsonl:1: ...
    Failed to load JSON: Unexpected UTF-8 BOM"."""
    from callstate.schema.drive import MethodOptions

    data = tmp_path / "bom.jsonl"
    data.write_bytes(b'\xef\xbb\xbf{"id": "x"}\r\n{"id": "y"}\r\n')
    drive = MethodOptions(method="acme.billing.v1.Billing/GetInvoice", data_file=str(data), proto=[BILLING],
                          proto_path=[str(PROTOS)]).drive(refused_target)
    assert drive is not None and [r.id for r in drive.requests] == ["x", "y"]   # type: ignore[attr-defined]


def test_call_refuses_emulator_call_fields_on_a_users_method(acme: ServerProcess) -> None:
    """Before: `call --method ... --payload x` (or --echo, --reply-bytes) exited 0 with the rule's
    reply: the payload was never sent, the echo never made, and nothing said so."""
    for flags, named in ((["--payload", "x"], "--payload applies"), (["--echo", "--reply-bytes", "3"],
                                                                      "--echo and --reply-bytes apply")):
        done = cli("call", "--target", acme.target, "--method", "acme.billing.v1.Billing/GetInvoice", *flags)
        assert done.returncode == 2 and done.stdout == "", done.stderr
        assert done.stderr.strip() == (f"callstate call: error: {named} without --method only: "
                                       "acme.billing.v1.Billing/GetInvoice sends its request from --data, and its "
                                       "reply is a rule's (docs/any-service.md) (see callstate call --help)")


def test_the_pytest_fixture_takes_a_proto_named_below_its_proto_path() -> None:
    """Before: `callstate_standin(protos=["acme/billing/v1/billing.proto"], proto_path=["tests/protos/audit27"])`
    failed the test with "no such .proto file": the proto was looked for below the rootdir only."""
    from callstate.pytest_plugin.standin import settings

    got = settings({"protos": [BILLING], "proto_path": ["tests/protos/audit27"]}, lambda name: "", ROOT)
    schema = from_protos(got["protos"], got["proto_path"])
    assert "acme.billing.v1.Billing/GetInvoice" in schema.methods
    own = settings({"protos": ["tests/protos/shop/v1/shop.proto"], "proto_path": ["tests/protos"]}, lambda name: "",
                   ROOT)
    assert own["protos"] == [str(ROOT / "tests/protos/shop/v1/shop.proto")]   # from the rootdir, as before


def test_a_rule_on_a_service_the_server_runs_itself_is_refused(tmp_path: Path) -> None:
    """Before: with health.proto vendored beside the user's protos (or read by --reflect-from from
    a Go server), `method: grpc.health.v1.Health/Check` loaded and never applied: the server's own
    health service answers, and nothing said the rule was dead."""
    (tmp_path / "grpc/health/v1").mkdir(parents=True)
    (tmp_path / "grpc/health/v1/health.proto").write_text(
        'syntax = "proto3";\npackage grpc.health.v1;\nmessage HealthCheckRequest { string service = 1; }\n'
        "message HealthCheckResponse { enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; }\n"
        "  ServingStatus status = 1; }\n"
        "service Health { rpc Check(HealthCheckRequest) returns (HealthCheckResponse); }\n")
    (tmp_path / "app.proto").write_text('syntax = "proto3";\npackage app.v1;\nimport "grpc/health/v1/health.proto";\n'
                                        "service App { rpc Probe(grpc.health.v1.HealthCheckRequest) returns "
                                        "(grpc.health.v1.HealthCheckResponse); }\n")
    schema = from_protos([tmp_path / "app.proto", tmp_path / "grpc/health/v1/health.proto"], [tmp_path])
    with pytest.raises(RulesError) as err:
        parse_rules("rules:\n  - method: grpc.health.v1.Health/Check\n    reply: {status: NOT_SERVING}\n", schema)
    assert str(err.value) == ("rules:2: rules[0].method: 'grpc.health.v1.Health/Check' names the server's own "
                              "grpc.health.v1.Health: a stand-in runs callstate.v1.*, grpc.health.v1.*, "
                              "grpc.reflection.* itself, no rule answers them")
    every = parse_rules("rules:\n  - method: '*'\n    script: {outcome: complete}\n", schema)
    assert sorted(every.by_method) == ["app.v1.App/Probe"]   # a wildcard takes the methods the stand-in serves


def test_a_descriptor_set_given_as_a_proto_says_which_option_takes_it(tmp_path: Path, refused_target: str) -> None:
    """Before: `--proto set.pb` (what `protoc -o` wrote) was protoc's "set.pb:2:1: Interpreting non
    ascii codepoint 151." and nothing about --descriptor-set."""
    from callstate.schema.sources import well_known_include

    out = tmp_path / "set.pb"
    made = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"-I{well_known_include()}",
                           "--include_imports", f"--descriptor_set_out={out}", BILLING], capture_output=True,
                          cwd=PROTOS, timeout=120)
    assert made.returncode == 0, made.stderr
    with pytest.raises(SchemaError) as err:
        from_protos([out])
    assert str(err.value) == f"{out}: a descriptor set, not a .proto file: give it with --descriptor-set"
    bad = cli("call", "--target", refused_target, "--method", CREATE, "--proto", "set.pb", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "callstate call: set.pb: a descriptor set, not a .proto file: give it with --descriptor-set"
    assert CREATE in from_protos([PROTOS / BILLING], [PROTOS]).methods   # a .proto that fails still says protoc's line
    with pytest.raises(SchemaError, match=r"syn\.proto:5:1: Expected \";\"\."):
        (tmp_path / "syn.proto").write_text('syntax = "proto3";\npackage x;\nmessage A {\n  string a = 1\n}\n')
        from_protos([tmp_path / "syn.proto"])


def test_a_proto_given_as_a_descriptor_set_says_which_option_takes_it(tmp_path: Path) -> None:
    """Before: `--descriptor-set billing.proto` was "not a FileDescriptorSet (Error parsing message
    with type 'google.protobuf.FileDescriptorSet': Wire format was corrupt)"."""
    done = cli("serve", "--port", "0", "--descriptor-set", str(PROTOS / BILLING))
    assert done.returncode == 2
    assert done.stderr.strip() == (f"callstate serve: {PROTOS / BILLING}: a .proto file, not a descriptor set: "
                                   "give it with --proto")
    (tmp_path / "old.proto").write_text("// no syntax line: proto2\npackage old;\nmessage M { optional int32 a = 1; }\n")
    with pytest.raises(SchemaError, match="a .proto file, not a descriptor set"):
        from_descriptor_set(tmp_path / "old.proto")
    (tmp_path / "junk.bin").write_bytes(b"\xff\xff\xff")
    with pytest.raises(SchemaError, match="not a FileDescriptorSet"):   # anything else: as before
        from_descriptor_set(tmp_path / "junk.bin")


def test_a_method_pattern_starting_with_a_star_says_to_quote_it(schema: Schema) -> None:
    """Before: `method: */GetInvoice` or `method: *` (the docs: "* matches any part") was only
    "not valid YAML (expected alphabetic or numeric character, but found '/')"."""
    for value in ("*/GetInvoice", "*"):
        with pytest.raises(RulesError) as err:
            parse_rules(f"rules:\n  - method: {value}\n    script: {{outcome: complete}}\n", schema, source="r.yaml")
        assert str(err.value).startswith("r.yaml:2: not valid YAML (expected alphabetic or numeric character")
        assert str(err.value).endswith("; a value that starts with * is read as a YAML alias: quote it, "
                                       "method: '*/Charge')")
    quoted = parse_rules("rules:\n  - method: '*/GetInvoice'\n    script: {outcome: complete}\n", schema)
    assert sorted(quoted.by_method) == ["acme.billing.v1.Billing/GetInvoice"]


def test_a_proto_in_a_folder_whose_name_is_not_ascii_loads_and_serves(tmp_path: Path, refused_target: str) -> None:
    """Before: `--proto équipe/v1/team.proto --proto-path .` stopped with a KeyError traceback
    ("Couldn't find file équipe/v1/team.proto"): protobuf's upb pool finds no file by a name that
    is not ASCII, and the schema and the reflection pool looked their files up by name."""
    from callstate.server.reflection import server_pool

    (tmp_path / "équipe/v1").mkdir(parents=True)
    (tmp_path / "équipe/v1/common.proto").write_text('syntax = "proto3";\npackage team.v1;\nmessage M { string a = 1; }\n')
    (tmp_path / "équipe/v1/team.proto").write_text('syntax = "proto3";\npackage team.v1;\nimport "équipe/v1/common.proto";\n'
                                                  "service Team { rpc Get(M) returns (M); }\n")
    schema = from_protos(["équipe/v1/team.proto"], [tmp_path])
    assert list(schema.methods) == ["team.v1.Team/Get"]
    assert server_pool(schema).FindServiceByName("team.v1.Team").methods_by_name["Get"].input_type.name == "M"
    done = cli("call", "--target", refused_target, "--timeout", "5", "--method", "team.v1.Team/Get", "--proto",
               "équipe/v1/team.proto", "--proto-path", ".", "--data", '{"a": "x"}', cwd=tmp_path)
    assert "Traceback" not in done.stderr and "final: 1722" in done.stderr, done.stderr   # unreachable: said so


def test_a_wildcard_rule_matches_the_methods_whose_request_has_its_fields(schema: Schema) -> None:
    """Before: `method: acme.billing.v1.Billing/*` with `match: {request: {id: x}}` refused the
    whole file ("google.protobuf.Empty has no field named id", for Ping): a service of many methods
    could not share one rule on the field most of its requests have."""
    rules = parse_rules("rules:\n  - method: 'acme.billing.v1.Billing/*'\n    match: {request: {id: x}}\n"
                        "    script: {outcome: abort, abort_code: 4444}\n", schema)
    assert sorted(rules.by_method) == [f"acme.billing.v1.Billing/{m}" for m in
                                       ("A1", "A2", "A3", "CreateInvoice", "GetInvoice", "OldCharge")]
    get = schema.method("acme.billing.v1.Billing/GetInvoice")
    assert rules.first_match(get.name, {}, get.request(id="x")) is not None
    assert rules.first_match(get.name, {}, get.request(id="y")) is None
    with pytest.raises(RulesError, match='no field named "idd"'):   # a field no request has: still one line
        parse_rules("rules:\n  - method: 'acme.billing.v1.Billing/*'\n    match: {request: {idd: x}}\n", schema)
    with pytest.raises(RulesError, match="Failed to parse id field"):   # a wrong value is not skipped over
        parse_rules("rules:\n  - method: 'acme.billing.v1.Billing/*'\n    match: {request: {id: 5}}\n", schema)
