"""Third audit of the any-service feature, as a user bringing real-world protos (tests/protos/audit28):
every well-known type in requests and replies, oneof, maps (of bytes and of messages), nested
messages and enums, proto3 `optional`, 64-bit integers, field names that are Python keywords,
the four method shapes, methods whose request or response is a well-known type, two services of
one name in two packages, proto2 with required fields and defaults, and a file with no package.
Callers: grpcurl, buf curl and `callstate call`, each judged by the server's state log.

The tests whose docstring starts "Before:" failed before their fix."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from callstate.rules import RulesError, parse_rules
from callstate.schema import Schema, SchemaError, from_protos, message_from_json
from tests.conftest import ROOT, ServerProcess, cli, ended, final, read_entries, start_server, states
from tests.test_standin_clients import buf_or_skip
from tests.test_third_party_and_crash import run_grpcurl

PROTOS = ROOT / "tests" / "protos" / "audit28"
FILES = ("zoo/v1/zoo.proto", "north/v1/store.proto", "south/v1/store.proto", "legacy/old.proto")

RULES = """\
rules:
  - name: keywords
    method: zoo.v1.Zoo/Find
    match: {request: {from: x, class: c, import: 3, None: true}}
    script: {outcome: complete}
    reply: {name: kw, kind: DOG, big: "9223372036854775807", ubig: 18446744073709551615, photo: "AAEC",
            color: 2, born: "2024-01-02T03:04:05Z", note: n, weight: "5", age: 1.5s, number: "12", nickname: "",
            extra: {"@type": "type.googleapis.com/zoo.common.Tag", key: k, color: RED, blob: "_w=="},
            attrs: {a: [1, x, null]}, scores: {x: "3"}, by_index: {"1": {toes: 4}}, blobs: {b: "AAE="}}
  - name: by-kind-number
    method: zoo.v1.Zoo/Put
    match: {request: {kind: 2}}
    script: {outcome: abort, abort_code: 4001}
  - name: by-photo
    method: zoo.v1.Zoo/Put
    match: {request: {photo: "AAEC"}}
    script: {outcome: abort, abort_code: 4002}
  - name: by-int64
    method: zoo.v1.Zoo/Put
    match: {request: {big: "9223372036854775807"}}
    script: {outcome: abort, abort_code: 4003}
  - name: by-any
    method: zoo.v1.Zoo/Put
    match: {request: {extra: {"@type": "type.googleapis.com/zoo.common.Tag", color: GREEN}}}
    script: {outcome: abort, abort_code: 4004}
  - name: by-timestamp
    method: zoo.v1.Zoo/Put
    match: {request: {born: "2024-01-02T03:04:05Z"}}
    script: {outcome: abort, abort_code: 4005}
  - name: by-wrapper-value
    method: zoo.v1.Zoo/ByName
    match: {request: rex}
    script: {outcome: abort, abort_code: 4006}
  - name: now
    method: zoo.v1.Zoo/Now
    script: {outcome: complete}
    reply: "2026-02-03T04:05:06Z"
  - name: raw
    method: zoo.v1.Zoo/Raw
    match: {request: {k: v}}
    script: {outcome: complete}
    reply: {ok: true}
  - name: feed
    method: zoo.v1.Zoo/Feed
    script: {outcome: complete, messages: 2}
    reply: {name: fed}
  - name: chat
    method: zoo.v1.Zoo/Chat
    script: {outcome: complete, messages: 1}
    reply: {name: chatted}
  - name: north
    method: north.v1.Store/Get
    script: {outcome: abort, abort_code: 4101}
  - name: south
    method: south.v1.Store/Get
    match: {request: {inner: {id: s}}}
    script: {outcome: complete}
    reply: {id: s, where: south}
"""


@pytest.fixture(scope="module")
def schema() -> Schema:
    return from_protos(list(FILES), [PROTOS])


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("audit28")
    (tmp / "rules.yaml").write_text(RULES)
    protos = [arg for f in FILES for arg in ("--proto", f)]
    srv = start_server(tmp, *protos, "--proto-path", str(PROTOS), "--rules", str(tmp / "rules.yaml"),
                       "--mix", "complete=100", "--max-hold", "20", name="zoo")
    yield srv
    srv.stop()


def grpcurl_call(srv: ServerProcess, method: str, data: str | None, call_id: str) -> subprocess.CompletedProcess[str]:
    args = ["-H", f"callstate-call-id: {call_id}", *(["-d", data] if data is not None else []), srv.target, method]
    return run_grpcurl(*args)


def settled(srv: ServerProcess) -> Path:
    """The server's log once every call in it has its End written (the writer thread may lag the
    reply a client already has): `check` then judges whole calls, whichever tests ran before."""
    for call_id in {e["call_id"] for e in read_entries(srv.log)}:
        assert ended(srv.wait_entries(call_id)), call_id
    return srv.log


# -- reflection describes an enum value -------------------------------------------------------

@pytest.mark.parametrize("symbol, says", [
    ("zoo.common.Color.RED", "zoo.common.Color.RED is an enum value:\nRED = 1;"),        # imported, top level
    ("zoo.v1.Animal.Kind.DOG", "zoo.v1.Animal.Kind.DOG is an enum value:\nDOG = 2;"),     # nested in a message
    ("Size.LARGE", "Size.LARGE is an enum value:\nLARGE = 2;"),                           # a file with no package
    ("callstate.v1.Outcome.OUTCOME_ABORT", "callstate.v1.Outcome.OUTCOME_ABORT is an enum value"),   # the server's own
])
def test_grpcurl_describes_an_enum_value(zoo: ServerProcess, symbol: str, says: str) -> None:
    """Before: `grpcurl describe zoo.common.Color.RED` was "Symbol not found": grpcurl names a value
    within its enum, and protobuf's pool knows it only as the enum's sibling (zoo.common.RED)."""
    out = run_grpcurl(zoo.target, "describe", symbol)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(says), out.stdout


def test_grpcurl_describes_enums_and_still_misses_what_is_not_there(zoo: ServerProcess) -> None:
    for symbol, says in (("zoo.common.Color", "zoo.common.Color is an enum:"), ("Size", "Size is an enum:"),
                         ("zoo.v1.Animal.Kind", "zoo.v1.Animal.Kind is an enum:"),
                         ("Parts.Put", "Parts.Put is a method:"), ("zoo.v1.Animal.id", "zoo.v1.Animal.id is a one-of:")):
        out = run_grpcurl(zoo.target, "describe", symbol)
        assert out.returncode == 0 and out.stdout.startswith(says), (symbol, out.stdout, out.stderr)
    for missing in ("zoo.common.Color.BLUE", "zoo.v1.Animal.Kind.Kind", "zoo.v1.Zoo.Nope.X"):
        out = run_grpcurl(zoo.target, "describe", missing)
        assert out.returncode != 0 and "Symbol not found" in out.stderr, (missing, out.stderr)


# -- bytes in JSON are base64 ---------------------------------------------------------------------

@pytest.mark.parametrize("data, path, value", [
    ({"photo": "!!"}, "photo", "!!"),                                     # protobuf made it b""
    ({"photo": "hello world"}, "photo", "hello world"),                   # "Incorrect padding"
    ({"paws": [{}, {"print": "a*b="}]}, "paws[1].print", "a*b="),
    ({"blobs": {"k": "no way"}}, "blobs[k]", "no way"),
    ({"tags": [{"blob": "%%"}]}, "tags[0].blob", "%%"),
    ({"extra": {"@type": "type.googleapis.com/zoo.common.Tag", "blob": "?"}}, "extra.blob", "?"),
    ({"extra": {"@type": "type.googleapis.com/google.protobuf.BytesValue", "value": "a b"}}, "extra.value", "a b"),
])
def test_bytes_that_are_not_base64_are_refused_naming_the_field(schema: Schema, data: dict[str, object],
                                                                path: str, value: str) -> None:
    """Before: protobuf's parser dropped the characters outside base64's alphabet: `"photo": "!!"`
    went out as empty bytes (and `"a*b="` as other bytes than written), with exit 0."""
    put = schema.method("zoo.v1.Zoo/Put")
    with pytest.raises(SchemaError) as err:
        message_from_json(put.request, data, where="--data")
    assert str(err.value) == (f"--data: zoo.v1.Animal: {path}: {json.dumps(value)} is not base64 (bytes are "
                              'written in base64 in JSON: "aGk=" for "hi")')
    # both alphabets, padded or not, still parse (Go's protojson takes them all)
    ok = message_from_json(put.request, {"photo": "-_8", "paws": [{"print": "+/8="}], "blobs": {"k": "AA"}},
                           where="--data")
    assert (ok.photo, ok.paws[0].print, ok.blobs["k"]) == (b"\xfb\xff", b"\xfb\xff", b"\x00")


def test_call_and_serve_refuse_bytes_that_are_not_base64(zoo: ServerProcess, schema: Schema, tmp_path: Path) -> None:
    """Before: `callstate call --data '{"photo": "!!"}'` sent the empty photo and exited 0; a rule's
    reply `{photo: "not base64"}` loaded and sent other bytes."""
    done = cli("call", "--target", zoo.target, "--method", "zoo.v1.Zoo/Put", "--data", '{"photo": "!!"}',
               "--json")
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert done.stderr.strip().splitlines() == [
        'callstate call: --data: zoo.v1.Animal: photo: "!!" is not base64 (bytes are written in base64 in JSON: '
        '"aGk=" for "hi")']
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - method: zoo.v1.Zoo/Find\n    reply: {photo: not base64}\n")
    bad = cli("serve", "--port", "0", "--proto", FILES[0], "--proto-path", str(PROTOS), "--rules", str(rules))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        f'callstate serve: {rules}:2: rules[0] (zoo.v1.Zoo/Find).reply: zoo.v1.Animal: photo: "not base64" is not '
        'base64 (bytes are written in base64 in JSON: "aGk=" for "hi")']


# -- a request of a well-known type is matched by its JSON value ---------------------------------

def test_a_rule_matches_a_wrapper_request_by_its_value(zoo: ServerProcess, schema: Schema) -> None:
    """Before: `match: {request: rex}` for `rpc ByName(google.protobuf.StringValue)` refused the whole
    rules file ("a mapping: a subset of the request's JSON form"), while a reply of such a type
    was taken as its JSON value: no rule could tell two such requests apart."""
    aborted = grpcurl_call(zoo, "zoo.v1.Zoo/ByName", '"rex"', "a28-byname-rex")
    assert aborted.returncode != 0 and "4006" in aborted.stderr, aborted.stderr
    assert final(zoo.wait_entries("a28-byname-rex"))["code"] == 4006
    other = grpcurl_call(zoo, "zoo.v1.Zoo/ByName", '"tom"', "a28-byname-tom")
    assert other.returncode == 0, other.stderr
    assert final(zoo.wait_entries("a28-byname-tom"))["code"] == 0
    every = parse_rules("rules:\n  - method: 'zoo.v1.Zoo/*'\n    match: {request: rex}\n"
                        "    script: {outcome: complete}\n", schema)
    assert sorted(every.by_method) == ["zoo.v1.Zoo/ByName"]   # a wildcard: the methods whose request is a value
    for method, pattern, why in (
            ("zoo.v1.Zoo/Find", "rex", "rules[0].match.request: a mapping: a subset of the request's JSON form"),
            ("zoo.v1.Zoo/Now", "rex", "rules[0].match.request: a mapping: a subset of the request's JSON form"),
            ("zoo.v1.Zoo/ByName", "2024-01-02", "rules[0] (zoo.v1.Zoo/ByName).match.request: date is not a JSON "
                                                 "value: quote it")):
        with pytest.raises(RulesError) as err:
            parse_rules(f"rules:\n  - method: {method}\n    match: {{request: {pattern}}}\n", schema)
        assert str(err.value) == f"rules:2: {why}"


# -- what was checked and holds: the real-world protos end to end --------------------------------

def test_grpcurl_calls_every_field_kind_and_shape(zoo: ServerProcess) -> None:
    found = grpcurl_call(zoo, "zoo.v1.Zoo/Find", '{"from": "x", "class": "c", "import": 3, "None": true}', "a28-find")
    assert found.returncode == 0, found.stderr
    reply = json.loads(found.stdout)
    assert (reply["name"], reply["kind"], reply["big"], reply["ubig"], reply["photo"], reply["color"]) == (
        "kw", "DOG", "9223372036854775807", "18446744073709551615", "AAEC", "GREEN")
    assert (reply["born"], reply["note"], reply["weight"], reply["number"], reply["nickname"]) == (
        "2024-01-02T03:04:05Z", "n", "5", "12", "")
    assert reply["extra"] == {"@type": "type.googleapis.com/zoo.common.Tag", "key": "k", "color": "RED", "blob": "/w=="}
    assert reply["attrs"] == {"a": [1, "x", None]} and reply["blobs"] == {"b": "AAE="}
    assert reply["scores"] == {"x": "3"} and reply["byIndex"] == {"1": {"toes": 4}}
    for data, code in (('{"kind": 2}', 4001), ('{"kind": "DOG"}', 4001), ('{"photo": "AAEC"}', 4002),
                       ('{"big": "9223372036854775807"}', 4003),
                       ('{"extra": {"@type": "type.googleapis.com/zoo.common.Tag", "color": "GREEN"}}', 4004),
                       ('{"born": "2024-01-02T04:04:05+01:00"}', 4005)):
        done = grpcurl_call(zoo, "zoo.v1.Zoo/Put", data, f"a28-put-{code}-{len(data)}")
        assert done.returncode != 0 and str(code) in done.stderr, (data, done.stderr)
        assert final(zoo.wait_entries(f"a28-put-{code}-{len(data)}"))["code"] == code
    now = grpcurl_call(zoo, "zoo.v1.Zoo/Now", None, "a28-now")
    assert json.loads(now.stdout) == "2026-02-03T04:05:06Z", now.stderr
    raw = grpcurl_call(zoo, "zoo.v1.Zoo/Raw", '{"k": "v", "z": [1]}', "a28-raw")
    assert json.loads(raw.stdout) == {"ok": True}, raw.stderr
    feed = grpcurl_call(zoo, "zoo.v1.Zoo/Feed", "{}", "a28-feed")
    assert feed.returncode == 0 and feed.stdout.count('"fed"') == 2, feed.stderr
    load = grpcurl_call(zoo, "zoo.v1.Zoo/Load", '{"name": "a"} {"name": "b"}', "a28-load")
    assert load.returncode == 0, load.stderr
    chat = grpcurl_call(zoo, "zoo.v1.Zoo/Chat", '{"name": "a"} {"name": "b"}', "a28-chat")
    assert chat.returncode == 0 and chat.stdout.count('"chatted"') == 1, chat.stderr
    for call_id, first, sent, received in (("a28-feed", "Push", 2, 0), ("a28-load", "Pull", 0, 2),
                                           ("a28-chat", "Push", 1, 2)):   # the pipe each shape maps onto
        entries = zoo.wait_entries(call_id)
        assert states(entries)[:2] == ["D", first], (call_id, states(entries))
        assert (final(entries)["code"], final(entries)["sent"], final(entries)["received"]) == (0, sent, received)
    checked = cli("check", "--allow-one-side", str(settled(zoo)))
    assert checked.returncode == 0, checked.stdout


def test_two_services_of_one_name_in_two_packages(zoo: ServerProcess, tmp_path: Path) -> None:
    north = grpcurl_call(zoo, "north.v1.Store/Get", '{"id": "n"}', "a28-north")
    assert north.returncode != 0 and "4101" in north.stderr, north.stderr
    south = grpcurl_call(zoo, "south.v1.Store.Get", '{"inner": {"id": "s"}}', "a28-south")
    assert json.loads(south.stdout) == {"id": "s", "where": "south"}, south.stderr
    assert [(e["method"], e["rule"]) for e in zoo.wait_entries("a28-north")][-1] == ("north.v1.Store/Get", "north")
    assert [(e["method"], e["rule"]) for e in zoo.wait_entries("a28-south")][-1] == ("south.v1.Store/Get", "south")
    log = tmp_path / "client.jsonl"
    done = cli("call", "--target", zoo.target, "--method", "south.v1.Store/Get", "--data", '{"inner": {"id": "s"}}',
               "--no-script", "--log-file", str(log))
    assert done.returncode == 0 and 'final: 0 RPC_S_OK: reply {"id":"s","where":"south"}' in done.stderr, done.stderr
    checked = cli("check", str(log), str(settled(zoo)))
    assert checked.returncode == 0, checked.stdout


def test_callstate_call_with_json_as_users_write_it(zoo: ServerProcess, tmp_path: Path) -> None:
    """int64 as strings, enums by name and by number, bytes as base64, a keyword field, an Any of
    the schema's own type: each reaches the rule that names it; the client and server logs check."""
    log = tmp_path / "client.jsonl"
    for data, code in (('{"kind": 2}', 4001), ('{"kind": "DOG"}', 4001), ('{"photo": "AAEC"}', 4002),
                       ('{"big": "9223372036854775807"}', 4003),
                       ('{"extra": {"@type": "type.googleapis.com/zoo.common.Tag", "color": 2}}', 4004)):
        done = cli("call", "--target", zoo.target, "--method", "zoo.v1.Zoo/Put", "--data", data, "--no-script",
                   "--log-file", str(log))
        assert done.returncode == 1 and f"final: {code}" in done.stderr, (data, done.stderr)
    found = cli("call", "--target", zoo.target, "--method", "zoo.v1.Zoo.Find", "--data",
                '{"from": "x", "class": "c", "import": 3, "None": true}', "--no-script", "--log-file", str(log))
    assert found.returncode == 0 and '"name":"kw"' in found.stderr, found.stderr
    legacy = cli("call", "--target", zoo.target, "--method", "Parts/Put", "--data",
                 '{"sku": "s", "inner": {"n": "5"}}', "--outcome", "complete", "--log-file", str(log))
    assert legacy.returncode == 0, legacy.stderr
    # no rule: the proto2 reply's required fields are at their defaults (optional ones left unset)
    assert 'reply {"inner":{"n":"0"},"sku":""}' in legacy.stderr, legacy.stderr
    assert len({e["call_id"] for e in read_entries(log)}) == 7
    checked = cli("check", str(log), str(settled(zoo)))
    assert checked.returncode == 0, checked.stdout


@pytest.mark.parametrize("args, line", [
    (["--method", "zoo.v1.Zoo/Nope"], "callstate call: unknown method 'zoo.v1.Zoo/Nope' (did you mean zoo.v1.Zoo/Now?); "
                                      "the schema has: Parts/Put, "
                                      "north.v1.Store/Get, south.v1.Store/Get, zoo.v1.Zoo/ByName, "),
    (["--method", "zoo.v1.Zoo"], "callstate call: unknown method 'zoo.v1.Zoo' (zoo.v1.Zoo is a service: name one of "
                                 "its methods, zoo.v1.Zoo/Method); the schema has: Parts/Put, "),
    (["--method", "zoo.v1.Zoo/Put", "--data", '{"nmae": "a"}'],
     'callstate call: --data: zoo.v1.Animal: Message type "zoo.v1.Animal" has no field named "nmae" at "Animal".'),
    (["--method", "zoo.v1.Zoo/Put", "--data", '{"kind": "HORSE"}'],
     "callstate call: --data: zoo.v1.Animal: Failed to parse kind field: Invalid enum value HORSE for enum type "
     "zoo.v1.Animal.Kind at Animal.kind."),
    (["--method", "zoo.v1.Zoo/Put", "--data", '{"big": "12x"}'],
     "callstate call: --data: zoo.v1.Animal: Failed to parse big field: invalid literal for int() with base 10: "
     "'12x'."),
    (["--method", "Parts/Put", "--data", '{"sku": "s"}'],
     "callstate call: --data: Part: required field not set: inner"),
    (["--method", "zoo.v1.Zoo/Put", "--data", '{"uuid": "a", "number": "1"}'],
     'callstate call: --data: zoo.v1.Animal: Message type "zoo.v1.Animal" should not have multiple "id" oneof '
     'fields at "Animal".'),
])
def test_bad_input_is_one_line_and_exit_2(zoo: ServerProcess, args: list[str], line: str) -> None:
    """Before (the first two): the schema read by reflection listed the server's own 13 methods
    (callstate.v1.*, grpc.health.v1.*) before the user's, and a service's name was only unknown."""
    done = cli("call", "--target", zoo.target, *args)
    assert done.returncode == 2 and done.stdout == "", done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), done.stderr


def test_buf_curl_calls_well_known_types_and_64_bit_integers(zoo: ServerProcess, tmp_path: Path) -> None:
    buf, url = buf_or_skip(), f"http://{zoo.target}"
    headers = tmp_path / "headers.txt"
    headers.write_text("callstate-call-id: a28-buf-put\n")
    put = subprocess.run([buf, "curl", "--protocol", "grpc", "-H", f"@{headers}", "-d",
                          '{"big": "9223372036854775807"}', f"{url}/zoo.v1.Zoo/Put"],
                         capture_output=True, text=True, timeout=60)
    assert put.returncode != 0 and json.loads(put.stderr)["code"] == "aborted", put.stderr
    assert final(zoo.wait_entries("a28-buf-put"))["code"] == 4003
    now = subprocess.run([buf, "curl", "--protocol", "grpc", f"{url}/zoo.v1.Zoo/Now"],
                         capture_output=True, text=True, timeout=60)
    assert now.returncode == 0 and json.loads(now.stdout) == "2026-02-03T04:05:06Z", now.stderr
    headers.write_text("callstate-call-id: a28-buf-byname\n")
    by_name = subprocess.run([buf, "curl", "--protocol", "grpc", "-H", f"@{headers}", "-d", '"rex"',
                              f"{url}/zoo.v1.Zoo/ByName"], capture_output=True, text=True, timeout=60)
    assert by_name.returncode != 0, by_name.stderr
    assert final(zoo.wait_entries("a28-buf-byname"))["code"] == 4006


def test_fields_named_as_yaml_booleans_are_fields_in_a_rules_file(tmp_path: Path) -> None:
    """Before: `match: {request: {on: true}}` on a field named `on` (or `no`, `yes`, `off`, `null`)
    refused the rules file with "Failed to parse True field": YAML 1.1 reads those plain keys as
    true, false and None. A rules file's keys are text, as JSON's are."""
    (tmp_path / "switch.proto").write_text('syntax = "proto3";\npackage switch.v1;\n'
                                           "message Flip { bool on = 1; int32 no = 2; string null = 3; bool off = 4; }\n"
                                           "service Switch { rpc Set(Flip) returns (Flip); }\n")
    schema = from_protos([tmp_path / "switch.proto"])
    rules = parse_rules("rules:\n  - method: switch.v1.Switch/Set\n    match: {request: {on: true, no: 3, null: x}}\n"
                        "    script: {outcome: abort, abort_code: 4201}\n"
                        "  - method: switch.v1.Switch/Set\n    reply: {on: yes, off: no, no: 5}\n", schema)
    flip = schema.method("switch.v1.Switch/Set").request
    hit = rules.first_match("switch.v1.Switch/Set", {}, flip(on=True, no=3, null="x"))
    assert hit is not None and hit.script.abort_code == 4201   # type: ignore[union-attr]
    other = rules.first_match("switch.v1.Switch/Set", {}, flip(on=True, no=4, null="x"))
    assert other is not None and other.label == "rules[1]"
    assert (other.reply.on, other.reply.off, other.reply.no) == (True, False, 5)   # type: ignore[union-attr]
    # a merge key still merges, and values keep YAML's reading (`yes` is true for a bool field)
    merged = parse_rules("rules:\n  - &set {method: switch.v1.Switch/Set, script: {outcome: complete}}\n"
                         "  - <<: *set\n    match: {request: {off: true}}\n", schema)
    assert [r.request for r in merged.by_method["switch.v1.Switch/Set"]] == [None, {"off": True}]


def test_a_streaming_rule_whose_script_sends_no_message_is_refused_with_its_reply(schema: Schema,
                                                                                  tmp_path: Path) -> None:
    """Before: a rule `script: {outcome: complete}` with `reply: {name: chatted}` on a bidi (or
    server-streaming) method loaded, and every call ended OK with no message at all: the reply is
    sent as each of the script's messages, and a script that does not say how many sends none
    (where no rule at all sends three)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - method: zoo.v1.Zoo/Chat\n    script: {outcome: complete}\n    reply: {name: chatted}\n")
    done = cli("serve", "--port", "0", "--proto", FILES[0], "--proto-path", str(PROTOS), "--rules", str(rules))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"callstate serve: {rules}:2: rules[0] (zoo.v1.Zoo/Chat).script.messages: 0 (not given), so the "
        "bidi-streaming method would never send its reply (sent as each of the stream's messages): give messages: N"]
    with pytest.raises(RulesError, match=r"\(zoo.v1.Zoo/Feed\).script.messages: 0 \(not given\), so the "
                                         "server-streaming method"):
        parse_rules("rules:\n  - method: zoo.v1.Zoo/Feed\n    script: {abort_code: 7}\n    reply: {name: x}\n", schema)
    for fine in ("script: {outcome: complete, messages: 1}\n    reply: {name: x}",   # says how many
                 "script: {outcome: hold}\n    reply: {name: x}",                    # sends until its end
                 "mix: {complete: 1}\n    reply: {name: x}",                         # no script: the default count
                 "script: {outcome: complete}"):                                     # no reply to lose
        assert parse_rules(f"rules:\n  - method: zoo.v1.Zoo/Chat\n    {fine}\n", schema).count == 1
    # a client stream has one reply, sent whatever the count
    assert parse_rules("rules:\n  - method: zoo.v1.Zoo/Load\n    script: {outcome: complete}\n    reply: {}\n",
                       schema).count == 1


def test_reflection_v1_and_v1alpha_find_an_enum_value_by_either_name(zoo: ServerProcess) -> None:
    """Before: v1 (newer grpcurl, Postman) and v1alpha alike answered NOT_FOUND for
    "zoo.common.Color.RED"; the value's own full name, its enum's sibling "zoo.common.RED", was found."""
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2 as rpb

    with grpc.insecure_channel(zoo.target) as channel:
        for version in ("v1", "v1alpha"):
            info = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                         request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                                         response_deserializer=rpb.ServerReflectionResponse.FromString)
            for symbol in ("zoo.common.Color.RED", "zoo.common.RED", "zoo.v1.Animal.Kind.CAT", "zoo.v1.Animal.CAT"):
                answer = next(iter(info(iter([rpb.ServerReflectionRequest(file_containing_symbol=symbol)]),
                                        timeout=30)))
                assert not answer.HasField("error_response"), (version, symbol, answer.error_response)
                names = {descriptor_name(raw) for raw in answer.file_descriptor_response.file_descriptor_proto}
                assert ("zoo/common/types.proto" if "common" in symbol else "zoo/v1/zoo.proto") in names
            missing = next(iter(info(iter([rpb.ServerReflectionRequest(file_containing_symbol="zoo.common.Color.BLUE")]),
                                     timeout=30)))
            assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def descriptor_name(raw: bytes) -> str:
    from google.protobuf import descriptor_pb2

    return descriptor_pb2.FileDescriptorProto.FromString(raw).name


REAL_SERVER = """\
import os
import sys
from concurrent import futures

import grpc
from grpc_reflection.v1alpha import reflection

from legacy import old_pb2_grpc
from zoo.v1 import zoo_pb2_grpc

server = grpc.server(futures.ThreadPoolExecutor(2))
zoo_pb2_grpc.add_ZooServicer_to_server(zoo_pb2_grpc.ZooServicer(), server)
old_pb2_grpc.add_PartsServicer_to_server(old_pb2_grpc.PartsServicer(), server)
reflection.enable_server_reflection(("zoo.v1.Zoo", "Parts", reflection.SERVICE_NAME), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(port))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])   # whole, or not there
server.wait_for_termination()
"""


def test_a_standin_read_from_a_real_servers_reflection_describes_its_enum_values(tmp_path: Path) -> None:
    """A user's own server (grpcio, generated code, the standard reflection) read by --reflect-from:
    the stand-in describes the enum values, the package-less service and its methods to grpcurl,
    and answers a call on its package-less service."""
    made = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"--python_out={tmp_path}",
                           f"--grpc_python_out={tmp_path}", *FILES, "zoo/common/types.proto"], capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    (tmp_path / "real.py").write_text(REAL_SERVER)
    port_file = tmp_path / "real.port"
    real = subprocess.Popen([sys.executable, "real.py", str(port_file)], cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert real.poll() is None and time.monotonic() < deadline, real.stderr.read() if real.stderr else ""
            time.sleep(0.05)
        srv = start_server(tmp_path, "--reflect-from", f"127.0.0.1:{port_file.read_text()}", "--mix", "complete=100",
                           name="mirror")
        try:
            for symbol, says in (("zoo.common.Color.GREEN", "zoo.common.Color.GREEN is an enum value:\nGREEN = 2;"),
                                 ("Size.SMALL", "Size.SMALL is an enum value:\nSMALL = 1;"),
                                 ("Parts.Put", "Parts.Put is a method:")):
                out = run_grpcurl(srv.target, "describe", symbol)
                assert out.returncode == 0 and out.stdout.startswith(says), (symbol, out.stdout, out.stderr)
            done = grpcurl_call(srv, "Parts/Put", '{"sku": "s", "inner": {"n": "1"}}', "a28-mirror-parts")
            assert json.loads(done.stdout) == {"sku": "", "inner": {"n": "0"}}, done.stderr
            assert final(srv.wait_entries("a28-mirror-parts"))["code"] == 0
        finally:
            srv.stop()
    finally:
        real.terminate()
        real.wait(10)


def test_python_bytes_in_a_request_dict_are_those_bytes(zoo: ServerProcess, schema: Schema, tmp_path: Path) -> None:
    """Before: `request={"photo": b"\\x00\\x01\\x02"}` (a Python user's natural way) was decoded as if
    it were base64 text: b"" went out and no rule on the photo matched; `bytearray(b"ab")` went
    out as b"i"; a rules file's `!!binary` value, the same."""
    from callstate.client import Client
    from callstate.errors import CallError

    log = tmp_path / "client.jsonl"
    with Client(zoo.target, log=str(log)) as client:   # no script: the rules decide
        with pytest.raises(CallError) as err:
            client.start(method="zoo.v1.Zoo/Put", request={"photo": b"\x00\x01\x02"}).result(30)
        assert err.value.code == 4002   # the by-photo rule, `photo: "AAEC"`
    assert ended(zoo.wait_entries(read_entries(log)[0]["call_id"]))
    put = schema.method("zoo.v1.Zoo/Put")
    got = message_from_json(put.request, {"blobs": {"k": bytearray(b"ab")}, "paws": [{"print": memoryview(b"\xff")}],
                                          "extra": {"@type": "type.googleapis.com/google.protobuf.BytesValue",
                                                    "value": b"zz"}}, where="request")
    assert (got.blobs["k"], got.paws[0].print) == (b"ab", b"\xff")
    assert got.extra.value == b"\n\x02zz"   # the packed BytesValue's own bytes
    rules = parse_rules("rules:\n  - method: zoo.v1.Zoo/Put\n    match: {request: {photo: !!binary AAEC}}\n"
                        "    script: {outcome: abort, abort_code: 4002}\n", schema)
    assert rules.first_match(put.name, {}, put.request(photo=b"\x00\x01\x02")) is not None
    assert rules.first_match(put.name, {}, put.request(photo=b"")) is None


def test_the_start_line_says_which_methods_are_streamed_as_pipes(zoo: ServerProcess) -> None:
    """Before: "standing in for ... (11 methods; rules: ...)": nothing said that the streaming
    methods are served too, nor as what (the pipe of their shape, scripted by rules or a header)."""
    deadline = time.monotonic() + 30
    while "standing in for" not in (text := zoo.stderr.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ("callstate: standing in for Parts, north.v1.Store, south.v1.Store, zoo.v1.Zoo (11 methods, 3 streamed as "
            "pipes: 1 server-streaming, 1 client-streaming, 1 bidi-streaming; rules: 13 rules for 9 methods from "
            in text), text
