"""The stand-in for any proto: `callstate serve --proto shop.proto --rules FILE`, a real server
process, called by a Python app through the code grpcio-tools generated from that proto (a
client that knows nothing of callstate), and judged by the server's own state log."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import grpc
import pytest

from callstate.logfile import check_files
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from tests.conftest import ROOT, ServerProcess, cli, final, start_server, states

PROTOS = ROOT / "tests" / "protos"
SHOP = PROTOS / "shop" / "v1" / "shop.proto"
CHARGE = "shop.v1.Shop/Charge"

RULES = """\
rules:
  - name: declined
    method: shop.v1.Shop/Charge
    match:
      request: {amount: {currency: "EUR"}}
    script: {outcome: abort, abort_code: 4321}
  - name: crash
    method: shop.v1.Shop/Charge
    match:
      request: {order_id: "crash-me"}
    script: {outcome: fatal}
  - name: acme
    method: shop.v1.Shop/Charge
    match:
      metadata: {x-tenant: acme}
    script: {outcome: complete}
    reply: {status: STATUS_DECLINED, charge_id: "acme-1"}
  - name: held
    method: shop.v1.Shop/Charge
    match:
      request: {order_id: "hold"}
    script: {outcome: hold}
  - name: approved
    method: shop.v1.Shop/Charge
    script: {outcome: complete}
    reply: {status: STATUS_APPROVED, charge_id: "ok-1", captured: {currency: "USD", units: "12"}}
  - name: forever
    method: shop.v1.Shop/Track
    match:
      request: {order_id: "forever"}
    script: {outcome: hold, interval_ms: 20}
    reply: {where: "on the road"}
  - name: three-events
    method: shop.v1.Shop/Track
    script: {outcome: complete, messages: 3}
    reply: {where: "depot"}
  - method: shop.v1.Shop/*
    script: {outcome: complete}
"""


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    yield from generated_shop(tmp_path_factory)


def generated_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """shop.v1's messages and stubs as grpcio-tools generates them for an app."""
    out = tmp_path_factory.mktemp("generated")
    done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"--python_out={out}",
                           f"--grpc_python_out={out}", "shop/v1/shop.proto", "shop/v1/money.proto"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    sys.path.insert(0, str(out))
    try:
        yield SimpleNamespace(pb=importlib.import_module("shop.v1.shop_pb2"),
                              money=importlib.import_module("shop.v1.money_pb2"),
                              grpc=importlib.import_module("shop.v1.shop_pb2_grpc"))
    finally:
        sys.path.remove(str(out))


def standin_args(rules: Path) -> tuple[str, ...]:
    return ("--proto", str(SHOP), "--proto-path", str(PROTOS), "--rules", str(rules), "--max-hold", "20",
            "--mix", "complete=100")


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("standin")
    (tmp / "rules.yaml").write_text(RULES)
    srv = start_server(tmp, *standin_args(tmp / "rules.yaml"), name="standin")
    yield srv
    srv.stop()


def server_call_id(err_or_call: Any) -> str:
    md = err_or_call.initial_metadata() or ()
    return dict(md).get("callstate-call-id", "")


def waited(srv: ServerProcess, call_id: str, until: Any = None) -> list[dict[str, Any]]:
    """The server's entries of a call once `until` holds (default: it ended); generous on a busy machine."""
    return srv.wait_entries(call_id, until, timeout=30)


def one_end(entries: list[dict[str, Any]]) -> bool:
    return sum(1 for e in entries if e["state"] == "End" and e["event"] == "enter") == 1


def test_every_call_shape_of_a_generated_app_follows_the_server_lifecycle(standin: ServerProcess, shop: Any) -> None:
    with grpc.insecure_channel(standin.target) as channel:
        stub = shop.grpc.ShopStub(channel)
        reply, call = stub.Charge.with_call(shop.pb.ChargeRequest(order_id="o-1"), timeout=10,
                                            metadata=(("callstate-call-id", "gen-charge-1"),))
        assert (reply.status, reply.charge_id, reply.captured.units) == (shop.pb.STATUS_APPROVED, "ok-1", 12)
        events = list(stub.Track(shop.pb.TrackRequest(order_id="o-1"), timeout=10,
                                 metadata=(("callstate-call-id", "gen-track-1"),)))
        assert [e.where for e in events] == ["depot"] * 3
        uploaded = stub.Upload(iter([shop.pb.Chunk(data=b"ab"), shop.pb.Chunk(data=b"c")]), timeout=10,
                               metadata=(("callstate-call-id", "gen-upload-1"),))
        assert uploaded == shop.pb.UploadReply()   # the response type's empty message
        chat = list(stub.Chat(iter([shop.pb.ChatMessage(text="hi")]), timeout=10,
                              metadata=(("callstate-call-id", "gen-chat-1"),)))
        assert chat == []
    expected = {"gen-charge-1": (CHARGE, "approved", ["D", "Comp", "End"]),
                "gen-track-1": ("shop.v1.Shop/Track", "three-events", ["D", "Push", "Comp", "End"]),
                "gen-upload-1": ("shop.v1.Shop/Upload", "rules[7]", ["D", "Pull", "NP", "Comp", "End"]),
                "gen-chat-1": ("shop.v1.Shop/Chat", "rules[7]", ["D", "Push", "NP", "Comp", "End"])}
    for call_id, (method, rule, path) in expected.items():
        entries = waited(standin, call_id)
        assert states(entries) == path, call_id
        assert {(e["method"], e["rule"]) for e in entries} == {(method, rule)}   # every entry names both
    assert final(waited(standin, "gen-track-1"))["sent"] == 3
    assert final(waited(standin, "gen-upload-1"))["received"] == 2


def test_a_header_script_aborts_with_its_code_and_a_bad_one_is_refused_before_dispatch(standin: ServerProcess,
                                                                                       shop: Any) -> None:
    with grpc.insecure_channel(standin.target) as channel:
        stub = shop.grpc.ShopStub(channel)
        with pytest.raises(grpc.RpcError) as aborted:
            stub.Charge(shop.pb.ChargeRequest(order_id="o-2"), timeout=10, metadata=(
                ("callstate-call-id", "hdr-abort-1"), ("callstate-script", '{"outcome": "abort", "abort_code": 4321}')))
        assert aborted.value.code() == grpc.StatusCode.ABORTED
        assert dict(aborted.value.trailing_metadata())["callstate-code"] == "4321"
        entries = waited(standin, "hdr-abort-1")
        assert states(entries) == ["D", "A", "End"] and final(entries)["code"] == 4321
        # the proto JSON form and the serialized form are scripts too
        with pytest.raises(grpc.RpcError) as proto_json:
            stub.Charge(shop.pb.ChargeRequest(), timeout=10, metadata=(
                ("callstate-script", '{"outcome": "OUTCOME_ABORT", "abortCode": 77}'),))
        assert dict(proto_json.value.trailing_metadata())["callstate-code"] == "77"
        with pytest.raises(grpc.RpcError) as binary:
            stub.Charge(shop.pb.ChargeRequest(), timeout=10, metadata=(
                ("callstate-script-bin", pb.Script(outcome=pb.OUTCOME_ABORT, abort_code=78).SerializeToString()),))
        assert dict(binary.value.trailing_metadata())["callstate-code"] == "78"
        for header, field in ((("callstate-script", '{"outcome": "abort", "abort_cod": 1}'), "abort_cod"),
                              (("callstate-script", '{"outcome": "abort", "abort_code": 0}'), "abort_code"),
                              (("callstate-script", "not json"), "callstate-script")):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Charge(shop.pb.ChargeRequest(), timeout=10, metadata=(("callstate-call-id", "hdr-bad-1"), header))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in refused.value.details()
            assert dict(refused.value.trailing_metadata())["callstate-code"] == "87"
        # a pipe script names the pipe's fields
        with pytest.raises(grpc.RpcError) as pipe_refused:
            list(stub.Track(shop.pb.TrackRequest(), timeout=10, metadata=(
                ("callstate-call-id", "hdr-bad-1"), ("callstate-script", '{"at": "after-in", "at_count": 1}'))))
        assert pipe_refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at" in pipe_refused.value.details()
        # the server goes on serving, and a refused call was never dispatched
        assert stub.Charge(shop.pb.ChargeRequest(order_id="after"), timeout=10).charge_id == "ok-1"
    assert standin.entries("hdr-bad-1") == []
    assert standin.proc.poll() is None


def test_rules_match_request_fields_metadata_and_answer_with_their_reply(standin: ServerProcess, shop: Any) -> None:
    with grpc.insecure_channel(standin.target) as channel:
        stub = shop.grpc.ShopStub(channel)
        with pytest.raises(grpc.RpcError) as crashed:
            stub.Charge(shop.pb.ChargeRequest(order_id="crash-me"), timeout=10,
                        metadata=(("callstate-call-id", "rule-fatal-1"),))
        assert crashed.value.code() == grpc.StatusCode.UNKNOWN
        with pytest.raises(grpc.RpcError) as declined:
            stub.Charge(shop.pb.ChargeRequest(order_id="eu", amount=shop.money.Money(currency="EUR", units=5)),
                        timeout=10, metadata=(("callstate-call-id", "rule-eur-1"),))
        assert dict(declined.value.trailing_metadata())["callstate-code"] == "4321"
        acme = stub.Charge(shop.pb.ChargeRequest(order_id="t"), timeout=10,
                           metadata=(("x-tenant", "acme"), ("callstate-call-id", "rule-acme-1")))
        assert (acme.status, acme.charge_id) == (shop.pb.STATUS_DECLINED, "acme-1")
        # a header script overrides the rule's script (the rule still gives the reply)
        overridden = stub.Charge(shop.pb.ChargeRequest(order_id="crash-me"), timeout=10, metadata=(
            ("callstate-script", '{"outcome": "complete"}'), ("callstate-call-id", "rule-override-1")))
        assert overridden == shop.pb.ChargeReply()   # the crash rule has no reply: the empty message
    assert final(waited(standin, "rule-fatal-1"))["move"] == "fatal"
    assert {e["rule"] for e in waited(standin, "rule-fatal-1")} == {"crash"}
    assert {e["rule"] for e in waited(standin, "rule-eur-1")} == {"declined"}
    assert {e["rule"] for e in waited(standin, "rule-acme-1")} == {"acme"}
    assert states(waited(standin, "rule-override-1")) == ["D", "Comp", "End"]

    # which rule answered, from the journal: ListCalls by method and by rule, GetCall's entries
    with grpc.insecure_channel(standin.target) as channel:
        journal = pb_grpc.JournalStub(channel)
        crashed_calls = journal.ListCalls(pb.ListCallsRequest(rule="crash"), timeout=10).calls
        assert {c.call_id for c in crashed_calls} == {"rule-fatal-1", "rule-override-1"}
        assert all(c.method == CHARGE and c.rule == "crash" for c in crashed_calls)
        charges = {c.call_id for c in journal.ListCalls(pb.ListCallsRequest(method=CHARGE, limit=1000), timeout=10).calls}
        assert {"rule-fatal-1", "rule-eur-1", "rule-acme-1"} <= charges and "gen-track-1" not in charges
        # grpcurl lists methods as pkg.Svc.Method: that spelling filters too, as a rule's method does
        dotted = journal.ListCalls(pb.ListCallsRequest(method=CHARGE.replace("/", "."), limit=1000), timeout=10).calls
        assert {"rule-fatal-1", "rule-eur-1", "rule-acme-1"} <= {c.call_id for c in dotted}
        wild = {c.call_id for c in journal.ListCalls(pb.ListCallsRequest(method="shop.v1.*/T*", limit=1000),
                                                     timeout=10).calls}
        assert "rule-eur-1" not in wild and all(not c.startswith("rule-") for c in wild)
        history = journal.GetCall(pb.GetCallRequest(call_id="rule-eur-1"), timeout=10)
        assert {(e.method, e.rule) for e in history.entries} == {(CHARGE, "declined")}


def test_a_held_user_call_takes_a_cancel_notice_by_call_id_only_with_its_key(standin: ServerProcess,
                                                                            shop: Any) -> None:
    """The non-abortive cancel: Emulator/Cancel names the call id the stand-in's call carried;
    the cancel key it carried makes it the caller's alone."""
    with grpc.insecure_channel(standin.target) as channel:
        stub, emulator = shop.grpc.ShopStub(channel), pb_grpc.EmulatorStub(channel)
        held = stub.Charge.future(shop.pb.ChargeRequest(order_id="hold"), timeout=30, metadata=(
            ("callstate-call-id", "notice-1"), ("callstate-cancel-key", "k-secret")))
        waited(standin, "notice-1", lambda es: bool(es))
        with pytest.raises(grpc.RpcError) as stranger:
            emulator.Cancel(pb.CancelRequest(call_id="notice-1", cancel_key="k-other"), timeout=10)
        assert stranger.value.code() == grpc.StatusCode.PERMISSION_DENIED
        answer = emulator.Cancel(pb.CancelRequest(call_id="notice-1", cancel_key="k-secret"), timeout=10)
        assert answer.delivered and answer.state == "D"
        with pytest.raises(grpc.RpcError) as ended:
            held.result(timeout=20)
        assert dict(ended.value.trailing_metadata())["callstate-code"] == "1818"
    entries = waited(standin, "notice-1")
    assert [e.get("cancel") for e in entries if e["event"] == "cancel_seen"] == ["non-abortive"]
    assert one_end(entries) and final(entries)["code"] == 1818
    # on_cancel complete: the notice completes the call, with the matching rule's reply
    with grpc.insecure_channel(standin.target) as channel:
        stub, emulator = shop.grpc.ShopStub(channel), pb_grpc.EmulatorStub(channel)
        held = stub.Charge.future(shop.pb.ChargeRequest(order_id="o-anyway"), timeout=30, metadata=(
            ("callstate-call-id", "notice-2"), ("callstate-script", '{"outcome": "hold", "on_cancel": "complete"}')))
        waited(standin, "notice-2", lambda es: bool(es))
        assert emulator.Cancel(pb.CancelRequest(call_id="notice-2"), timeout=10).delivered
        assert held.result(timeout=20).charge_id == "ok-1"
    assert states(waited(standin, "notice-2")) == ["D", "Comp", "End"]


def test_a_generated_client_cancelling_a_held_call_and_a_held_stream_is_seen_by_the_server(
        standin: ServerProcess, shop: Any, tmp_path: Path) -> None:
    with grpc.insecure_channel(standin.target) as channel:
        stub = shop.grpc.ShopStub(channel)
        held = stub.Charge.future(shop.pb.ChargeRequest(order_id="hold"), timeout=30,
                                  metadata=(("callstate-call-id", "abortive-1"),))
        waited(standin, "abortive-1", lambda es: bool(es))
        held.cancel()
        stream = stub.Track(shop.pb.TrackRequest(order_id="forever"), timeout=30,
                            metadata=(("callstate-call-id", "abortive-stream-1"),))
        got = [next(stream) for _ in range(3)]
        assert [e.where for e in got] == ["on the road"] * 3
        stream.cancel()
    for call_id in ("abortive-1", "abortive-stream-1"):
        entries = waited(standin, call_id)
        assert [e.get("cancel") for e in entries if e["event"] == "cancel_seen"] == ["abortive"], call_id
        assert one_end(entries) and final(entries)["code"] == 1818
    assert final(waited(standin, "abortive-stream-1"))["sent"] >= 3
    # the server's log passes the checker on its own
    log = tmp_path / "server-only.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for cid in ("abortive-1", "abortive-stream-1")
                           for e in standin.entries(cid)))
    result = check_files([log])
    assert result.ok, result.errors


def test_max_hold_ends_a_held_user_call(tmp_path: Path, shop: Any) -> None:
    (tmp_path / "rules.yaml").write_text("rules:\n  - method: '*'\n    script: {outcome: hold}\n")
    srv = start_server(tmp_path, "--proto", str(SHOP), "--proto-path", str(PROTOS), "--rules",
                       str(tmp_path / "rules.yaml"), "--max-hold", "0.3")
    try:
        with grpc.insecure_channel(srv.target) as channel:
            with pytest.raises(grpc.RpcError) as timed_out:
                shop.grpc.ShopStub(channel).Charge(shop.pb.ChargeRequest(), timeout=20,
                                                   metadata=(("callstate-call-id", "max-hold-1"),))
        assert dict(timed_out.value.trailing_metadata())["callstate-code"] == "1460"
        assert final(waited(srv, "max-hold-1"))["code"] == 1460
    finally:
        srv.stop()


def wait_stderr(srv: ServerProcess, text: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        err = srv.stderr.read_text()
        if text in err:
            return err
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not on the server's stderr within {timeout}s:\n{srv.stderr.read_text()}")


class EditedFile:
    """A file rewritten in place (truncated, then written), as an editor saves it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write_text(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(text[:5])
            f.flush()
            time.sleep(0.01)   # a half-written file for a moment: the server must not take it
            f.write(text[5:])


def test_the_rules_file_is_reloaded_and_a_bad_edit_keeps_the_last_good_rules(tmp_path: Path, shop: Any) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - method: shop.v1.Shop/Charge\n    reply: {charge_id: first}\n")
    edited = EditedFile(rules)
    srv = start_server(tmp_path, *standin_args(rules))
    try:
        with grpc.insecure_channel(srv.target) as channel:
            stub = shop.grpc.ShopStub(channel)
            assert stub.Charge(shop.pb.ChargeRequest(), timeout=10).charge_id == "first"
            edited.write_text("rules:\n  - method: shop.v1.Shop/Charge\n    reply: {charge_id: second}\n")
            wait_stderr(srv, "reloaded")
            assert stub.Charge(shop.pb.ChargeRequest(), timeout=10).charge_id == "second"
            edited.write_text("rules:\n  - method: shop.v1.Shop/Charge\n    reply: {charge_idd: third}\n")
            err = wait_stderr(srv, "not reloaded")
            assert "rules[0] (shop.v1.Shop/Charge).reply" in err and "charge_idd" in err and ":2:" in err
            assert stub.Charge(shop.pb.ChargeRequest(), timeout=10).charge_id == "second"
            edited.write_text("rules: [oops\n")
            wait_stderr(srv, "not valid YAML")
            assert stub.Charge(shop.pb.ChargeRequest(), timeout=10).charge_id == "second"
        assert srv.proc.poll() is None
    finally:
        srv.stop()


def test_a_descriptor_set_and_another_servers_reflection_are_schemas_too(tmp_path: Path, standin: ServerProcess,
                                                                          shop: Any) -> None:
    described = tmp_path / "shop.pb"
    done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", "--include_imports",
                           f"--descriptor_set_out={described}", "shop/v1/shop.proto"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for args, name in ((("--descriptor-set", str(described)), "from-set"), (("--reflect-from", standin.target),
                                                                             "from-reflection")):
        srv = start_server(tmp_path, *args, "--mix", "complete=100", name=name)
        try:
            with grpc.insecure_channel(srv.target) as channel:
                _, call = shop.grpc.ShopStub(channel).Charge.with_call(shop.pb.ChargeRequest(), timeout=10)
                call_id = server_call_id(call)
            assert {e["method"] for e in waited(srv, call_id)} == {CHARGE}
            assert "standing in for shop.v1.Shop (4 methods" in srv.stderr.read_text()   # not callstate.v1's own
        finally:
            srv.stop()


def test_reflection_v1_and_v1alpha_and_health_name_the_users_services(standin: ServerProcess) -> None:
    from grpc_reflection.v1alpha import reflection_pb2 as rpb

    with grpc.insecure_channel(standin.target) as channel:
        for version in ("v1", "v1alpha"):
            info = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                         request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                                         response_deserializer=rpb.ServerReflectionResponse.FromString)
            listed, found = info(iter([rpb.ServerReflectionRequest(list_services=""),
                                       rpb.ServerReflectionRequest(file_containing_symbol="shop.v1.ChargeRequest")]),
                                 timeout=10)
            names = {s.name for s in listed.list_services_response.service}
            assert {"shop.v1.Shop", "callstate.v1.Emulator", f"grpc.reflection.{version}.ServerReflection"} <= names
            assert found.file_descriptor_response.file_descriptor_proto, version
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="shop.v1.Shop"), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING


BAD_RULES = {
    "unknown-method.yaml": ("rules:\n  - method: shop.v1.Shop/Refund\n", ":2: rules[0].method: no method"),
    "bad-reply.yaml": ("rules:\n  - method: shop.v1.Shop/Charge\n\n    reply: {status: MAYBE}\n",
                       ":2: rules[0] (shop.v1.Shop/Charge).reply: shop.v1.ChargeReply"),
    "bad-match.yaml": ("rules:\n  - method: shop.v1.Shop/Charge\n  - method: shop.v1.Shop/Charge\n"
                       "    match: {request: {amount: {units: lots}}}\n", ":3: rules[1] (shop.v1.Shop/Charge).match.request"),
    "bad-script.yaml": ("rules:\n  - method: shop.v1.Shop/Track\n    script: {outcome: abort}\n",
                        "rules[0] (shop.v1.Shop/Track).script.abort_code"),
    "bad-yaml.yaml": ("rules:\n  - method: [shop\n", "bad-yaml.yaml:3: not valid YAML"),
    "bad-json.json": ('{"rules": [{"method": "shop.v1.Shop/Charge", "mix": {"complete": "x"}}]}',
                      "rules[0].mix: mix entry"),
    "stream-match.yaml": ("rules:\n  - method: shop.v1.Shop/Chat\n    match: {request: {text: hi}}\n",
                          "bidi-streaming method has no single request"),
}


@pytest.mark.parametrize("name", sorted(BAD_RULES))
def test_a_bad_rules_file_is_one_line_and_exit_2_before_serving(tmp_path: Path, name: str) -> None:
    text, expected = BAD_RULES[name]
    (tmp_path / name).write_text(text)
    result = cli("serve", "--port", "0", "--proto", str(SHOP), "--proto-path", str(PROTOS),
                 "--rules", str(tmp_path / name), timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_a_bad_schema_source_is_one_line_and_exit_2(tmp_path: Path, refused_target: str) -> None:
    broken = tmp_path / "broken.proto"
    broken.write_text('syntax = "proto3";\npackage x;\nmessage A {\n  strng name = 1;\n}\n')
    bad_set = tmp_path / "garbage.pb"
    bad_set.write_bytes(b"\xff\xff not a descriptor set")
    cases = [(("--proto", str(broken)), "broken.proto:4:3"),
             (("--proto", str(tmp_path / "missing.proto")), "missing.proto: no such .proto file"),
             (("--descriptor-set", str(bad_set)), "garbage.pb: not a FileDescriptorSet"),
             (("--reflect-from", refused_target), f"reflection from {refused_target}: UNAVAILABLE"),
             (("--proto", str(SHOP), "--descriptor-set", str(bad_set)), "give the schema one way"),
             (("--rules", str(tmp_path / "r.yaml")), "--rules needs a schema")]
    for args, expected in cases:
        result = cli("serve", "--port", "0", *args, timeout=60)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (args, result.stderr)


def test_rules_given_as_json_load_and_a_request_pattern_may_use_json_names(tmp_path: Path, shop: Any) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [
        {"method": "shop.v1.Shop.Charge", "match": {"request": {"orderId": "j-1", "requestedAt": "2026-01-02T03:04:05Z",
                                                               "labels": {"k": "v"}}},
         "script": {"outcome": "abort", "abort_code": 99}},
        {"method": "shop.v1.Shop/Charge", "match": {"request": {"order_id": "j-1"}}, "reply": {"chargeId": "near"}}]}))
    srv = start_server(tmp_path, *standin_args(rules))
    try:
        with grpc.insecure_channel(srv.target) as channel:
            stub = shop.grpc.ShopStub(channel)
            request = shop.pb.ChargeRequest(order_id="j-1", labels={"k": "v", "other": "x"})
            request.requested_at.FromJsonString("2026-01-02T03:04:05Z")
            with pytest.raises(grpc.RpcError) as matched:
                stub.Charge(request, timeout=10)
            assert dict(matched.value.trailing_metadata())["callstate-code"] == "99"
            request.requested_at.FromJsonString("2026-01-02T03:04:06Z")   # one second off: the next rule
            assert stub.Charge(request, timeout=10).charge_id == "near"
    finally:
        srv.stop()


def test_a_held_user_stream_takes_a_cancel_notice_and_metrics_count_user_calls(tmp_path: Path, shop: Any) -> None:
    from tests.test_metrics import by, metrics_url, scrape, wait_for

    (tmp_path / "rules.yaml").write_text("rules:\n  - method: shop.v1.Shop/Track\n    script: {outcome: hold}\n")
    srv = start_server(tmp_path, *standin_args(tmp_path / "rules.yaml"), "--metrics-port", "0")
    try:
        url = wait_for(lambda: metrics_url(srv.stderr), 10, "the metrics URL")
        with grpc.insecure_channel(srv.target) as channel:
            stub, emulator = shop.grpc.ShopStub(channel), pb_grpc.EmulatorStub(channel)
            stream = stub.Track(shop.pb.TrackRequest(), timeout=30, metadata=(
                ("callstate-call-id", "stream-notice-1"), ("callstate-cancel-key", "k-1")))
            next(stream)   # the held stream is pushing
            assert emulator.Cancel(pb.CancelRequest(call_id="stream-notice-1", cancel_key="k-1"), timeout=10).delivered
            with pytest.raises(grpc.RpcError) as ended:
                for _ in stream:
                    pass
            assert dict(ended.value.trailing_metadata())["callstate-code"] == "1818"
            stub.Charge(shop.pb.ChargeRequest(), timeout=10)
        entries = waited(srv, "stream-notice-1")
        assert [e.get("cancel") for e in entries if e["event"] == "cancel_seen"] == ["non-abortive"]
        assert one_end(entries) and final(entries)["code"] == 1818
        ended_codes = wait_for(lambda: (lambda c: c if sum(c.values()) >= 2 else None)(
            by(scrape(url), "callstate_calls_total", "code", side="server")), 10, "two calls counted")
        assert ended_codes == {"1818": 1.0, "0": 1.0}
    finally:
        srv.stop()


def test_a_plain_emulator_serves_reflection_v1_too(shared_server: ServerProcess) -> None:
    from grpc_reflection.v1alpha import reflection_pb2 as rpb

    with grpc.insecure_channel(shared_server.target) as channel:
        info = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                     request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=rpb.ServerReflectionResponse.FromString)
        listed, found = info(iter([rpb.ServerReflectionRequest(list_services=""),
                                   rpb.ServerReflectionRequest(file_containing_symbol="callstate.v1.Script")]),
                             timeout=10)
    names = {s.name for s in listed.list_services_response.service}
    assert {"callstate.v1.Emulator", "callstate.v1.Journal", "grpc.health.v1.Health"} <= names
    assert not any(n.startswith("shop.") for n in names)
    assert found.file_descriptor_response.file_descriptor_proto
