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
