"""The emulator server as users run it (`callstate serve`): defects found by an audit, each
pinned by a test that fails without its fix. Every scenario's state logs go through
`callstate check`, the product's own judge."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from callstate import codes
from callstate.files import check_key_pair
from callstate.lifecycle import FATAL
from tests.certs import TlsFiles, make_tls_files
from tests.conftest import EVIDENCE_WAIT, ServerProcess, at_default, cli, final, final_codes, read_entries, start_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def serve_fails(*args: str, cwd: Path) -> str:
    """`callstate serve` that must refuse to start: its one stderr line. In a session of its own
    (no controlling terminal), so nothing can prompt on one and wait for an answer."""
    done = subprocess.run([sys.executable, "-m", "callstate", "serve", "--port", "0", "--log-file", "s.jsonl", *args],
                          capture_output=True, text=True, timeout=EVIDENCE_WAIT * 2, cwd=cwd,
                          stdin=subprocess.DEVNULL, start_new_session=True)
    assert done.returncode in (1, 2), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("callstate serve: "), line
    return line


def stop_if_running(srv: ServerProcess) -> None:
    """After a test that signalled the server itself: only a server still running is stopped."""
    if srv.proc.poll() is None:
        srv.stop()


def check_ok(*logs: Path) -> None:
    done = cli("check", *map(str, logs), timeout=EVIDENCE_WAIT * 3)
    assert done.returncode == 0, done.stdout + done.stderr


# -- --max-hold 0: a held call ends with 1460 -----------------------------------------------------
def test_a_held_call_under_max_hold_0_ends_with_1460_not_as_a_scripted_fatal_failure(tmp_path: Path) -> None:
    """A hold has no outcome of its own: it ends at --max-hold. With --max-hold 0 no wait ran, and
    the handler fell through to the fatal branch: 1726 "scripted fatal failure" for a call that
    asked for no failure."""
    srv = start_server(tmp_path, "--max-hold", "0")
    client_log = tmp_path / "client.jsonl"
    try:
        done = cli("call", "--target", srv.target, "--outcome", "hold", "--log-file", str(client_log), "--json",
                   timeout=EVIDENCE_WAIT * 2)
        assert done.returncode == 1, done.stderr
        assert "1460 RPC_S_TIMEOUT" in done.stderr and "fatal" not in done.stderr, done.stderr
    finally:
        assert srv.stop() == 0
    [call_id] = {e["call_id"] for e in read_entries(client_log)}
    server = read_entries(srv.log, call_id)
    assert final(server)["code"] == codes.RPC_S_TIMEOUT
    assert FATAL not in [e.get("move") for e in server]
    check_ok(srv.log, client_log)


# -- TLS files that cannot serve: one line saying what is wrong with which file -----------------------
def test_an_encrypted_key_is_named_as_such_and_never_prompts_for_a_passphrase(tls: TlsFiles, tmp_path: Path) -> None:
    """OpenSSL, given no password callback, prompts on the terminal for the passphrase (a server
    started by hand waited there) and then failed with "[Errno 22] Invalid argument"."""
    key = serialization.load_pem_private_key(tls.server_key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    line = serve_fails("--tls-cert", str(tls.server_cert), "--tls-key", str(encrypted), cwd=tmp_path)
    assert "'" + str(encrypted) + "' is encrypted" in line, line
    assert "Errno" not in line
    with pytest.raises(OSError, match="is encrypted"):   # the clients' check is the same function
        check_key_pair(tls.client_cert, encrypted, "TLS client certificate")


def test_a_pem_file_without_the_key_or_the_certificate_says_which(tls: TlsFiles, tmp_path: Path) -> None:
    """OpenSSL's own word for both was "[SSL] PEM lib (_ssl.c:NNNN)"."""
    line = serve_fails("--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_cert), cwd=tmp_path)
    assert line.endswith(f"'{tls.server_cert}' holds no PRIVATE KEY"), line
    line = serve_fails("--tls-cert", str(tls.server_key), "--tls-key", str(tls.server_key), cwd=tmp_path)
    assert line.endswith(f"'{tls.server_key}' holds no CERTIFICATE"), line


def test_a_client_ca_without_a_certificate_is_named_not_taken_for_a_bind_failure(tls: TlsFiles,
                                                                               tmp_path: Path) -> None:
    """grpc refuses such a CA only by failing to bind: the server said "cannot bind
    127.0.0.1:0", and nothing about the CA."""
    for bad in (tls.server_key, tmp_path / "bad.pem"):
        if bad.name == "bad.pem":   # a PEM block that is no certificate at all
            bad.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        line = serve_fails("--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key),
                           "--tls-client-ca", str(bad), cwd=tmp_path)
        assert f"the TLS client CA '{bad}' holds no usable certificate" in line, line
        assert "bind" not in line
    # and a sound CA with text around its certificate (openssl's Bag Attributes, a subject in UTF-8) serves
    ca = tmp_path / "ca-with-attributes.pem"
    ca.write_bytes("Bag Attributes\n    subject=/CN=Jürgen CA\n".encode() + tls.ca.read_bytes())
    srv = start_server(tmp_path, "--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key),
                       "--tls-client-ca", str(ca))
    assert srv.stop() == 0


# -- a port that cannot be bound: why -----------------------------------------------------------------
def test_a_port_in_use_is_said_to_be_in_use(tmp_path: Path) -> None:
    """grpc says only "Failed to bind ...; set GRPC_VERBOSITY=debug ... to see detailed error
    message": the server now says what the system said, and how to get a free port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = serve_fails("--port", str(port), cwd=tmp_path)
    assert line == (f"callstate serve: cannot bind 127.0.0.1:{port}: Address already in use (another process "
                    "listens there; --port 0 picks a free port)"), line
    line = serve_fails("--bind", "no-such-host.invalid", cwd=tmp_path)
    assert "'no-such-host.invalid' does not resolve" in line and "GRPC_VERBOSITY" not in line, line


def test_a_state_log_that_cannot_be_opened_is_named(tmp_path: Path) -> None:
    """Python's own words named neither: "[Errno 22] Invalid argument" for /proc/version."""
    line = serve_fails("--log-file", str(tmp_path), cwd=tmp_path)
    assert line == f"callstate serve: cannot open the state log '{tmp_path}': Is a directory", line
    line = serve_fails("--log-file", "/proc/version", cwd=tmp_path)
    assert line.startswith("callstate serve: cannot open the state log '/proc/version': "), line


# -- shutdown: a pipe its caller stopped reading ends as the server's stop, not as the caller's cancel ---
def test_a_pipe_held_up_by_a_caller_that_stopped_reading_ends_with_1722_on_shutdown(tmp_path: Path) -> None:
    """Its writes wait for the caller's window, so the stop reaches it only at the end of --grace,
    when grpc cancels every call (the caller is told UNAVAILABLE): the server logged that as the
    caller's abortive cancel, 1818 "cancelled by the caller", a cancel nobody made."""
    import grpc

    from callstate.v1 import callstate_pb2 as pb
    from callstate.v1 import callstate_pb2_grpc as pb_grpc

    srv = start_server(tmp_path, "--grace", "0.5")
    call_id = "stalled-reader-1"
    script = pb.PipeScript(outcome=pb.OUTCOME_COMPLETE, messages=1000, message_bytes=1_000_000)
    with grpc.insecure_channel(srv.target) as channel:
        stream = pb_grpc.EmulatorStub(channel).PipeOut(pb.PipeRequest(call_id=call_id, script=script),
                                                        timeout=EVIDENCE_WAIT * 3)
        try:
            next(stream)   # one message read, then no more: the server's writes wait for the window
            srv.wait_entries(call_id, lambda es: any(e.get("sent", 0) >= 2 for e in es) or len(es) >= 2)
            assert srv.stop() == 0
            with pytest.raises(grpc.RpcError) as err:
                for _ in stream:
                    pass
        finally:
            stream.cancel()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    entries = srv.entries(call_id)
    assert not [e for e in entries if e["event"] == "cancel_seen"], entries
    end = final(entries)
    assert (end["code"], end["grpc_status"], end["detail"]) == (codes.RPC_S_SERVER_UNAVAILABLE, "UNAVAILABLE",
                                                                 "server is shutting down")
    done = cli("check", "--allow-one-side", str(srv.log), timeout=EVIDENCE_WAIT * 3)
    assert done.returncode == 0, done.stdout + done.stderr


# -- shutdown with --grace 0: a journal watcher still gets every call's End ----------------------------
def test_a_watcher_gets_every_end_when_a_server_with_grace_0_stops(tmp_path: Path) -> None:
    """gRPC's stop cancels the Watch/Follow streams with the calls when the grace ends: at once with
    --grace 0, so the End of the held calls the stop ended never reached the watcher (33 of 500
    by hand) and `callstate watch` failed with "UNAVAILABLE: Cancelling all calls"."""
    import asyncio
    import signal

    import grpc

    from callstate.client import AsyncClient, Script
    from callstate.v1 import callstate_pb2 as pb
    from callstate.v1 import callstate_pb2_grpc as pb_grpc

    held = 60
    srv = start_server(tmp_path, "--grace", "0")
    client_log = tmp_path / "client.jsonl"

    async def go() -> tuple[list[pb.StateEntry], list[int]]:
        async with grpc.aio.insecure_channel(srv.target) as channel:
            journal = pb_grpc.JournalStub(channel)
            stream = journal.Watch(pb.WatchRequest(), timeout=EVIDENCE_WAIT * 3)
            await stream.initial_metadata()   # subscribed: every entry from here on is sent
            async with AsyncClient(srv.target, log=str(client_log)) as client:
                calls = [client.start(Script("hold")) for _ in range(held)]
                for _ in range(int(EVIDENCE_WAIT / 0.05)):
                    if (await journal.GetCounters(pb.CountersRequest())).in_flight >= held:
                        break
                    await asyncio.sleep(0.05)
                srv.proc.send_signal(signal.SIGTERM)
                seen = [e async for e in stream]   # to the stream's end: an error here fails the test
                got = await final_codes(calls)
        return seen, got

    try:
        seen, got = asyncio.run(go())
        assert srv.proc.wait(EVIDENCE_WAIT) == 0   # signalled once: a second SIGTERM could find its loop gone
    finally:
        stop_if_running(srv)
    assert got == [codes.RPC_S_SERVER_UNAVAILABLE] * held
    ends = [e for e in seen if e.state == "End" and e.event == "enter"]
    assert len(ends) == held and {e.code for e in ends} == {codes.RPC_S_SERVER_UNAVAILABLE}
    check_ok(srv.log, client_log)


# -- SIGHUP: the terminal went away ---------------------------------------------------------------------
def test_sighup_stops_the_server_gracefully_and_every_held_call_ends_in_its_log(tmp_path: Path) -> None:
    """SIGHUP (its terminal closed, its ssh session dropped) killed the server on the spot: exit
    129, the held calls never ended in its state log and `callstate check` failed the run."""
    import asyncio
    import signal

    from callstate.client import AsyncClient, CallError, Script

    held = 20
    # SIGHUP at its default, as under a terminal: a suite run under nohup passes its ignored SIGHUP
    # on to the server, which then rightly keeps serving and held every call to its max hold (1460)
    srv = start_server(tmp_path, launcher=at_default(signal.SIGHUP))
    client_log = tmp_path / "client.jsonl"

    async def go() -> list[int]:
        async with AsyncClient(srv.target, log=str(client_log)) as client:
            calls = [client.start(Script("hold")) for _ in range(held)]
            for _ in range(int(EVIDENCE_WAIT / 0.05)):
                if sum(e["state"] == "D" for e in read_entries(srv.log)) >= held:
                    break
                await asyncio.sleep(0.05)
            srv.proc.send_signal(signal.SIGHUP)
            got = []
            for call in calls:
                with pytest.raises(CallError) as err:
                    await call
                got.append(err.value.code)
            return got

    try:
        assert asyncio.run(go()) == [codes.RPC_S_SERVER_UNAVAILABLE] * held
        assert srv.proc.wait(EVIDENCE_WAIT) == 0
    finally:
        stop_if_running(srv)
    assert "stopped after" in srv.stderr.read_text()
    check_ok(srv.log, client_log)


def test_a_server_started_under_nohup_keeps_serving_through_sighup(tmp_path: Path) -> None:
    """nohup ignores SIGHUP so that the server outlives its terminal: the handler that stops the
    server on SIGHUP is not installed over that."""
    import signal

    port_file = tmp_path / "port"
    proc = subprocess.Popen(["sh", "-c", 'trap "" HUP; exec "$0" -m callstate serve --port 0 --port-file "$1" '
                             '--log-file "$2"', sys.executable, str(port_file), str(tmp_path / "s.jsonl")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        for _ in range(int(EVIDENCE_WAIT / 0.05)):
            if port_file.exists() and port_file.read_text().strip() or proc.poll() is not None:
                break
            time.sleep(0.05)
        target = f"127.0.0.1:{port_file.read_text().strip()}"
        proc.send_signal(signal.SIGHUP)
        done = cli("call", "--target", target, timeout=EVIDENCE_WAIT * 2)   # answered after the SIGHUP
        assert done.returncode == 0, done.stderr
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(EVIDENCE_WAIT) == 0


# -- a burst of calls: none ended by grpc core before its dispatch ------------------------------------
def test_a_burst_of_held_calls_is_dispatched_whole_none_cancelled_by_grpc_core(tmp_path: Path) -> None:
    """grpc core holds the calls the event loop has not taken yet, 1000 of them by default (some
    refused at random up to 3000): past that it ended calls CANCELLED before their dispatch, so
    a caller saw 1818 for a cancel nobody made (`callstate load --concurrency 3000 --mix hold=100`
    counted 578 such calls among its own cancels, and the checker could not tell)."""
    import asyncio
    import signal

    import grpc

    from callstate.v1 import callstate_pb2 as pb
    from callstate.v1 import callstate_pb2_grpc as pb_grpc

    burst = 2500   # within a connection's --max-concurrent-streams (4096)
    srv = start_server(tmp_path, "--grace", "5")

    async def go() -> list[grpc.StatusCode]:
        async with grpc.aio.insecure_channel(srv.target) as channel:
            stub = pb_grpc.EmulatorStub(channel)
            hold = pb.Script(outcome=pb.OUTCOME_HOLD)
            calls = [stub.Call(pb.CallRequest(call_id=f"burst-{i}", script=hold)) for i in range(burst)]
            journal = pb_grpc.JournalStub(channel)
            for _ in range(int(EVIDENCE_WAIT * 3 / 0.1)):
                if (await journal.GetCounters(pb.CountersRequest())).in_flight >= burst or \
                        any(call.done() for call in calls):
                    break
                await asyncio.sleep(0.1)
            srv.proc.send_signal(signal.SIGTERM)
            got = []
            for call in calls:
                try:
                    await call
                    got.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as err:
                    got.append(err.code())
            return got

    try:
        got = asyncio.run(go())
        assert srv.proc.wait(EVIDENCE_WAIT) == 0
    finally:
        stop_if_running(srv)
    assert {code: got.count(code) for code in set(got)} == {grpc.StatusCode.UNAVAILABLE: burst}
    ends = [e for e in read_entries(srv.log) if e["state"] == "End"]
    assert len(ends) == burst and {e["code"] for e in ends} == {codes.RPC_S_SERVER_UNAVAILABLE}
    done = cli("check", "--allow-one-side", str(srv.log), timeout=EVIDENCE_WAIT * 3)
    assert done.returncode == 0, done.stdout + done.stderr


# -- callstate watch: a server that stops is said to have stopped -------------------------------------
def test_watch_says_so_when_the_server_ends_its_stream_by_stopping(tmp_path: Path) -> None:
    """It fell silent and exited 0 as if it had been asked to: nothing told its user that the
    server had stopped."""
    srv = start_server(tmp_path)
    watch = subprocess.Popen([sys.executable, "-m", "callstate", "watch", "--target", srv.target, "--dashboard",
                              "never"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watch.stderr is not None
        assert watch.stderr.readline().startswith("watching ")   # subscribed (bounded by the test's timeout)
        assert cli("call", "--target", srv.target, timeout=EVIDENCE_WAIT * 2).returncode == 0
        assert srv.stop() == 0
        out, err = watch.communicate(timeout=EVIDENCE_WAIT * 2)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0, err
    assert err.splitlines() == [f"callstate watch: {srv.target} ended the stream: the server is stopping"], err
    assert " End " in out


def test_the_serving_line_names_an_ipv6_address_as_a_target_does(tmp_path: Path) -> None:
    """It said "on ::1:40123", which no client takes as a target; a target is [::1]:40123."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    srv = start_server(tmp_path, "--bind", "::1")
    try:
        target = f"[::1]:{srv.port}"
        assert cli("call", "--target", target, timeout=EVIDENCE_WAIT * 2).returncode == 0
    finally:
        assert srv.stop() == 0
    assert f"callstate.v1.Journal on {target} (plaintext" in srv.stderr.read_text()


# -- ListCalls' method filter cannot freeze the server --------------------------------------------------
def test_a_method_filter_of_many_wildcards_answers_at_once_and_the_server_keeps_serving(tmp_path: Path) -> None:
    """Each `*` became `.*` in one regex: `.*.*.*...Z` backtracks exponentially on every stand-in
    call's method name (14 wildcards: 10 s per name), on the event loop, so one ListCalls froze
    the whole server: its calls, its max hold, its health, its stop."""
    import grpc

    from callstate.v1 import callstate_pb2 as pb
    from callstate.v1 import callstate_pb2_grpc as pb_grpc
    from tests.conftest import ROOT

    protos = ROOT / "tests" / "protos"
    srv = start_server(tmp_path, "--proto", str(protos / "shop" / "v1" / "shop.proto"), "--proto-path", str(protos),
                       "--mix", "complete=1")
    try:
        done = cli("call", "--target", srv.target, "--method", "shop.v1.Shop/Charge", "--data", "{}",
                   "--proto", str(protos / "shop" / "v1" / "shop.proto"), "--proto-path", str(protos),
                   timeout=EVIDENCE_WAIT * 2)
        assert done.returncode == 0, done.stderr
        with grpc.insecure_channel(srv.target) as channel:
            journal = pb_grpc.JournalStub(channel)
            listed = journal.ListCalls(pb.ListCallsRequest(method="*" * 40 + "Z"), timeout=EVIDENCE_WAIT)
            assert list(listed.calls) == []
            listed = journal.ListCalls(pb.ListCallsRequest(method="shop.v1.*/*rg*"), timeout=EVIDENCE_WAIT)
            assert [c.method for c in listed.calls] == ["shop.v1.Shop/Charge"]
            with pytest.raises(grpc.RpcError) as err:
                journal.ListCalls(pb.ListCallsRequest(method="*" * 5000), timeout=EVIDENCE_WAIT)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "method" in err.value.details()
        assert srv.stop() == 0
    finally:
        if srv.proc.poll() is None:   # a server whose loop is frozen cannot take its SIGTERM
            srv.proc.kill()
            srv.proc.wait(EVIDENCE_WAIT)


def test_a_watcher_refused_by_max_watchers_is_told_why_in_words_that_fit(tmp_path: Path) -> None:
    """It said "0 watchers already" of a server that takes none, and "1 watchers already"."""
    for bound, said in (("0", "this server takes no watchers (--max-watchers 0)"),
                        ("1", "the server's 1 watcher slots (--max-watchers) are all taken")):
        srv = start_server(tmp_path, "--max-watchers", bound, name=f"w{bound}")
        first = None
        try:
            if bound == "1":   # its one slot taken by a watcher that reads
                first = subprocess.Popen([sys.executable, "-m", "callstate", "watch", "--target", srv.target,
                                          "--dashboard", "never"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         text=True)
                assert first.stderr is not None and first.stderr.readline().startswith("watching ")
            done = cli("watch", "--target", srv.target, timeout=EVIDENCE_WAIT * 2)
            assert done.returncode == 1
            assert said in done.stderr and "watchers already" not in done.stderr, done.stderr
        finally:
            if first is not None:
                first.kill()
                first.wait(EVIDENCE_WAIT)
            srv.stop()


# -- a polling pipe cancelled by its caller, its next poll after --max-hold --------------------------------
def test_a_polling_pipe_cut_by_max_hold_before_its_next_poll_ends_per_its_policy_not_as_a_handler_error(
        tmp_path: Path) -> None:
    """The handler works on until its next poll sees the abortive cancel; the max-hold watchdog
    cancelled it there, and the call ended "fatal 1726 handler error: CancelledError" with no
    message counts, which `callstate check` took for a pipe count mismatch."""
    # The caller cancels once the server's headers came (sent at dispatch): a cancel on a timer could
    # beat the dispatch on a busy machine (no call at the server) or come after the max hold.
    srv = start_server(tmp_path, "--max-hold", "3")
    client_log = tmp_path / "client.jsonl"
    try:
        for kind, policy, code in (("out", "abort", codes.RPC_S_CALL_CANCELLED), ("in", "complete", 0)):
            done = cli("call", "--target", srv.target, "--pipe", kind, "--outcome", "hold", "--on-cancel", policy,
                       "--cancel-poll-ms", "60000", "--cancel-at", "after-headers", "--log-file", str(client_log),
                       "--json", timeout=EVIDENCE_WAIT * 2)
            assert done.returncode == 1 and "1818" in done.stderr, done.stderr   # the caller's own abortive cancel
            call_id = read_entries(client_log)[-1]["call_id"]
            end = final(srv.wait_entries(call_id))
            assert (end["code"], end["move"]) != (codes.RPC_S_CALL_FAILED, FATAL), end
            assert end["code"] == code and "sent" in end and "received" in end, end
    finally:
        assert srv.stop() == 0
    check_ok(srv.log, client_log)
