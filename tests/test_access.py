"""Access control end to end: TLS and mutual TLS, the bearer token, call ownership (cancel
keys) and keepalive, against real `callstate serve` processes with certificates made here."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from callstate import codes
from callstate.client import AsyncClient, CallError, Client, PipeScript, Script
from callstate.client.channel import ChannelSettings, keepalive_options
from callstate.server import EmulatorServer
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from callstate.wire import AUTH_KEY, CALL_ID_KEY, CANCEL_KEY_KEY
from tests.certs import TlsFiles, make_tls_files
from tests.conftest import ROOT, ServerProcess, cli, start_server, states
from tests.documentation import documentation

pytestmark = pytest.mark.timeout(90)

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles) -> Iterator[ServerProcess]:
    """TLS, and a token required."""
    srv = start_server(tmp_path_factory.mktemp("tls-server"), "--tls-cert", str(tls.server_cert),
                       "--tls-key", str(tls.server_key), "--token", TOKEN, "--max-hold", "20")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("mtls-server"), "--tls-cert", str(tls.server_cert),
                       "--tls-key", str(tls.server_key), "--tls-client-ca", str(tls.ca), "--max-hold", "20")
    yield srv
    srv.stop()


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- TLS ----------------------------------------------------------------------------------
def test_tls_call_works_on_every_client_surface(tls_server: ServerProcess, tls: TlsFiles) -> None:
    with Client(tls_server.target, tls_ca=tls.ca, token=TOKEN) as client:
        reply = client.start(Script("complete", reply_bytes=7)).result(timeout=10)
        assert len(reply.payload) == 7

    async def go() -> None:
        async with AsyncClient(tls_server.target, tls_ca=str(tls.ca), token=TOKEN) as client:
            reply = await client.start(Script("complete", reply_bytes=5))
            assert len(reply.payload) == 5
    asyncio.run(go())

    tls_args = ("--target", tls_server.target, "--tls-ca", str(tls.ca))
    done = cli("call", *tls_args, "--token", TOKEN, "--outcome", "complete")
    assert done.returncode == 0, done.stderr
    health = cli("health", *tls_args)   # no token: health stays open for container health checks
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING"), health.stderr
    counters = cli("watch", "--counters", *tls_args, "--token", TOKEN)
    assert counters.returncode == 0 and '"dispatched"' in counters.stdout, counters.stderr
    load = cli("load", *tls_args, "--token", TOKEN, "--calls", "60", "--concurrency", "8", timeout=60)
    assert load.returncode == 0 and "check: OK" in load.stdout, load.stdout + load.stderr


def test_plaintext_client_against_tls_server_fails_in_one_line(tls_server: ServerProcess, tls: TlsFiles) -> None:
    t0 = time.monotonic()
    done = cli("call", "--target", tls_server.target, "--token", TOKEN, timeout=20)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert line.startswith("final: 1722 RPC_S_SERVER_UNAVAILABLE") and "--tls-ca" in line, line
    assert time.monotonic() - t0 < 15   # no hang
    for command in (("health",), ("watch", "--counters"), ("load", "--calls", "5")):
        done = cli(*command, "--target", tls_server.target, "--token", TOKEN, timeout=30)
        assert done.returncode != 0
        assert "--tls-ca" in one_line(done.stderr), (command, done.stderr)


def test_tls_client_against_plaintext_server_and_a_wrong_ca_fail_in_one_line(
        server: ServerProcess, tls_server: ServerProcess, tls: TlsFiles) -> None:
    done = cli("call", "--target", server.target, "--tls-ca", str(tls.ca), timeout=20)
    line = one_line(done.stderr)
    assert done.returncode == 1 and "1722" in line and "does not speak TLS" in line, line
    done = cli("call", "--target", tls_server.target, "--tls-ca", str(tls.other_ca), "--token", TOKEN, timeout=20)
    line = one_line(done.stderr)
    assert done.returncode == 1 and "1722" in line and "not signed by the CA" in line, line


def test_mutual_tls_requires_a_client_certificate_from_the_trusted_ca(mtls_server: ServerProcess,
                                                                       tls: TlsFiles) -> None:
    base = ("call", "--target", mtls_server.target, "--tls-ca", str(tls.ca), "--outcome", "complete")
    refused = cli(*base, timeout=20)
    line = one_line(refused.stderr)
    assert refused.returncode == 1 and "1722" in line and "client certificate" in line, line
    stranger = cli(*base, "--tls-cert", str(tls.other_client_cert), "--tls-key", str(tls.other_client_key), timeout=20)
    assert stranger.returncode == 1 and "1722" in one_line(stranger.stderr)
    admitted = cli(*base, "--tls-cert", str(tls.client_cert), "--tls-key", str(tls.client_key), timeout=20)
    assert admitted.returncode == 0, admitted.stderr
    with Client(mtls_server.target, tls_ca=tls.ca, tls_cert=tls.client_cert, tls_key=tls.client_key) as client:
        assert client.start(Script("complete")).result(timeout=10).call_id
    with Client(mtls_server.target, tls_ca=tls.ca) as client:
        with pytest.raises(CallError) as err:
            client.start(Script("complete")).result(timeout=10)
        assert err.value.code == codes.RPC_S_SERVER_UNAVAILABLE


def test_bad_tls_options_are_one_line_usage_errors(tls: TlsFiles, tmp_path: Path) -> None:
    not_pem = tmp_path / "x.pem"
    not_pem.write_text("hello")
    cases = [("call", "--tls-ca", str(tmp_path / "missing.pem")), ("call", "--tls-ca", str(not_pem)),
             ("call", "--tls-cert", str(tls.client_cert)),
             ("watch", "--tls-cert", str(tls.client_cert), "--tls-key", str(tls.server_key)),
             ("serve", "--port", "0", "--tls-cert", str(tls.server_cert)),
             ("serve", "--port", "0", "--tls-cert", str(tls.server_cert), "--tls-key", str(tls.client_key)),
             ("serve", "--port", "0", "--tls-client-ca", str(tls.ca)),
             ("call", "--keepalive", "0.2"), ("call", "--token", "")]
    for args in cases:
        done = cli(*args, timeout=20)
        assert done.returncode in (1, 2), args
        assert "Traceback" not in done.stderr and done.stderr.strip().splitlines()[-1].startswith("callstate "), \
            (args, done.stderr)


# -- the bearer token -----------------------------------------------------------------------
def test_token_missing_or_wrong_gives_5_and_the_journal_is_refused(tls_server: ServerProcess, tls: TlsFiles) -> None:
    for token, status in ((None, "UNAUTHENTICATED"), ("wrong", "PERMISSION_DENIED")):
        with Client(tls_server.target, tls_ca=tls.ca, token=token) as client:
            with pytest.raises(CallError) as err:
                client.start(Script("complete")).result(timeout=10)
            assert (err.value.code, err.value.grpc_status) == (codes.ERROR_ACCESS_DENIED, status)
    creds = grpc.ssl_channel_credentials(tls.ca.read_bytes())
    with grpc.secure_channel(tls_server.target, creds) as channel:
        journal = pb_grpc.JournalStub(channel)
        for metadata, status in (((), grpc.StatusCode.UNAUTHENTICATED),
                                 (((AUTH_KEY, "Bearer wrong"),), grpc.StatusCode.PERMISSION_DENIED),
                                 (((AUTH_KEY, TOKEN),), grpc.StatusCode.PERMISSION_DENIED)):   # no "Bearer "
            with pytest.raises(grpc.RpcError) as rpc_err:
                journal.ListCalls(pb.ListCallsRequest(), metadata=metadata, timeout=10)
            assert rpc_err.value.code() == status
            with pytest.raises(grpc.RpcError) as rpc_err:
                next(iter(journal.Watch(pb.WatchRequest(), metadata=metadata, timeout=10)))
            assert rpc_err.value.code() == status
            with pytest.raises(grpc.RpcError) as rpc_err:
                pb_grpc.EmulatorStub(channel).Cancel(pb.CancelRequest(call_id="x"), metadata=metadata, timeout=10)
            assert rpc_err.value.code() == status
        for scheme in ("Bearer", "bearer", "BEARER  "):   # the scheme's name is case-insensitive (RFC 7235)
            assert journal.ListCalls(pb.ListCallsRequest(), metadata=((AUTH_KEY, f"{scheme} {TOKEN}"),), timeout=10)
    args = ("watch", "--counters", "--target", tls_server.target, "--tls-ca", str(tls.ca))
    refused = cli(*args)
    assert refused.returncode == 1 and "--token" in one_line(refused.stderr)
    env_token = cli(*args, env={"CALLSTATE_TOKEN": TOKEN})
    assert env_token.returncode == 0, env_token.stderr
    call = cli("call", "--target", tls_server.target, "--tls-ca", str(tls.ca), "--token", "nope")
    assert call.returncode == 1 and one_line(call.stderr).startswith("final: 5 ERROR_ACCESS_DENIED")
    for verify in ((), ("--no-verify",)):   # load reads the Journal first: refused in one line, exit 2
        load = cli("load", "--target", tls_server.target, "--tls-ca", str(tls.ca), "--calls", "5", *verify)
        assert load.returncode == 2 and "UNAUTHENTICATED" in one_line(load.stderr), load.stderr


# -- ownership: cancel keys ---------------------------------------------------------------------
def stranger_notice(target: str, call_id: str, cancel_key: str = "") -> pb.CancelReply | grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        try:
            return pb_grpc.EmulatorStub(channel).Cancel(pb.CancelRequest(call_id=call_id, cancel_key=cancel_key),
                                                        timeout=10)
        except grpc.RpcError as err:
            return err.code()


def test_a_stranger_cannot_cancel_another_callers_call(server: ServerProcess) -> None:
    with Client(server.target) as client:
        # the notices must reach the call while it runs: one that came after its End (two fresh
        # channels took over 1.5 s on a loaded machine) is answered "not delivered, state End",
        # which proves nothing either way; the server's own answer says so, and the victim is made
        # again with a longer outcome delay
        for delay in (1.5, 6.0):
            victim = client.start(Script("complete", outcome_delay=delay, reply_bytes=3))
            server.wait_entries(victim.call_id, lambda e: "D" in states(e))
            answers = [stranger_notice(server.target, victim.call_id, key) for key in ("", "guessed-key")]
            reply = victim.result(timeout=delay + 10)   # its own answer, not 1818
            if not any(isinstance(a, pb.CancelReply) and a.state == "End" for a in answers):
                break
        assert answers == [grpc.StatusCode.PERMISSION_DENIED] * 2, answers
        assert len(reply.payload) == 3 and not reply.cancel_seen
        assert not any(e["event"] == "cancel_seen" for e in server.wait_entries(victim.call_id))
        # the owner's own notice does reach its call (the key it made the call with)
        owned = client.start(Script("hold", on_cancel="complete"))
        server.wait_entries(owned.call_id, lambda e: "D" in states(e))
        owned.cancel(abortive=False)
        assert owned.result(timeout=10).cancel_seen


def test_a_stranger_cannot_pre_cancel_an_id(server: ServerProcess) -> None:
    with Client(server.target) as client:
        victim = client.prepare(Script("complete", outcome_delay=0.3))
        for key in ("", "guessed-key"):
            reply = stranger_notice(server.target, victim.call_id, key)
            assert isinstance(reply, pb.CancelReply) and reply.delivered   # kept, says nothing more
        victim.start()
        assert not victim.result(timeout=10).cancel_seen
        assert not any(e["event"] == "cancel_seen" for e in server.wait_entries(victim.call_id))
    # an early notice with the call's own key is applied at dispatch
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.EmulatorStub(channel)
        assert stub.Cancel(pb.CancelRequest(call_id="early-own", cancel_key="k1"), timeout=10).delivered
        with pytest.raises(grpc.RpcError) as err:
            stub.Call(pb.CallRequest(call_id="early-own", cancel_key="k1", script=pb.Script(outcome=pb.OUTCOME_HOLD)),
                      timeout=10)
        assert err.value.code() == grpc.StatusCode.CANCELLED


def test_a_stranger_cannot_squat_a_call_in_flight(server: ServerProcess) -> None:
    with Client(server.target) as client:
        victim = client.start(Script("complete", outcome_delay=1.0, reply_bytes=2))
        server.wait_entries(victim.call_id, lambda e: "D" in states(e))
        with grpc.insecure_channel(server.target) as channel:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.EmulatorStub(channel).Call(pb.CallRequest(call_id=victim.call_id, cancel_key="squatter",
                                                                  script=pb.Script(outcome=pb.OUTCOME_HOLD)),
                                                   timeout=10)
            assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
            assert codes.from_grpc(err.value.code(), err.value.trailing_metadata()) == codes.RPC_S_INVALID_ARG
        assert len(victim.result(timeout=10).payload) == 2
        entries = server.wait_entries(victim.call_id)
        assert states(entries) == ["D", "Comp", "End"]   # one dispatch: the squatter's call never ran


def test_calls_without_a_key_keep_working_for_raw_clients(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.EmulatorStub(channel)
        held = stub.Call.future(pb.CallRequest(call_id="keyless-1", script=pb.Script(outcome=pb.OUTCOME_HOLD)),
                                timeout=10)
        server.wait_entries("keyless-1", lambda e: "D" in states(e))
        assert stub.Cancel(pb.CancelRequest(call_id="keyless-1"), timeout=10).delivered
        with pytest.raises(grpc.RpcError) as err:
            held.result(timeout=10)
        assert err.value.code() == grpc.StatusCode.CANCELLED


def test_an_oversized_cancel_key_is_refused(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.EmulatorStub(channel)
        for rpc, request in ((stub.Call, pb.CallRequest(call_id="big-key", cancel_key="k" * 129)),
                             (stub.Cancel, pb.CancelRequest(call_id="big-key", cancel_key="k" * 129))):
            with pytest.raises(grpc.RpcError) as err:
                rpc(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- keepalive ----------------------------------------------------------------------------------
def test_a_held_call_to_a_stopped_server_ends_with_1722_within_the_keepalive(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--max-hold", "60")
    try:
        with Client(srv.target, keepalive=2) as client:
            call = client.start(Script("hold"))   # no deadline
            srv.wait_entries(call.call_id, lambda e: "D" in states(e))
            os.kill(srv.proc.pid, signal.SIGSTOP)
            t0 = time.monotonic()
            try:
                assert call.wait(timeout=15), "the call never ended: no keepalive"
                elapsed = time.monotonic() - t0
                with pytest.raises(CallError) as err:
                    call.result()
                assert err.value.code == codes.RPC_S_SERVER_UNAVAILABLE
                assert elapsed < 12, elapsed   # 2 s keepalive (the next mechanism, max hold, is 60 s): slack for a loaded machine
            finally:
                os.kill(srv.proc.pid, signal.SIGCONT)
    finally:
        srv.stop()


def test_health_of_a_stalled_server_says_it_gave_no_answer_within_the_timeout(tmp_path: Path) -> None:
    """A SIGSTOPped server accepts the connection and never answers: `callstate health` said
    "DEADLINE_EXCEEDED: Deadline Exceeded" after a 5 s its --help called "none"."""
    assert "(default: 5)" in " ".join(cli("health", "--help").stdout.split())
    srv = start_server(tmp_path)
    try:
        os.kill(srv.proc.pid, signal.SIGSTOP)
        try:
            out = cli("health", "--target", srv.target, "--timeout", "1")
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        assert out.returncode == 1 and out.stdout == ""
        assert out.stderr.splitlines() == [f"callstate health: {srv.target}: no answer within 1 s (DEADLINE_EXCEEDED; "
                                           f"--timeout waits longer)"], out.stderr
    finally:
        srv.stop()


def test_keepalive_pings_do_not_get_a_held_call_killed_by_the_server(server: ServerProcess) -> None:
    async def go() -> None:
        # 1 s keepalive: a ping every 0.5-1 s for 5 s with no data moving; with grpc's default
        # ping policy the server would answer the fourth one with GOAWAY too_many_pings (1722)
        async with AsyncClient(server.target, keepalive=1) as client:
            reply = await client.start(Script("complete", outcome_delay=5.0, reply_bytes=1))
            assert len(reply.payload) == 1
    asyncio.run(go())


def test_channel_settings_units(tls: TlsFiles) -> None:
    assert keepalive_options(None) == [] and keepalive_options(0) == []
    opts = dict(keepalive_options(30))
    assert opts["grpc.keepalive_time_ms"] + opts["grpc.keepalive_timeout_ms"] < 30_000
    assert opts["grpc.http2.ping_timeout_ms"] == opts["grpc.keepalive_timeout_ms"]
    assert ChannelSettings(token="t").metadata == ((AUTH_KEY, "Bearer t"),)
    assert ChannelSettings().metadata == () and not ChannelSettings().secure
    assert ChannelSettings(tls_ca=tls.ca).secure
    with pytest.raises(ValueError):
        ChannelSettings(tls_cert=tls.client_cert)
    with pytest.raises(ValueError):
        ChannelSettings(keepalive=0.5)
    with pytest.raises(OSError, match="do not make a pair"):
        ChannelSettings(tls_cert=tls.client_cert, tls_key=tls.server_key).credentials()


# -- tools/make_certs.py's bad input ----------------------------------------------------------
@pytest.mark.unit
@pytest.mark.parametrize("days, said", [("-1", "at least 1 day"), ("0", "at least 1 day"),
                                        ("x", "not a whole number of days")])
def test_make_certs_refuses_a_validity_of_no_days_in_one_line(tmp_path: Path, days: str, said: str) -> None:
    made = subprocess.run([sys.executable, str(ROOT / "tools" / "make_certs.py"), "--days", days, "tls"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert made.returncode == 2 and "Traceback" not in made.stderr, made.stderr
    assert said in made.stderr.splitlines()[-1]
    assert not (tmp_path / "tls").exists()   # nothing half-made


@pytest.mark.unit
def test_make_certs_without_cryptography_says_what_to_install(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "cryptography"   # shadows the real package, as a base install lacks it
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'cryptography'\", name='cryptography')\n")
    made = subprocess.run([sys.executable, str(ROOT / "tools" / "make_certs.py"), "tls"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert made.returncode == 1 and "Traceback" not in made.stderr, made.stderr
    assert made.stderr.strip() == ("make_certs: cryptography is not installed: pip install cryptography "
                                   "(it is in the dev extra)")


# -- the README's examples --------------------------------------------------------------------
def readme_security_example() -> list[str]:
    text = documentation()
    block = text.split("<!-- security-example", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_the_readme_security_example_runs(tmp_path: Path) -> None:
    lines = readme_security_example()
    make, export, serve, *clients = lines
    assert make == "python tools/make_certs.py tls"
    made = subprocess.run([sys.executable, str(ROOT / "tools" / "make_certs.py"), "tls"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    name, value = export.removeprefix("export ").split("=", 1)
    env = {name: value}
    serve_args = shlex.split(serve.rstrip("&"))
    assert serve_args[:2] == ["callstate", "serve"]
    srv = start_server(tmp_path, *serve_args[2:], env=env)   # the server reads the token from the environment
    try:
        deadline = time.monotonic() + 20   # the banner follows the port file: wait for it, bounded
        while "mutual TLS, token required" not in srv.stderr.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "mutual TLS, token required" in srv.stderr.read_text()
        for line in clients:
            args = shlex.split(line, comments=True)   # a line may name its final code: `# 0`
            assert args[0] == "callstate"
            done = cli(*args[1:], "--target", srv.target, cwd=tmp_path, env=env)
            assert done.returncode == 0, (line, done.stderr)
            if args[1] == "health":   # the health service needs no token (its line waits for the server)
                continue
            refused = cli(*args[1:], "--target", srv.target, cwd=tmp_path, env={name: "wrong"})
            assert refused.returncode == 1, line   # and the token is really required
    finally:
        srv.stop()


def test_the_library_takes_the_same_options_in_process(tls: TlsFiles) -> None:
    async def go() -> None:
        async with EmulatorServer(port=0, log=None, tls_cert=str(tls.server_cert), tls_key=str(tls.server_key),
                                  token="change-me") as srv:
            async with AsyncClient("localhost:%d" % srv.port, tls_ca=str(tls.ca), token="change-me") as client:
                reply = await client.start(Script("complete"))
                assert reply.call_id
            async with AsyncClient("localhost:%d" % srv.port, tls_ca=str(tls.ca)) as client:
                with pytest.raises(CallError) as err:
                    await client.start(Script("complete"))
                assert err.value.code == codes.ERROR_ACCESS_DENIED
    asyncio.run(go())


def test_the_locked_down_compose_files_are_valid(tmp_path: Path) -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (tools/system-deps.sh installs it as root)")
    files = ["docker-compose.yml", "docker-compose.override.yml", "docker-compose.secure.yml"]
    done = subprocess.run([compose, *[a for f in files for a in ("-f", str(ROOT / f))], "config"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "CALLSTATE_TOKEN": "t0ken"})   # the overlay requires one
    assert done.returncode == 0, done.stderr
    for flag in ("--tls-client-ca", "--tls-ca", "--tls-cert", "CALLSTATE_TOKEN"):
        assert flag in done.stdout


# -- pipes are owned the same way (the key travels in metadata: a stream has no request message) --
def test_a_stranger_cannot_cancel_a_pipe_and_its_owner_can(server: ServerProcess) -> None:
    with Client(server.target) as client:
        victim = client.pipe("out", PipeScript(outcome="hold", interval=0.02)).start()
        assert victim.pull() is not None   # the server holds it and pushes
        for key in ("", "guessed-key"):
            assert stranger_notice(server.target, victim.call_id, key) == grpc.StatusCode.PERMISSION_DENIED
        assert victim.pull() is not None and victim.status() == codes.RPC_S_ASYNC_CALL_PENDING
        assert not any(e["event"] == "cancel_seen" for e in server.entries(victim.call_id))
        victim.cancel(abortive=False)   # the owner's notice, with the key the pipe was made with
        with pytest.raises(CallError) as err:
            victim.result(timeout=10)
        assert err.value.code == codes.RPC_S_CALL_CANCELLED
        seen = [e for e in server.wait_entries(victim.call_id) if e["event"] == "cancel_seen"]
        assert [e["cancel"] for e in seen] == ["non-abortive"]


def test_a_stranger_cannot_pre_cancel_a_pipe_id(server: ServerProcess) -> None:
    async def run() -> None:
        async with AsyncClient(server.target) as client:
            victim = client.pipe("out", PipeScript(messages=2))
            reply = stranger_notice(server.target, victim.call_id, "guessed-key")
            assert isinstance(reply, pb.CancelReply) and reply.delivered   # kept under the stranger's key
            victim.start()
            assert [m.seq async for m in victim] == [1, 2]
            assert await victim.result(timeout=10) is None
    asyncio.run(run())
    # an early notice with the pipe's own key is applied at dispatch
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.EmulatorStub(channel)
        assert stub.Cancel(pb.CancelRequest(call_id="early-pipe", cancel_key="k1"), timeout=10).delivered
        with pytest.raises(grpc.RpcError) as err:
            list(stub.PipeOut(pb.PipeRequest(call_id="early-pipe", script=pb.PipeScript(outcome=pb.OUTCOME_HOLD)),
                              metadata=((CANCEL_KEY_KEY, "k1"),), timeout=10))
        assert err.value.code() == grpc.StatusCode.CANCELLED


def test_a_pipe_with_an_oversized_cancel_key_or_call_id_is_refused_before_dispatch(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.EmulatorStub(channel)
        for metadata in (((CANCEL_KEY_KEY, "k" * 129),), ((CALL_ID_KEY, "i" * 1000),)):
            with pytest.raises(grpc.RpcError) as err:
                list(stub.PipeOut(pb.PipeRequest(script=pb.PipeScript(messages=1)), metadata=metadata, timeout=10))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert codes.from_grpc(err.value.code(), err.value.trailing_metadata()) == codes.RPC_S_INVALID_ARG
            assert metadata[0][0] in err.value.details() or "call_id" in err.value.details()


def test_a_stranger_cannot_squat_a_pipe_in_flight(server: ServerProcess) -> None:
    with Client(server.target) as client:
        victim = client.pipe("out", PipeScript(outcome="hold", interval=0.02)).start()
        assert victim.pull() is not None   # dispatched: the server pushes
        with grpc.insecure_channel(server.target) as channel:
            with pytest.raises(grpc.RpcError) as err:
                list(pb_grpc.EmulatorStub(channel).PipeOut(
                    pb.PipeRequest(call_id=victim.call_id, script=pb.PipeScript(messages=1)),
                    metadata=((CANCEL_KEY_KEY, "squatter"),), timeout=10))
            assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
            assert codes.from_grpc(err.value.code(), err.value.trailing_metadata()) == codes.RPC_S_INVALID_ARG
        assert victim.pull() is not None   # the pipe in flight is not touched
        victim.cancel()
        with pytest.raises(CallError):
            victim.result(timeout=10)
        entries = server.wait_entries(victim.call_id)
        assert states(entries)[0] == "D" and states(entries).count("D") == 1   # one dispatch: the squatter's never ran


def test_pipes_explain_a_plaintext_client_against_a_tls_server(tls_server: ServerProcess) -> None:
    """The hints unary calls give when the connection itself fails apply to pipes too."""
    done = cli("call", "--pipe", "out", "--target", tls_server.target, "--token", TOKEN, timeout=20)
    line = one_line(done.stderr)
    assert done.returncode == 1 and line.startswith("final: 1722 RPC_S_SERVER_UNAVAILABLE") and "--tls-ca" in line, line
    with Client(tls_server.target, token=TOKEN) as client:
        with pytest.raises(CallError) as err:
            client.pipe("in", PipeScript()).start().result(timeout=10)
    assert err.value.code == codes.RPC_S_SERVER_UNAVAILABLE and "--tls-ca" in err.value.details, err.value.details
