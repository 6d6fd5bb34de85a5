"""Access control as a user locking a server down meets it (docs/security.md): defects found by
an audit, each pinned by a test that fails without its fix. Real certificates, real
`callstate serve` processes on 127.0.0.1."""

from __future__ import annotations

import datetime
import os
import shutil
import time
import urllib.error
import urllib.request
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tests import certs
from tests.certs import TlsFiles, make_tls_files
from callstate.client.channel import ChannelSettings
from callstate.files import check_validity
from tests.conftest import EVIDENCE_WAIT, ServerProcess, cli, start_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def expired_copy(cert: x509.Certificate, key: certs.ec.EllipticCurvePrivateKey,
                 ca_key: certs.ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """`cert` as it was issued ten days ago for nine days: expired yesterday, same names, same CA."""
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=10)).not_valid_after(now - datetime.timedelta(days=1)))
    for ext in cert.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    return builder.sign(ca_key, hashes.SHA256())


@pytest.fixture(scope="module")
def expired(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA ("ca") and, signed by it, a server certificate for 127.0.0.1 / localhost and a client
    certificate, each fresh ("server", "client") and expired ("old_server", "old_client"), with
    their keys ("*_key")."""
    folder = tmp_path_factory.mktemp("expired")
    ca_key, server_key, client_key = certs._key(), certs._key(), certs._key()
    ca = certs._cert("expired test CA", ca_key, "expired test CA", ca_key, ca=True)
    server = certs._cert("localhost", server_key, "expired test CA", ca_key, server=True)
    client = certs._cert("test client", client_key, "expired test CA", ca_key)
    files = {"ca": certs._write(folder / "ca.pem", ca),
             "server": certs._write(folder / "server.pem", server),
             "old_server": certs._write(folder / "old-server.pem", expired_copy(server, server_key, ca_key)),
             "server_key": certs._write(folder / "server.key", key=server_key),
             "client": certs._write(folder / "client.pem", client),
             "old_client": certs._write(folder / "old-client.pem", expired_copy(client, client_key, ca_key)),
             "client_key": certs._write(folder / "client.key", key=client_key)}
    return files


def serve_refused(*args: str, cwd: Path) -> str:
    """`callstate serve` that must refuse to start as a usage error: its one stderr line."""
    done = subprocess.run([sys.executable, "-m", "callstate", "serve", "--port", "0", "--log-file", "s.jsonl", *args],
                          capture_output=True, text=True, timeout=EVIDENCE_WAIT * 2, cwd=cwd,
                          stdin=subprocess.DEVNULL, start_new_session=True)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, (done.returncode, done.stderr, done.stdout)
    assert "serving" not in done.stdout, done.stdout   # refused before it served anything
    [line] = done.stderr.splitlines()
    assert line.startswith("callstate serve: "), line
    return line


def test_bad_tls_material_is_a_usage_error_at_start_naming_the_file(tls: TlsFiles, expired: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    """An encrypted key, a key that is not the certificate's, an expired certificate: exit 2
    (usage, like every other bad option), not 1 (a runtime failure), and the expired
    certificate is refused at start rather than served to clients that each fail the handshake."""
    old_cert, old_key = expired["old_server"], expired["server_key"]
    line = serve_refused("--tls-cert", str(old_cert), "--tls-key", str(old_key), cwd=tmp_path)
    assert f"'{old_cert}' expired on" in line, line
    line = serve_refused("--tls-cert", str(tls.server_cert), "--tls-key", str(tls.client_key), cwd=tmp_path)
    assert "do not make a pair" in line and str(tls.client_key) in line, line
    key = serialization.load_pem_private_key(tls.server_key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    line = serve_refused("--tls-cert", str(tls.server_cert), "--tls-key", str(encrypted), cwd=tmp_path)
    assert f"'{encrypted}' is encrypted" in line, line


@pytest.mark.parametrize("command", [("serve", "--port", "0", "--no-state-log"),
                                     ("call", "--target", "REFUSED", "--outcome", "complete", "--timeout", "5")])
def test_a_token_read_from_a_file_with_its_newline_is_a_usage_error_that_keeps_the_secret(command: tuple[str, ...],
                                                                                           tmp_path: Path,
                                                                                           refused_target: str) -> None:
    """CALLSTATE_TOKEN from a secret file (a Kubernetes secret, `env_file`, `$(< file)` in some
    shells) often ends with a newline, which no gRPC metadata value can carry: one line saying
    so, exit 2 like every other unusable option (it was 1, and only "printable ASCII"), the
    secret itself never printed, nothing sent."""
    secret = "sesame-Q7f3x9"
    command = tuple(refused_target if word == "REFUSED" else word for word in command)   # the secret goes nowhere else
    done = cli(*command, cwd=tmp_path, timeout=EVIDENCE_WAIT * 2, env={"CALLSTATE_TOKEN": secret + "\n"})
    assert done.returncode == 2, (done.returncode, done.stderr)
    [line] = done.stderr.splitlines()
    assert "CALLSTATE_TOKEN" in line and "trailing whitespace" in line, line
    assert secret not in done.stderr + done.stdout


def test_a_client_of_a_server_whose_certificate_expired_is_told_so(expired: dict[str, Path], tmp_path: Path) -> None:
    """The client's hint named the wrong cause ("not signed by the CA given as --tls-ca") when
    the server's certificate is signed by that CA and has only expired. The server is started
    from the library (`serve` now refuses the file at start), as a long-running server whose
    certificate expired under it would be."""
    ca, old_cert, old_key = expired["ca"], expired["old_server"], expired["server_key"]
    script = (f"import asyncio, sys\nfrom callstate.server import EmulatorServer\n"
              f"async def main():\n"
              f"    async with EmulatorServer(port=0, tls_cert={old_cert.read_bytes()!r},\n"
              f"                              tls_key={old_key.read_bytes()!r}) as srv:\n"
              f"        print(srv.port, flush=True)\n"
              f"        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)\n"
              f"asyncio.run(main())\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        port = int(proc.stdout.readline())   # type: ignore[union-attr]
        done = cli("call", "--target", f"127.0.0.1:{port}", "--tls-ca", str(ca), "--outcome", "complete",
                   "--timeout", "15", cwd=tmp_path, timeout=EVIDENCE_WAIT * 2)
    finally:
        proc.communicate("", timeout=EVIDENCE_WAIT)
    last = done.stderr.splitlines()[-1]
    assert "1722" in last and "the server's certificate has expired" in last, last
    assert "not signed by the CA" not in last, last


def start_logged_server(tmp_path: Path, *args: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    """`callstate serve` with its stdout read until its serving line: (process, lines so far)."""
    proc = subprocess.Popen([sys.executable, "-m", "callstate", "serve", "--port", "0", "--no-state-log", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            env={**os.environ, **env})
    lines: list[str] = []
    deadline = time.monotonic() + EVIDENCE_WAIT
    while not any("serving" in line for line in lines):   # readline returns at once once the process ended
        assert proc.poll() is None and time.monotonic() < deadline, lines
        lines.append(proc.stdout.readline())   # type: ignore[union-attr]
    return proc, lines


def scrape(url: str, token: str | None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=EVIDENCE_WAIT) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return refused.code


def test_the_metrics_token_can_come_from_the_environment_and_stay_off_the_command_line(tmp_path: Path) -> None:
    """`--metrics-token` was the only way to lock /metrics, and every user of the host reads a
    process's arguments (ps, /proc/PID/cmdline): CALLSTATE_METRICS_TOKEN sets it as
    CALLSTATE_TOKEN sets --token, and the token is never printed."""
    secret = "metrics-sesame-8d1c"
    proc, lines = start_logged_server(tmp_path, "--metrics-port", "0", env={"CALLSTATE_METRICS_TOKEN": secret})
    try:
        [url] = [line.split(" on ", 1)[1].strip() for line in lines if "metrics on" in line]
        assert scrape(url, None) == 401
        assert scrape(url, "wrong") == 401
        assert scrape(url, secret) == 200
        assert secret.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=EVIDENCE_WAIT)
    assert secret not in "".join(lines) + out


def test_a_server_name_the_certificate_does_not_hold_is_named_and_the_override_works(tls: TlsFiles,
                                                                                      tmp_path: Path) -> None:
    """--tls-server-name checks the server's certificate against another name than the
    target's host: a name the certificate holds reaches the server; one it does not hold
    failed with gRPC's bare "Hostname Verification Check failed" and no word of the option."""
    srv = start_server(tmp_path, "--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key))
    try:
        base = ("--target", srv.target, "--tls-ca", str(tls.ca))
        ok = cli("call", *base, "--tls-server-name", "localhost", "--outcome", "complete", "--timeout", "15",
                 cwd=tmp_path, timeout=EVIDENCE_WAIT * 2)
        assert ok.returncode == 0, ok.stderr
        for args in (("call", "--outcome", "complete", "--timeout", "15"), ("health", "--timeout", "15")):
            wrong = cli(*args[:1], *base, "--tls-server-name", "elsewhere.example", *args[1:], cwd=tmp_path,
                        timeout=EVIDENCE_WAIT * 2)
            assert wrong.returncode != 0
            last = wrong.stderr.splitlines()[-1]
            assert "does not name --tls-server-name elsewhere.example" in last, last
    finally:
        srv.stop()


def test_an_expired_client_certificate_is_a_usage_error_before_anything_is_sent(expired: dict[str, Path],
                                                                                 tmp_path: Path) -> None:
    """Under mutual TLS the server only closes the connection on an expired client certificate,
    and the client guessed "does it require a client certificate signed by a CA it trusts?"
    for one that CA did sign: every client command now refuses it at once, naming the file."""
    srv = start_server(tmp_path, "--tls-cert", str(expired["server"]), "--tls-key", str(expired["server_key"]),
                       "--tls-client-ca", str(expired["ca"]))
    try:
        access = ("--target", srv.target, "--tls-ca", str(expired["ca"]), "--tls-key", str(expired["client_key"]))
        fresh = cli("call", *access, "--tls-cert", str(expired["client"]), "--outcome", "complete",
                    "--timeout", "15", cwd=tmp_path, timeout=EVIDENCE_WAIT * 2)
        assert fresh.returncode == 0, fresh.stderr   # the same CA and key, in date: served
        for command in ("call", "watch", "health"):
            done = cli(command, *access, "--tls-cert", str(expired["old_client"]), "--timeout", "15",
                       cwd=tmp_path, timeout=EVIDENCE_WAIT * 2)
            assert done.returncode == 2, (command, done.stderr)
            [line] = done.stderr.splitlines()
            assert f"the TLS client certificate '{expired['old_client']}' expired on" in line, line
        assert len({entry["call_id"] for entry in srv.entries()}) == 1   # the fresh call's only: nothing sent
    finally:
        srv.stop()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_the_secure_compose_overlay_refuses_to_run_without_a_token() -> None:
    """docker-compose.secure.yml passed `${CALLSTATE_TOKEN:-}`: with the variable unset or empty
    the "locked-down" emulator ran with no token at all, and nothing said so. Compose now
    refuses the overlay, naming the variable; given one, every service gets it."""
    root = Path(__file__).resolve().parent.parent
    files = [a for f in ("docker-compose.yml", "docker-compose.override.yml", "docker-compose.secure.yml")
             for a in ("-f", str(root / f))]
    for value in (None, ""):
        env = {k: v for k, v in os.environ.items() if k != "CALLSTATE_TOKEN"}
        if value is not None:
            env["CALLSTATE_TOKEN"] = value
        done = subprocess.run(["docker-compose", *files, "config", "-q"], cwd=root, capture_output=True, text=True,
                              timeout=60, env=env)
        assert done.returncode != 0 and "CALLSTATE_TOKEN" in done.stderr, (value, done.stderr)
    done = subprocess.run(["docker-compose", *files, "config"], cwd=root, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "CALLSTATE_TOKEN": "t0ken-given"})
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    for name in ("emulator", "load"):
        assert config["services"][name]["environment"]["CALLSTATE_TOKEN"] == "t0ken-given", name


def test_a_server_started_with_a_client_certificate_is_named_by_its_clients(tls: TlsFiles, tmp_path: Path) -> None:
    """Swapping server.pem and client.pem (same CA, so the server starts) failed every
    handshake with "unsupported certificate purpose" and the hint that the CA did not sign it,
    which it did: the hint now names the certificate's purpose."""
    srv = start_server(tmp_path, "--tls-cert", str(tls.client_cert), "--tls-key", str(tls.client_key))
    try:
        done = cli("call", "--target", srv.target, "--tls-ca", str(tls.ca), "--outcome", "complete",
                   "--timeout", "15", cwd=tmp_path, timeout=EVIDENCE_WAIT * 2)
    finally:
        srv.stop()
    last = done.stderr.splitlines()[-1]
    assert "1722" in last and "not one for a server" in last, last
    assert "not signed by the CA" not in last, last


def test_a_server_name_without_tls_is_a_usage_error_not_plaintext(shared_server: ServerProcess,
                                                                 tmp_path: Path) -> None:
    """`--tls-server-name` alone was ignored and the call went out in plaintext, its token
    readable on the path: a user who asked for a certificate check got no TLS at all. It is a
    usage error naming what to add, before anything is sent."""
    for command in (("call", "--outcome", "complete"), ("watch", "--counters"), ("health",)):
        done = cli(command[0], "--target", shared_server.target, "--tls-server-name", "emulator",
                   "--token", "plain-sesame", *command[1:], "--timeout", "15", cwd=tmp_path, timeout=EVIDENCE_WAIT * 2)
        assert done.returncode == 2, (command, done.stderr)
        line = done.stderr.splitlines()[-1]
        assert "--tls-server-name" in line and "add --tls-ca" in line, line
        assert "plain-sesame" not in done.stderr + done.stdout
    with pytest.raises(ValueError, match="needs TLS"):
        ChannelSettings(tls_server_name="emulator")
    assert ChannelSettings(tls_ca=b"-----BEGIN CERTIFICATE-----", tls_server_name="emulator").secure


def test_a_certificate_not_valid_yet_is_named_with_a_word_on_the_clock(tls: TlsFiles) -> None:
    """The other side of the validity check `serve` and the clients make: a certificate read
    before its notBefore (a host whose clock is behind) is refused naming the file and the
    clock; in date, it passes."""
    check_validity(tls.server_cert, "TLS certificate")
    with pytest.raises(OSError, match=rf"'{tls.server_cert}' is not valid before .*clock"):
        check_validity(tls.server_cert, "TLS certificate", now=time.time() - 86400)
    with pytest.raises(OSError, match=rf"'{tls.client_cert}' expired on"):
        check_validity(tls.client_cert, "TLS client certificate", now=time.time() + 7 * 86400)
