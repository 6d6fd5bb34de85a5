"""Audit of the any-service stand-in from clients that are not callstate's (session 33): a
user's ledger proto (every call shape, well-known types, maps, oneofs, 64-bit integers) served
with rules, driven by grpc-js (cancels and deadlines on request streams, a rules file matching
on metadata, a caller whose .proto drifted from the served one) and by bare grpc with bytes the
served types cannot decode; each judged by the server's state log and `callstate check`.

The tests whose docstring starts "Before:" failed before their fix."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from callstate.logfile import check_files
from tests.conftest import ROOT, ServerProcess, final, read_entries, start_server, states
from tests.test_standin_clients import JS, node_or_skip

PROTOS = ROOT / "tests" / "protos" / "audit33"
DRIFTED = PROTOS / "drifted"
PREFIX = "a33-"

RULES = """\
rules:
  - name: tenant-refused
    method: ledger.v1.Ledger/*
    match:
      metadata: {x-tenant: "blocked"}
    script: {outcome: abort, abort_code: 4403}
  - name: ok-post
    method: ledger.v1.Ledger/Post
    script: {outcome: complete}
    reply: {entry_id: "r-1", accepted: true, balances: {EUR: "12"}}
"""


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("ledger")
    (tmp / "rules.yaml").write_text(RULES)
    srv = start_server(tmp, "--proto", "ledger/v1/ledger.proto", "--proto-path", str(PROTOS),
                       "--rules", str(tmp / "rules.yaml"), "--max-hold", "20", "--mix", "complete=100", name="ledger")
    yield srv
    srv.stop()


def own_check(srv: ServerProcess, call_ids: list[str], tmp_path: Path) -> Any:
    """The checker over the server's lines of these calls alone (a one-sided log: `check --allow-one-side`)."""
    log = tmp_path / "own-server.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in read_entries(srv.log) if e["call_id"] in call_ids))
    return check_files([log])


def grpc_js(srv: ServerProcess, *names: str) -> dict[str, dict[str, Any]]:
    done = subprocess.run([node_or_skip(), str(JS / "ledger_calls.js"), srv.target, str(PROTOS), str(DRIFTED), *names],
                          capture_output=True, text=True, timeout=60, cwd=JS)
    assert done.returncode == 0, done.stderr
    got = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {g["name"]: g for g in got}


CANCELLED, DEADLINE_EXCEEDED, INVALID_ARGUMENT, ABORTED, UNIMPLEMENTED = (
    grpc.StatusCode.CANCELLED.value[0], grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
    grpc.StatusCode.INVALID_ARGUMENT.value[0], grpc.StatusCode.ABORTED.value[0], grpc.StatusCode.UNIMPLEMENTED.value[0])
METHODS = "its methods: Import, Ping, Post, Reconcile, Watch"
UNKNOWN_VOID = f"ledger.v1.Ledger/Void: the stand-in's ledger.v1.Ledger has no method 'Void'; {METHODS}"


def test_grpc_js_cancels_and_deadlines_on_request_streams_end_legally_in_the_servers_log(
        ledger: ServerProcess, tmp_path: Path) -> None:
    """grpc-js's call.cancel() on a client or bidi stream sends END_STREAM before its RST_STREAM:
    the server may take the end for the caller's half-close and complete (End 0) before the reset
    surfaces, or see the cancel (cancel_seen, 1818). Either is a legal race for an abortive
    cancel (server/pipes.py's _HALF_CLOSE_GRACE says why the server does not wait longer); what
    must hold is that every call is logged to one legal end and the logs pass the checker. A
    deadline that expires while the stream is open is always seen. The metadata rule applies to
    a request stream from grpc-js too."""
    cancels = [f"in-cancel-{i}" for i in range(8)] + [f"both-cancel-{i}" for i in range(3)]
    got = grpc_js(ledger, *cancels, "in-deadline", "in-tenant")
    ids = [f"{PREFIX}js-{name}" for name in got]
    for name in cancels + ["in-deadline"]:
        assert got[name]["code"] == (DEADLINE_EXCEEDED if name == "in-deadline" else CANCELLED), got[name]
        entries = ledger.wait_entries(f"{PREFIX}js-{name}")
        seen = [e.get("cancel") for e in entries if e["event"] == "cancel_seen"]
        if name == "in-deadline" or "NP" not in states(entries):
            assert seen == ["abortive"] and final(entries)["code"] == 1818, (name, entries)
        else:   # the end of the stream was taken for the half-close: the call completed first
            assert seen == [] and final(entries)["code"] == 0, (name, entries)
    assert (got["in-tenant"]["code"], got["in-tenant"]["trailer"]) == (ABORTED, "4403")
    tenant = final(ledger.wait_entries(f"{PREFIX}js-in-tenant"))
    assert (tenant["code"], tenant["rule"], tenant["method"]) == (4403, "tenant-refused", "ledger.v1.Ledger/Import")
    judged = own_check(ledger, ids, tmp_path)
    assert judged.ok and judged.calls == len(ids), judged.errors


class _Context:
    """A servicer context whose caller's cancel surfaces `after` seconds from now (None: never)."""

    def __init__(self, after: float | None) -> None:
        self.at = None if after is None else time.monotonic() + after

    def cancelled(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    done = cancelled


def _half_close_after_end_of_stream(cancel_after: float | None) -> tuple[bool, list[str]]:
    """A stand-in's in pipe whose request stream has just ended (no null-push message): whether
    the server took it for the caller's half-close, and the moves it logged."""
    from types import SimpleNamespace

    from callstate.server.pipes import PipeRun
    from callstate.v1 import callstate_pb2 as pb

    moves: list[str] = []
    call = SimpleNamespace(move=lambda move, *args: moves.append(move))
    owner = SimpleNamespace(log_messages=False, config=SimpleNamespace(max_hold=20.0))

    async def run() -> bool:
        pipe = PipeRun(owner, call, "in", pb.PipeScript(outcome=pb.OUTCOME_COMPLETE),   # type: ignore[arg-type]
                       _Context(cancel_after), None)
        pipe.reader_done = pipe.stream_closed = True
        try:
            await pipe.confirm_half_close()
        except asyncio.CancelledError:
            return False
        return pipe.half_closed

    return asyncio.run(run()), moves


def test_an_end_of_stream_whose_cancel_surfaces_within_the_grace_is_a_cancel() -> None:
    """A request stream that ends without the null-push message and whose cancel surfaces a
    moment later (2 ms) is a cancel, not a half-close; one that ends and stays quiet is the
    caller's half-close."""
    assert _half_close_after_end_of_stream(0.002) == (False, [])
    assert _half_close_after_end_of_stream(None) == (True, ["null_pull"])


def test_a_caller_whose_proto_drifted_is_refused_87_naming_the_method_not_left_waiting(
        ledger: ServerProcess, tmp_path: Path) -> None:
    """Before: a request the served type cannot decode (grpc-js with a .proto whose `string id`
    became `bytes`, sending an id that is not UTF-8) was answered UNKNOWN "Unexpected <class
    'google.protobuf.message.DecodeError'>"; as the second message of a request stream it ended
    the server's reader as a cancel would: the log said cancel_seen and 1818, "cancelled by the
    caller", while the caller heard nothing until its own deadline."""
    got = grpc_js(ledger, "drifted-post", "drifted-in", "drifted-void")   # each with a 5 s deadline
    post, pushed = got["drifted-post"], got["drifted-in"]
    assert (post["code"], post["trailer"]) == (INVALID_ARGUMENT, "87"), post
    assert post["details"].startswith("ledger.v1.Ledger/Post: the request is not a ledger.v1.Entry (is the caller's "
                                      ".proto the one served?): "), post
    assert (pushed["code"], pushed["trailer"]) == (INVALID_ARGUMENT, "87"), pushed   # left waiting: 4
    assert pushed["details"].startswith("ledger.v1.Ledger/Import: push 2 is not a ledger.v1.Entry"), pushed
    entries = ledger.wait_entries(f"{PREFIX}js-drifted-in")
    assert not [e for e in entries if e["event"] == "cancel_seen"], entries
    end = final(entries)
    assert (end["code"], end["grpc_status"], end["received"]) == (87, "INVALID_ARGUMENT", 1), end
    assert end["detail"] == pushed["details"]
    assert read_entries(ledger.log, f"{PREFIX}js-drifted-post") == []   # refused before dispatch, as a bad header is
    void = got["drifted-void"]   # Before: UNIMPLEMENTED "Method not found!", naming nothing
    assert (void["code"], void["details"]) == (UNIMPLEMENTED, UNKNOWN_VOID), void
    judged = own_check(ledger, [f"{PREFIX}js-drifted-in"], tmp_path)
    assert judged.ok, judged.errors


SHAPES = [("unary_unary", "Post"), ("unary_stream", "Watch"), ("stream_unary", "Import"),
          ("stream_stream", "Reconcile")]
CORRUPT = b"\x0a\x05ab"   # field 1 says 5 bytes, 2 follow


@pytest.mark.parametrize("shape, method", SHAPES)
def test_bytes_that_are_not_the_request_type_are_refused_87_for_each_call_shape(
        ledger: ServerProcess, shape: str, method: str) -> None:
    """The same refusal from bare grpc, without node: a single request before dispatch (not
    logged), a stream's push where it comes (logged A, End 87; not a cancel), each at once."""
    call_id = f"{PREFIX}raw-{method}"
    stream = shape.startswith("stream")
    with grpc.insecure_channel(ledger.target) as channel:
        rpc = getattr(channel, shape)(f"/ledger.v1.Ledger/{method}", request_serializer=bytes,
                                      response_deserializer=bytes)
        request = iter([b"\x0a\x02ok", CORRUPT]) if stream else CORRUPT
        with pytest.raises(grpc.RpcError) as err:   # left waiting, it would end DEADLINE_EXCEEDED
            out = rpc(request, timeout=10, metadata=(("callstate-call-id", call_id),
                                                     ("callstate-script", '{"outcome": "complete", "messages": 1}')))
            list(out) if shape.endswith("stream") else out
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert dict(err.value.trailing_metadata() or ())["callstate-code"] == "87"
    what = "push 2" if stream else "the request"
    request_type = "WatchRequest" if method == "Watch" else "Entry"
    assert err.value.details().startswith(f"ledger.v1.Ledger/{method}: {what} is not a ledger.v1.{request_type} ")
    if not stream:
        return
    entries = ledger.wait_entries(call_id)
    assert final(entries)["code"] == 87 and not [e for e in entries if e["event"] == "cancel_seen"], entries


@pytest.mark.parametrize("path, details", [
    ("/ledger.v1.Ledger/Void", UNKNOWN_VOID),
    ("/ledger.v1.Ledger/post", f"ledger.v1.Ledger/post: the stand-in's ledger.v1.Ledger has no method 'post' "
                               f"(did you mean Post?); {METHODS}"),
    ("/ledger.v2.Ledger/Post", None)])   # not a service of the stand-in: gRPC's own answer
def test_a_method_the_served_service_lacks_is_named_with_the_ones_it_has(ledger: ServerProcess, path: str,
                                                                        details: str | None) -> None:
    """Before: "Method not found!" for every one, naming neither the method nor what is there."""
    with grpc.insecure_channel(ledger.target) as channel:
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary(path, request_serializer=bytes, response_deserializer=bytes)(b"", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert err.value.details() == details if details else "stand-in" not in err.value.details()


GOOGLEAPIS_USER = """\
syntax = "proto3";
package acme.v1;
import "google/api/annotations.proto";
import "google/type/money.proto";
import "google/rpc/status.proto";
service Items {
  rpc Get(GetRequest) returns (Item) { option (google.api.http) = { get: "/v1/items/{id}" }; }
}
message GetRequest { string id = 1; }
message Item { string id = 1; google.type.Money price = 2; google.rpc.Status status = 3; }
"""


def test_a_proto_importing_googleapis_compiles_when_googleapis_common_protos_is_installed(tmp_path: Path) -> None:
    """Before: `--proto` of a service with HTTP annotations (google/api/annotations.proto), or
    fields of google.type.Money or google.rpc.Status, stopped at "File not found": protoc knew only
    google/protobuf. googleapis-common-protos, when installed (the dev extra has it, through the
    OTLP exporter), ships those .proto files: they are found now, after the user's own folders."""
    from callstate.schema import from_protos
    from callstate.schema.sources import googleapis_folders

    if not {"api", "rpc", "type"} <= set(googleapis_folders()):
        pytest.skip("googleapis-common-protos is not installed: pip install -e '.[dev]' installs it")
    (tmp_path / "acme" / "v1").mkdir(parents=True)
    (tmp_path / "acme" / "v1" / "items.proto").write_text(GOOGLEAPIS_USER)
    schema = from_protos(["acme/v1/items.proto"], [str(tmp_path)])
    item = schema.method("acme.v1.Items/Get").response
    assert item.DESCRIPTOR.fields_by_name["price"].message_type.full_name == "google.type.Money"


def test_without_googleapis_common_protos_the_missing_import_says_where_it_comes_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from callstate.schema import SchemaError, from_protos
    from callstate.schema import sources

    monkeypatch.setattr(sources, "googleapis_folders", dict)
    (tmp_path / "items.proto").write_text(GOOGLEAPIS_USER)
    with pytest.raises(SchemaError) as err:
        from_protos([str(tmp_path / "items.proto")])
    assert str(err.value).startswith("google/api/annotations.proto: File not found. (imports are looked up under ")
    assert str(err.value).endswith("; google/api, google/rpc and google/type are googleapis': pip install "
                                   "googleapis-common-protos and they are found)"), err.value
