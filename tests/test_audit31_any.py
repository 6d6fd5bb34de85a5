"""Fourth audit of the any-service feature, as a test engineer bringing a company's protos on
day one: many methods in long packages, `call --method --no-script` with the script options
users type out of habit, near-miss method names.

The tests whose docstring starts "Before:" failed before their fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from callstate.rules import RulesError, parse_rules
from callstate.schema import Schema, SchemaError
from tests.conftest import ROOT, read_entries

SHOP = ROOT / "tests" / "protos"
SHOP_PROTO = ["--proto", "shop/v1/shop.proto", "--proto-path", str(SHOP)]
CHARGE, TRACK = "shop.v1.Shop/Charge", "shop.v1.Shop/Track"


@pytest.mark.parametrize("method, extra, named", [
    (CHARGE, ["--outcome", "abort", "--code", "4321"], "--outcome and --code"),
    (CHARGE, ["--outcome", "hold", "--cancel-after", "0.2"], "--outcome"),
    (CHARGE, ["--on-cancel", "ignore", "--delay", "1"], "--delay and --on-cancel"),
    (TRACK, ["--server-messages", "5", "--at", "after-out"], "--server-messages and --at")])
def test_call_no_script_refuses_the_script_options_it_would_drop(method: str, extra: list[str], named: str,
                                                                 refused_target: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Before: `call --method M --no-script --outcome abort --code 4321` sent no script, so the
    stand-in's rules (or --mix) decided and the call ended `final: 0 RPC_S_OK`, exit 0: the
    options typed were dropped without a word (`load --no-script` refuses its own)."""
    from callstate.cli import main

    assert main(["call", "--target", refused_target, "--method", method, *SHOP_PROTO, "--no-script", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"callstate call: error: {named}: with --no-script no script is sent, the server decides "
                   "the call's outcome (see callstate call --help)"), err


def _many_methods(count: int) -> Schema:
    """A schema as generated code often is: one service of `count` methods in a long package."""
    from google.protobuf import descriptor_pb2

    file = descriptor_pb2.FileDescriptorProto(name="big/v1beta1/big.proto", package=BIG_PACKAGE, syntax="proto3")
    file.message_type.add(name="M")
    service = file.service.add(name="Big")
    for i in range(count):
        service.method.add(name=f"Method{i}", input_type=f".{BIG_PACKAGE}.M", output_type=f".{BIG_PACKAGE}.M")
    return Schema(descriptor_pb2.FileDescriptorSet(file=[file]))


BIG_PACKAGE = "com.megacorp.platform.bigservice.internal.generated.v1beta1"
BIG = f"{BIG_PACKAGE}.Big"


@pytest.mark.parametrize("wanted, meant", [
    (f"{BIG}/Methd17", f"{BIG}/Method17"),              # a typo
    (f"{BIG}/method17", f"{BIG}/Method17"),             # another case
    ("Big/Method17", f"{BIG}/Method17"),                # the package left out
    ("Big.Method17", f"{BIG}/Method17"),                # ... as grpcurl writes it
    ("Method17", f"{BIG}/Method17")])                   # the method alone
def test_a_near_miss_method_name_says_which_was_meant_in_a_line_of_bounded_length(wanted: str, meant: str) -> None:
    """Before: `call --method` (and load, Locust, the library) on a schema of 400 methods printed
    the 400 names, 30 KB on one line, and nothing said which of them was meant."""
    schema = _many_methods(400)
    with pytest.raises(SchemaError) as err:
        schema.method(wanted)
    line = str(err.value)
    assert line.startswith(f"unknown method {wanted!r} (did you mean {meant}?); the schema has: {BIG}/Method0, "), line
    assert line.endswith(", ... (380 more)") and len(line) < 2000, line
    with pytest.raises(RulesError) as rules_err:
        parse_rules(f"rules:\n  - method: {wanted}\n", schema, source="r.yaml")
    assert str(rules_err.value).startswith(f"r.yaml:2: rules[0].method: no method of the schema matches {wanted!r} "
                                           f"(did you mean {meant}?); the schema has: "), rules_err.value
    assert str(rules_err.value).endswith(", ... (380 more)")


def test_a_name_far_from_every_method_lists_them_all_when_they_are_few() -> None:
    with pytest.raises(SchemaError) as err:
        _many_methods(3).method("acme.v1.Orders/Create")
    assert str(err.value) == (f"unknown method 'acme.v1.Orders/Create'; the schema has: {BIG}/Method0, {BIG}/Method1, "
                              f"{BIG}/Method2")



def test_the_standin_fixtures_calls_refuse_a_method_the_schema_lacks(tmp_path: Path) -> None:
    """Before: `callstate_standin.calls(method="shop.v1.Shop/Chrge")` (a typo) found no call and
    returned [], so a test asserting "no Charge was made" passed whatever was called."""
    import grpc

    from callstate.pytest_plugin.standin import start_standin

    srv = start_standin(tmp_path / "standin.jsonl", protos=["shop/v1/shop.proto"], proto_path=[str(SHOP)],
                        descriptor_set=None, rules=None, config={"mix": "complete=100"})
    try:
        charge = srv.schema.method(CHARGE)
        with grpc.insecure_channel(srv.target) as channel:
            channel.unary_unary(charge.path, request_serializer=charge.request.SerializeToString,
                                response_deserializer=charge.response.FromString)(charge.request(), timeout=10)
        with pytest.raises(SchemaError, match=r"^unknown method 'shop.v1.Shop/Chrge' \(did you mean shop.v1.Shop/Charge\?\)"):
            srv.calls(method="shop.v1.Shop/Chrge")
        # the schema's name, grpcurl's form, a pattern, and the server's own (no call of it)
        found = {name: len(srv.calls(method=name))
                 for name in (CHARGE, "shop.v1.Shop.Charge", "shop.v1.*", "callstate.v1.Emulator/Call")}
        assert found == {CHARGE: 1, "shop.v1.Shop.Charge": 1, "shop.v1.*": 1, "callstate.v1.Emulator/Call": 0}, found
    finally:
        srv.stop()


ORDERS_PROTO = """\
syntax = "proto3";
package acme.orders.v1;
import "google/protobuf/struct.proto";
import "google/protobuf/wrappers.proto";
message Line { string sku = 1; uint32 quantity = 2; }
message CreateOrderRequest {
  map<string, string> labels = 1;
  map<string, Line> lines_by_sku = 2;
  google.protobuf.Struct attributes = 3;
}
message Order { string id = 1; }
message ChargeRequest {
  optional string coupon = 1;
  google.protobuf.StringValue note = 2;
  Line line = 3;
  oneof payment { string card = 4; string iban = 5; }
  enum Tier { TIER_UNSPECIFIED = 0; TIER_GOLD = 1; }
  Tier tier = 6;
  double weight = 7;
  repeated float scores = 8;
  map<string, Tier> tiers = 9;
}
service Orders {
  rpc CreateOrder(CreateOrderRequest) returns (Order);
  rpc Charge(ChargeRequest) returns (Order);
}
"""
CREATE = "acme.orders.v1.Orders/CreateOrder"


@pytest.fixture(scope="module")
def orders(tmp_path_factory: pytest.TempPathFactory) -> Schema:
    from callstate.schema import from_protos

    folder = tmp_path_factory.mktemp("orders")
    (folder / "orders.proto").write_text(ORDERS_PROTO)
    return from_protos([folder / "orders.proto"])


@pytest.mark.parametrize("pattern, sent, matches", [
    ({"labels": {"tier": "gold"}}, {"labels": {"tier": "gold", "region": "eu"}}, True),   # more keys: still
    ({"labels": {"tier": "gold"}}, {"labels": {"tier": "silver"}}, False),
    ({"labels": {"tier": "gold"}}, {}, False),
    ({"labels": {}}, {"labels": {"tier": "gold"}}, True),                                  # `{}`: any map
    ({"linesBySku": {"a": {"sku": "a"}}}, {"linesBySku": {"a": {"sku": "a"}, "b": {"sku": "b"}}}, True),
    ({"linesBySku": {"a": {"sku": "a"}}}, {"linesBySku": {"a": {"sku": "a", "quantity": 2}}}, False),  # a value whole
    ({"attributes": {"tier": "gold"}}, {"attributes": {"tier": "gold", "vip": True}}, True),
    ({"attributes": {"tier": {"level": 2}}}, {"attributes": {"tier": {"level": 2, "since": 2020}}}, True),
    ({"attributes": {"tier": "gold"}}, {"attributes": {"tier": "bronze"}}, False)])
def test_a_map_or_a_struct_field_in_a_pattern_matches_key_by_key(orders: Schema, pattern: dict, sent: dict,
                                                                 matches: bool) -> None:
    """Before: the rules reference said a map and a Struct field match as a whole; they match key
    by key (tests/test_standin.py holds a map to it), each key named with its value, a message
    value of a map whole (its defaults included)."""
    import json

    from callstate.schema import message_from_json

    rules = parse_rules(json.dumps({"rules": [{"method": CREATE, "match": {"request": pattern}}]}), orders)
    got = message_from_json(orders.method(CREATE).request, sent, where="request")
    assert (rules.first_match(CREATE, {}, got) is not None) is matches


def _ini(values: dict[str, str]):  # type: ignore[no-untyped-def]
    return lambda name: values.get(name, "")


def test_the_standin_markers_schema_and_rules_win_over_the_ini_files(tmp_path: Path) -> None:
    """Before: with `callstate_descriptor_set` in the ini file, a marker's `protos=[...]` was
    dropped (the ini's descriptor set was served), and a marker's `rules=None` still loaded the
    ini's rules: "each keyword the marker gives wins over its ini option" held for neither."""
    from callstate.pytest_plugin.servers import ServerUnavailable
    from callstate.pytest_plugin.standin import settings

    ini = _ini({"callstate_descriptor_set": "all.pb", "callstate_rules": "tests/rules.yaml"})
    got = settings({"protos": ["protos/one.proto"], "rules": None}, ini, tmp_path)
    assert (got["protos"], got["descriptor_set"], got["rules"]) == ([str(tmp_path / "protos/one.proto")], None, None), got
    got = settings({"protos": ["protos/one.proto"]}, ini, tmp_path)   # the marker's schema, the ini's rules
    assert (got["descriptor_set"], got["rules"]) == (None, str(tmp_path / "tests/rules.yaml")), got
    ini = _ini({"callstate_protos": "protos/one.proto", "callstate_proto_path": "protos"})
    got = settings({"descriptor_set": "all.pb"}, ini, tmp_path)
    assert (got["protos"], got["descriptor_set"]) == ([], str(tmp_path / "all.pb")), got
    with pytest.raises(ServerUnavailable, match=r"^callstate_standin: protos and descriptor_set: give the schema one way$"):
        settings({"protos": ["protos/one.proto"], "descriptor_set": "all.pb"}, _ini({}), tmp_path)


def test_a_cancel_notice_the_token_refuses_escalates_at_once(tmp_path: Path) -> None:
    """Before: on a stand-in started with --token (which guards callstate.v1 only: the user's
    methods stay open), a non-abortive cancel from a client without the token logged `not
    delivered: UNAUTHENTICATED` and the call stayed held until the server's max hold (30 s by
    default): the notice could never be delivered, as on a server that is not callstate."""
    import asyncio

    from callstate.client import AsyncClient, CallError, Script
    from callstate.lifecycle import CANCEL_ESCALATED, CANCEL_SENT
    from callstate.schema import from_protos
    from callstate.server import EmulatorServer
    from callstate.server.config import EmulatorConfig

    schema = from_protos(["shop/v1/shop.proto"], [SHOP])
    log = tmp_path / "client.jsonl"

    async def run() -> int:
        async with EmulatorServer(port=0, schema=schema, token="s3cret", log=None,
                                  emulator=EmulatorConfig(max_hold=20)) as srv:
            async with AsyncClient(srv.target, schema=schema, log=log) as client:
                call = client.start(Script("hold"), method=CHARGE, request={"order_id": "o-1"})
                call.cancel(abortive=False)
                try:
                    await asyncio.wait_for(call.result(), 5)
                except CallError as err:
                    return err.code
        return 0

    assert asyncio.run(run()) == 1818
    entries = read_entries(log)
    sent = next(e for e in entries if e["event"] == CANCEL_SENT)
    assert sent["detail"].startswith("not delivered: UNAUTHENTICATED: the server wants a token for "
                                     "callstate.v1.Emulator/Cancel"), sent
    assert [e["detail"] for e in entries if e["event"] == CANCEL_ESCALATED] == [
        "the cancel notice has nowhere to go: " + sent["detail"].removeprefix("not delivered: UNAUTHENTICATED: ")]


@pytest.mark.parametrize("extra, named", [(["--pipe-cancel-at", "after-received:2"], "--pipe-cancel-at applies"),
                                          (["--pipe-messages", "7"], "--pipe-messages applies")])
def test_load_on_a_unary_method_refuses_pipe_options_without_sending_the_user_to_pipes(
        extra: list[str], named: str, refused_target: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: `load --method shop.v1.Shop/Charge --pipe-cancel-at ...` said "add --pipes (e.g.
    in=10,out=10,both=10)", and with --pipes added it said "--pipes: the calls on
    shop.v1.Shop/Charge are unary: the method's shape decides": each line sent the user to the other."""
    from callstate.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["load", "--target", refused_target, "--method", CHARGE, *SHOP_PROTO, *extra])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and err == (f"callstate load: error: {named} to pipes: {CHARGE} is unary (the calls "
                                             "on a streaming method are pipes of its shape) (see callstate load --help)"), err


@pytest.mark.parametrize("extra, named", [(["--messages", "5"], "--messages applies"),
                                          (["--cancel-at", "after-received:1"], "--cancel-at after-received:1 applies"),
                                          (["--breach", "push-after-end"], "--breach push-after-end breaks a pipe rule: "
                                                                           "it applies")])
def test_call_on_a_unary_method_refuses_pipe_options_without_sending_the_user_to_pipe(
        extra: list[str], named: str, refused_target: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: `call --method shop.v1.Shop/Charge --messages 5` said "applies to pipes (--pipe in,
    out or both)", and with --pipe in added: "--pipe in: shop.v1.Shop/Charge is unary"."""
    from callstate.cli import main

    assert main(["call", "--target", refused_target, "--method", CHARGE, *SHOP_PROTO, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"callstate call: error: {named} to pipes: {CHARGE} is unary (the calls on a streaming "
                          "method are pipes of its shape)"), err


LOCUST_CONFIGURE = """\
import argparse
import sys

import callstate.locust   # first: grpc on gevent, in this process only
from callstate.locust import CallstateUser


class Charges(CallstateUser):
    method = "shop.v1.Shop/Charge"
    proto = ["shop/v1/shop.proto"]
    proto_path = [sys.argv[1]]


for typed in ({"callstate_pipes": "in=10"}, {"callstate_pipe_cancel_at": "after-received:2"}):
    try:
        Charges.configure(argparse.Namespace(**typed), "127.0.0.1:1")
    except ValueError as exc:
        print(exc)
"""


def test_locust_on_a_unary_method_refuses_pipe_options_without_sending_the_user_to_pipes(tmp_path: Path) -> None:
    """Before: `--callstate-pipe-cancel-at` on a user whose method is unary said "set
    --callstate-pipes", and --callstate-pipes then said the calls "are 'unary' pipes: the
    method's shape decides"."""
    import subprocess
    import sys

    (tmp_path / "configure.py").write_text(LOCUST_CONFIGURE)
    done = subprocess.run([sys.executable, str(tmp_path / "configure.py"), str(SHOP)], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.splitlines() == [
        f"--callstate-pipes: the calls on {CHARGE} are unary calls: the method's shape decides",
        f"--callstate-pipe-cancel-at applies to pipes: {CHARGE} is unary (the calls on a streaming method are pipes "
        "of its shape)"], done.stdout + done.stderr


LOCUST_SCHEMA = """\
import argparse
import sys

import callstate.locust   # first: grpc on gevent, in this process only
from callstate.locust import CallstateUser


class Charges(CallstateUser):
    method = "shop.v1.Shop/Charge"
    proto = ["shop/v1/shop.proto"]     # the locustfile's schema ...
    proto_path = [sys.argv[1]]


class Described(CallstateUser):
    method = "shop.v1.Shop/Charge"
    descriptor_set = sys.argv[2]


for user, typed in ((Charges, {"callstate_descriptor_set": sys.argv[2]}),   # ... replaced on the command line
                    (Described, {"callstate_proto": ["shop/v1/shop.proto"], "callstate_proto_path": [sys.argv[1]]})):
    try:
        print(user.configure(argparse.Namespace(**typed), "127.0.0.1:1")[2].method.name)
    except ValueError as exc:
        print(exc)
"""


def test_locust_schema_typed_on_the_command_line_replaces_the_locustfiles(tmp_path: Path) -> None:
    """Before: a locustfile whose user sets `proto` run with `--callstate-descriptor-set` said
    "proto and --callstate-descriptor-set: give one of them" (and the other way round): the
    option typed holds over its class attribute, but not over the other of the pair."""
    import subprocess
    import sys

    from callstate.schema import from_protos

    described = tmp_path / "shop.pb"
    described.write_bytes(from_protos(["shop/v1/shop.proto"], [SHOP]).files.SerializeToString())
    (tmp_path / "schema.py").write_text(LOCUST_SCHEMA)
    done = subprocess.run([sys.executable, str(tmp_path / "schema.py"), str(SHOP), str(described)],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == [CHARGE, CHARGE], done.stdout + done.stderr


@pytest.mark.parametrize("pattern, sent, matches", [
    ({"coupon": None}, {}, True),                     # an `optional` field left unset
    ({"coupon": None}, {"coupon": ""}, False),        # ... set, to its default
    ({"note": None}, {}, True),                       # a wrapper
    ({"note": None}, {"note": "n"}, False),
    ({"line": None}, {}, True),                       # a message
    ({"line": None}, {"line": {}}, False),
    ({"card": None}, {"iban": "DE00"}, True),         # a oneof member the request does not set
    ({"card": None}, {"card": "c"}, False)])
def test_a_field_given_as_null_in_a_pattern_matches_a_request_that_leaves_it_unset(
        orders: Schema, pattern: dict, sent: dict, matches: bool) -> None:
    """Before: `match: {request: {coupon: null}}` loaded, and matched no request at all, set or
    unset: a rule that could never apply, said nowhere. In proto JSON null is the field unset."""
    import json

    from callstate.schema import message_from_json

    method = "acme.orders.v1.Orders/Charge"
    rules = parse_rules(json.dumps({"rules": [{"method": method, "match": {"request": pattern}}]}), orders)
    got = message_from_json(orders.method(method).request, sent, where="request")
    assert (rules.first_match(method, {}, got) is not None) is matches


@pytest.mark.parametrize("sent, named", [
    ('{"tier": true}', "tier: true is a JSON bool, and the field is an enum (acme.orders.v1.ChargeRequest.Tier)"),
    ({"weight": False}, "weight: false is a JSON bool, and the field is a double"),
    ('{"scores": [1.5, true]}', "scores[1]: true is a JSON bool, and the field is a float"),
    ('{"tiers": {"a": true}}', "tiers[a]: true is a JSON bool, and the field is an enum (acme.orders.v1.ChargeRequest.Tier)")])
def test_a_json_bool_at_a_number_or_an_enum_is_refused_naming_the_field(orders: Schema, sent: object,
                                                                        named: str) -> None:
    """Before: `--data '{"tier": true}'` sent TIER_GOLD (the enum's value 1) and `"weight": false`
    sent 0.0, and a rule's `tier: true` matched TIER_GOLD: protobuf's parser reads a bool as 1 or 0."""
    import json

    from callstate.schema import message_from_json

    method = "acme.orders.v1.Orders/Charge"
    with pytest.raises(SchemaError) as err:
        message_from_json(orders.method(method).request, sent, where="--data")   # type: ignore[arg-type]
    assert str(err.value) == f"--data: acme.orders.v1.ChargeRequest: {named}", err.value
    pattern = sent if isinstance(sent, dict) else json.loads(sent)
    with pytest.raises(RulesError, match=named.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_rules(json.dumps({"rules": [{"method": method, "match": {"request": pattern}}]}), orders)
