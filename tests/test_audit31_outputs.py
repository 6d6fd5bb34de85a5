"""Audit 31: outputs of the stand-in's options that said the wrong thing or too little.

Each test names what the output was before. All in process but the one CLI run of item 1 (the
one line and exit 2 of a command) and the two peers of item 2 (a TLS server, a silent listener).
"""

from __future__ import annotations

import argparse
import socket
import threading
from concurrent import futures
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from callstate.check import Checker, check_entries
from callstate.cli.report.html_report import render
from callstate.cli.report.run_report import build_from_files
from callstate.cli.method_options import DriveError, drive_of
from callstate.cli.standin_options import load_standin
from callstate.client.channel import ChannelSettings
from callstate.schema import SchemaError, from_descriptor_set, from_protos, from_reflection, message_from_json
from callstate.statelog import Entry
from tests.certs import make_tls_files
from tests.conftest import cli

pytestmark = pytest.mark.timeout(60)


def standin(tmp_path: Path, **given: object) -> argparse.Namespace:
    """`callstate serve`'s stand-in options, as parsed, with `given` set."""
    opts = {"proto": [], "proto_path": [], "descriptor_set": None, "reflect_from": None, "rules": None}
    return argparse.Namespace(**{**opts, **given})


# -- 1. a descriptor set that is a device or an empty file -------------------------------------
def test_a_device_or_an_empty_file_as_the_descriptor_set_is_named_as_such(tmp_path: Path) -> None:
    """Before: "/dev/null: no such descriptor-set file" (it is there), and an empty file "holds no
    .proto file"."""
    with pytest.raises(SchemaError, match=r"^/dev/null: not a regular file \(a device or a FIFO\), so not a "
                                          r"descriptor set: protoc --include_imports -o FILE"):
        from_descriptor_set("/dev/null")
    empty = tmp_path / "empty.pb"
    empty.write_bytes(b"")
    with pytest.raises(SchemaError, match=rf"^{empty}: the file is empty, not a descriptor set"):
        from_descriptor_set(empty)
    with pytest.raises(SchemaError, match=rf"^{tmp_path}: a folder, not a descriptor-set file$"):
        from_descriptor_set(tmp_path)
    with pytest.raises(SchemaError, match=rf"^{tmp_path}/none.pb: no such descriptor-set file$"):
        from_descriptor_set(tmp_path / "none.pb")
    done = cli("serve", "--descriptor-set", "/dev/null")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == ["callstate serve: /dev/null: not a regular file (a device or a FIFO), so not "
                                        "a descriptor set: protoc --include_imports -o FILE, or buf build -o FILE, "
                                        "writes one"], done.stderr


# -- 2. --reflect-from against a TLS server, and against a peer that never answers ---------------
@pytest.fixture
def tls_peer(tmp_path: Path) -> Iterator[str]:
    """An in-process gRPC server that speaks TLS only (no service needed: the handshake fails first)."""
    tls = make_tls_files(tmp_path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    creds = grpc.ssl_server_credentials([(tls.server_key.read_bytes(), tls.server_cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def test_reflect_from_a_tls_server_says_it_reads_plaintext_only(tmp_path: Path, tls_peer: str) -> None:
    """Before: "reflection from HOST:PORT: UNAVAILABLE: ...: Socket closed", and nothing more."""
    with pytest.raises(ValueError) as caught:
        load_standin(standin(tmp_path, reflect_from=tls_peer), None)
    text = str(caught.value)
    assert text.startswith(f"reflection from {tls_peer}: UNAVAILABLE: "), text
    assert text.endswith("(the server closed a plaintext connection: if it uses TLS, --reflect-from cannot read it: "
                         "it reads reflection in plaintext only, and serve has no TLS options for it; give the schema "
                         "with --proto or --descriptor-set)"), text
    # `callstate call`'s reading of the target's reflection has TLS options: it names them
    call = argparse.Namespace(method="shop.v1.Shop/Charge", data=None, data_file=None, proto=[], proto_path=[],
                              descriptor_set=None, no_script=False, target=tls_peer)
    with pytest.raises(DriveError, match=r"Socket closed \(the server closed a plaintext connection: if it uses "
                                         r"TLS, pass --tls-ca\) \(or give the schema with --proto or "
                                         r"--descriptor-set\)$"):
        drive_of(call, ChannelSettings(keepalive=None))


def test_reflect_from_a_peer_that_never_answers_says_so_within_the_timeout() -> None:
    """Before: after 10 s, "DEADLINE_EXCEEDED: Deadline Exceeded"."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    taken: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:   # take each connection, read nothing
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                taken.append(listener.accept()[0])
            except OSError:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    target = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        with pytest.raises(SchemaError) as caught:
            from_reflection(target, timeout=0.5)
    finally:
        stop.set()
        thread.join(5)
        for s in [*taken, listener]:
            s.close()
    assert str(caught.value) == (f"reflection from {target}: DEADLINE_EXCEEDED: no answer to reflection within 0.5 s "
                                 "(a peer that is not a gRPC server, a stopped server, or an address that drops "
                                 "packets?)")


# -- 3. --data null --------------------------------------------------------------------------
ZOO = Path(__file__).parent / "protos" / "audit28"


def test_a_request_that_is_not_a_json_object_is_named_in_json_words() -> None:
    """Before: "expected a JSON object of its fields, got NoneType" (and int, str, bool)."""
    method = from_protos([ZOO / "zoo" / "v1" / "zoo.proto"], [ZOO]).method("zoo.v1.Zoo/Find")
    for text, kind in (("null", "null"), ("true", "true"), ("false", "false"), ("3", "a number"), ("[1]", "an array"),
                       ("2.5", "a number"), ('"x"', "a string")):
        with pytest.raises(SchemaError) as caught:
            message_from_json(method.request, text, where="--data")
        assert str(caught.value) == f"--data: zoo.v1.FindRequest: expected a JSON object of its fields, got {kind}"


# -- 4. a service without methods -------------------------------------------------------------
def test_a_proto_whose_services_have_no_methods_says_so(tmp_path: Path) -> None:
    """Before: "--proto: the schema has no service to stand in for" (it has one, empty)."""
    one = tmp_path / "one.proto"
    one.write_text('syntax = "proto3";\npackage e.v1;\nservice Empty {}\n')
    with pytest.raises(ValueError, match=r"^--proto: the schema has no method to stand in for: its service "
                                         r"e\.v1\.Empty has no methods$"):
        load_standin(standin(tmp_path, proto=[str(one)]), None)
    two = tmp_path / "two.proto"
    two.write_text('syntax = "proto3";\npackage t.v1;\nservice B {}\nservice A {}\n')
    with pytest.raises(ValueError, match=r"^--proto: the schema has no method to stand in for: its services "
                                         r"t\.v1\.A, t\.v1\.B have no methods$"):
        load_standin(standin(tmp_path, proto=[str(two)]), None)
    none = tmp_path / "none.proto"
    none.write_text('syntax = "proto3";\npackage n.v1;\nmessage M {}\n')
    with pytest.raises(ValueError, match=r"^--proto: the schema has no service to stand in for$"):
        load_standin(standin(tmp_path, proto=[str(none)]), None)


# -- 5. violations of a stand-in's call name its method ----------------------------------------
CHARGE = "shop.v1.Shop/Charge"


def stopped(call_id: str, method: str | None, line: int = 0) -> dict[str, object]:
    e: dict[str, object] = {"ts": f"2026-12-05T10:00:0{line}.000000Z", "side": "server", "call_id": call_id,
                            "state": "D", "prev": None, "event": "enter", "move": "dispatch"}
    return {**e, "method": method} if method else e


def test_a_violation_of_a_stand_in_call_names_its_method(tmp_path: Path) -> None:
    """Before: "336b0001: log.jsonl:1: server stopped in D", the same as a call of callstate.v1's own."""
    log = tmp_path / "log.jsonl"
    import orjson
    log.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in (stopped("336b0001", CHARGE), stopped("9999", None, 1))))
    for retire in (False, True):
        checker = Checker(retire=retire)
        for n, e in enumerate((stopped("336b0001", CHARGE), stopped("9999", None, 1)), 1):
            checker.add(e, f"log.jsonl:{n}: ")
        report = checker.finish()
        summary = report.summary().splitlines()
        assert f"    336b0001 ({CHARGE}): log.jsonl:1: server stopped in D" in summary, summary
        assert "    9999: log.jsonl:2: server stopped in D" in summary, summary   # as it was
        assert report.to_json()["violations_by_kind"]["not_ended"]["examples"] == [
            {"call_id": "336b0001", "message": "log.jsonl:1: server stopped in D", "method": CHARGE},
            {"call_id": "9999", "message": "log.jsonl:2: server stopped in D"}]
    # an entry's own violation (a move the table lacks) names it too; so do entries recorded in memory
    bad = {**stopped("336b0001", CHARGE), "move": "fly"}
    assert [v.method for v in check_entries([bad]).violations] == [CHARGE, CHARGE]
    memory = Checker()
    memory.add_entry(Entry(t=1795600800.0, side="server", call_id="a1", state="D", prev=None, event="enter",
                           move="dispatch", method=CHARGE))
    memory.add_entry(Entry(t=1795600800.1, side="server", call_id="a1", state="D", prev=None, event="enter",
                           move="dispatch", method=CHARGE))   # its own violation, as it is added
    assert [v.line() for v in memory.finish().violations] == [
        f"a1 ({CHARGE}): server (start) --dispatch--> D (call was in D)", f"a1 ({CHARGE}): server stopped in D"]
    report = build_from_files([log])
    kind = report["check"]["kinds"][0]
    assert kind["examples"][0]["method"] == CHARGE and "method" not in kind["examples"][1]
    assert kind["example"]["method"] == CHARGE
    html = render(report)
    assert f"<div><code>336b0001</code> ({CHARGE}): {log}:1: server stopped in D</div>" in html   # the table
    assert f"<p>call <code>336b0001</code> ({CHARGE}): {log}:1: server stopped in D</p>" in html   # the example
    assert f"<div><code>9999</code>: {log}:2: server stopped in D</div>" in html


# -- 6. a buf image written as JSON (`buf build -o image.json`) --------------------------------------
def test_a_buf_image_in_json_is_a_descriptor_set(tmp_path: Path) -> None:
    """Before: "image.json: not a FileDescriptorSet (... Wire format was corrupt)" of what
    `buf build -o image.json` writes: the files of a FileDescriptorSet in proto JSON, each with
    buf's own extra field. The real buf's image where tests/js has it, else protoc's set as JSON."""
    import json
    import subprocess

    from google.protobuf import json_format

    from tests.conftest import ROOT

    proto_dir = ROOT / "tests" / "protos"
    image = tmp_path / "image.json"
    buf = ROOT / "tests" / "js" / "node_modules" / ".bin" / "buf"
    if buf.exists():
        (tmp_path / "buf.yaml").write_text("version: v2\nmodules:\n  - path: protos\n")
        (tmp_path / "protos" / "shop" / "v1").mkdir(parents=True)
        for proto in (proto_dir / "shop" / "v1").glob("*.proto"):
            (tmp_path / "protos" / "shop" / "v1" / proto.name).write_bytes(proto.read_bytes())
        subprocess.run([str(buf), "build", "-o", str(image)], cwd=tmp_path, check=True, timeout=60)
    else:
        made = from_protos([str(proto_dir / "shop" / "v1" / "shop.proto")], [str(proto_dir)])
        data = json.loads(json_format.MessageToJson(made.files))
        for f in data["file"]:
            f["bufExtension"] = {"isImport": False}   # what buf adds to each file: not needed, ignored
        image.write_text(json.dumps(data))
    schema = from_descriptor_set(image)
    assert "shop.v1.Shop/Charge" in schema.methods, sorted(schema.methods)
    assert schema.method("shop.v1.Shop/Track").kind == "out"

    (tmp_path / "other.json").write_text('{"services": []}')
    with pytest.raises(SchemaError, match=r"other\.json: JSON with no \.proto file in it"):
        from_descriptor_set(tmp_path / "other.json")
    (tmp_path / "bad.json").write_text('{"file": [{"name": 3}]}')
    with pytest.raises(SchemaError, match=r"bad\.json: JSON, but not a descriptor set or a buf image in JSON \("):
        from_descriptor_set(tmp_path / "bad.json")
