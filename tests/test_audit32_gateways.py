"""Session 32, gateways: `callstate conformance` as a platform engineer certifying a gateway uses it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.middleboxes import free_port


def test_a_gone_stdout_reader_still_gets_the_reports_written(tmp_path: Path) -> None:
    """`callstate conformance ... | head -3` in the container (PYTHONUNBUFFERED=1, the image's setting):
    the table met the gone reader before the reports were written, and the run that took minutes ended
    141 with no --report and no --junit-xml for CI. They are written whole however stdout fares."""
    port = free_port()
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    read, write = os.pipe()
    os.close(read)   # the reader has gone before the first line
    try:
        res = subprocess.run([sys.executable, "-m", "callstate", "conformance", "--serve-port", str(port),
                              "--proxy", f"127.0.0.1:{port}", "--only", "check", "--quiet",
                              "--report", str(report), "--junit-xml", str(junit)],
                             stdout=write, stderr=subprocess.PIPE, text=True, timeout=60,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        os.close(write)
    assert "Traceback" not in res.stderr, res.stderr
    data = orjson.loads(report.read_bytes())
    # `--only check` alone tests no property: NOT TESTED, so the JSON's ok is false (since session 34)
    assert data["error"] is None and data["ok"] is False and data["rows"], data
    assert junit.read_text().startswith("<?xml"), "the JUnit is written too"


def test_a_journal_refused_for_the_token_is_not_blamed_on_the_server(tmp_path: Path) -> None:
    """Against a server started with --token, a run without the token (or with another) asked "is it a
    callstate server?": it is one, and it refused this client. The line says so and what to pass."""
    from tests.conftest import cli, start_server
    srv = start_server(tmp_path, "--token", "s3cret", "--max-hold", "20")
    try:
        for env, says in (({"CALLSTATE_TOKEN": ""}, "pass --token or set CALLSTATE_TOKEN"),
                          ({"CALLSTATE_TOKEN": "not-it"}, "not the server's")):
            res = cli("conformance", "--server", srv.target, "--proxy", srv.target, "--only", "check", env=env)
            assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
            assert "is it a callstate server" not in res.stderr and says in res.stderr, res.stderr
            assert "s3cret" not in res.stderr and "not-it" not in res.stderr, "no token is printed"
    finally:
        srv.stop()


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (tools/system-deps.sh installs it)")
def test_a_proxy_that_drops_the_token_is_named_as_such(tmp_path: Path) -> None:
    """nginx configured to clear `Authorization` in front of a server with --token: the server's journal
    took the token straight, the probe through the proxy was refused for want of one, and the line asked
    "does it forward to the server?" (it does). It now says the proxy drops the authorization header."""
    from tests.conftest import cli, start_server
    from tests.middleboxes import start_nginx
    srv = start_server(tmp_path, "--token", "s3cret", "--max-hold", "20")
    block = ("server {\n    listen 127.0.0.1:8080 http2;\n    location / {\n"
             "        grpc_set_header Authorization \"\";\n        grpc_pass grpc://127.0.0.1:50051;\n    }\n}\n")
    proxy = start_nginx(tmp_path, free_port(), srv.port, block)
    try:
        res = cli("conformance", "--server", srv.target, "--proxy", proxy.target, "--only", "check",
                  env={"CALLSTATE_TOKEN": "s3cret"})
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "does it forward to the server" not in res.stderr, res.stderr
        assert "authorization" in res.stderr and "drop" in res.stderr, res.stderr
    finally:
        proxy.stop()
        srv.stop()


def test_a_ca_of_the_same_name_but_another_key_is_named_as_not_the_signer(tmp_path: Path) -> None:
    """Certificates made again (tools/make_certs.py into a new folder) while the server still runs
    with the old ones: the new CA has the same name, another key. gRPC's error is BAD_SIGNATURE,
    not CERTIFICATE_VERIFY_FAILED, and the hint was the catch-all "TLS handshake failed: check the
    certificates, or whether the server speaks TLS"; docs/security.md promises a CA that did not sign
    the server's certificate is named as such."""
    from tests.certs import make_tls_files
    from tests.conftest import cli, start_server
    served, again = make_tls_files(tmp_path / "tls"), make_tls_files(tmp_path / "tls-again")
    srv = start_server(tmp_path, "--tls-cert", str(served.server_cert), "--tls-key", str(served.server_key))
    try:
        res = cli("health", "--target", f"localhost:{srv.port}", "--tls-ca", str(again.ca), timeout=30)
    finally:
        srv.stop()
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "not signed by the CA given as --tls-ca" in res.stderr, res.stderr


@pytest.mark.parametrize("option", [("--max-hold", "90"), ("--serve-bind", "0.0.0.0")])
def test_serve_port_options_with_server_are_a_usage_error(option: tuple[str, str], refused_target: str) -> None:
    """`--server ... --hold-seconds 75 --max-hold 90`: --max-hold (and --serve-bind) set the server
    --serve-port starts; with --server they were dropped without a word, the user believing the server's
    max hold was raised. One line, exit 2, before anything is sent."""
    from callstate.cli import main
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(["conformance", "--server", refused_target, "--proxy", refused_target, *option])
    assert status == 2, err.getvalue()
    assert f"{option[0]} applies only with --serve-port" in err.getvalue(), err.getvalue()


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (tools/system-deps.sh installs it)")
def test_a_gateway_that_terminates_tls_can_be_certified(tmp_path: Path) -> None:
    """The usual gateway: TLS (and the token check) at the front, h2c to the server behind. The access
    options went to the proxy and the server alike, so --server answered "does not speak TLS: drop the
    --tls-* options" (then the proxy refused plaintext), and --serve-port refused TLS options outright:
    no way to certify it. With --serve-port they now go to the proxy only; the server it starts is
    plaintext on loopback, reached without them, and does not take the token from CALLSTATE_TOKEN."""
    from tests.certs import make_tls_files
    from tests.conftest import cli
    from tests.middleboxes import start_nginx
    tls = make_tls_files(tmp_path / "tls")
    upstream = free_port()
    block = ("server {\n    listen 127.0.0.1:8080 ssl http2;\n"
             f"    ssl_certificate {tls.server_cert};\n    ssl_certificate_key {tls.server_key};\n"
             "    location / {\n        grpc_pass grpc://127.0.0.1:50051;\n    }\n}\n")
    proxy = start_nginx(tmp_path, free_port(), upstream, block)
    report = tmp_path / "report.json"
    try:
        res = cli("conformance", "--serve-port", str(upstream), "--proxy", f"localhost:{proxy.port}",
                  "--tls-ca", str(tls.ca), "--only", "complete-small,cancel-abortive", "--calls", "2",
                  "--cancel-bound-ms", "5000", "--report", str(report), timeout=60,
                  env={"CALLSTATE_TOKEN": "the-gateways"})   # for the gateway: the server started has none
    finally:
        proxy.stop()
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    rows = orjson.loads(report.read_bytes())["rows"]
    assert {r["verdict"] for path in ("direct", "proxy") for r in rows[path]} == {"pass"}, rows


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (tools/system-deps.sh installs it)")
def test_held_calls_a_proxy_timeout_cut_say_when_and_how(tmp_path: Path) -> None:
    """nginx with `grpc_read_timeout 1s` and --hold-seconds 3: the held row said only "1722
    RPC_S_SERVER_UNAVAILABLE (UNAVAILABLE), before the 3 s hold ended": not after how long (the
    proxy's timeout, the setting to raise) nor that nginx answered HTTP 504 itself."""
    from tests.conftest import cli
    from tests.middleboxes import start_nginx
    upstream = free_port()
    block = ("server {\n    listen 127.0.0.1:8080 http2;\n    location / {\n        grpc_read_timeout 1s;\n"
             "        grpc_pass grpc://127.0.0.1:50051;\n    }\n}\n")
    proxy = start_nginx(tmp_path, free_port(), upstream, block)
    report = tmp_path / "report.json"
    try:
        res = cli("conformance", "--serve-port", str(upstream), "--proxy", proxy.target, "--only", "held",
                  "--hold-seconds", "3", "--concurrency", "2", "--report", str(report), timeout=60)
    finally:
        proxy.stop()
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr
    [held] = orjson.loads(report.read_bytes())["rows"]["proxy"]
    assert held["verdict"] == "FAIL" and "before the 3 s hold ended" in held["note"], held
    assert re.search(r"after 1(\.\d)? s", held["note"]) and "HTTP 504" in held["note"], held
