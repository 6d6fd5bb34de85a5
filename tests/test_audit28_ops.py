"""Audit of the operations commands, round 28: `watch` through a proxy whose upstream is down or
failing, `watch --call-id` over replicas, HEAD /metrics, a call id replayed after the journal
forgot its call, and `serve` started with SIGINT ignored (a shell's background job). Real
`callstate serve` processes on loopback, a real nginx, real signals."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import grpc
import pytest

from callstate.server.ended_ids import EndedIds
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from callstate.wire import CODE_KEY
from tests.conftest import EVIDENCE_WAIT, cli, read_entries, start_server
from tests.middleboxes import free_port, start_nginx

needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None,
                                 reason="nginx is not installed (tools/system-deps.sh installs it)")

BAD_GATEWAY = ("HTTP 502 Bad Gateway, not gRPC: a proxy there could not reach the callstate server behind "
               "it (is it running, at the address the proxy forwards to?)")


def _wait(what: str, check: Callable[[], object], timeout: float = EVIDENCE_WAIT, poll: float = 0.02) -> object:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(poll)
    return got


def _one_line(run: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# -- 1. watch through a proxy whose upstream is down or failing ------------------------------------

@needs_nginx
def test_watch_through_nginx_with_its_upstream_down_says_the_proxy_answered_502(tmp_path: Path,
                                                                                refused_target: str) -> None:
    """nginx (the README's config) forwarding to a port where no server runs: `watch` said
    "UNAVAILABLE: Received http2 header with status: 502", or, as nginx's HTML page raced its
    headers, "UNKNOWN: Stream removed (Data frame with END_STREAM flag received)", naming nothing.
    Now every form of the command says what answered, in one line, exit 1."""
    proxy = start_nginx(tmp_path, free_port(), int(refused_target.rsplit(":", 1)[1]))   # upstream: held, refused
    try:
        runs = [("--dashboard", "never")] * 3 + [("--counters",), ("--call-id", "some-call"), ("--json",)]
        for extra in runs:
            run = cli("watch", "--target", proxy.target, *extra)
            assert run.returncode == 1, (extra, run.stderr)
            assert _one_line(run) == f"callstate watch: {proxy.target} answered {BAD_GATEWAY}", extra
    finally:
        proxy.stop()


@needs_nginx
def test_watch_through_nginx_that_answers_a_grpc_status_of_its_own(tmp_path: Path, refused_target: str) -> None:
    """An nginx set up the gRPC way, its 502 turned into grpc-status 14: it was "UNAVAILABLE:
    upstream unavailable", which reads like the callstate server's own answer."""
    port, upstream = free_port(), int(refused_target.rsplit(":", 1)[1])   # upstream: held, refused
    block = f"""server {{
    listen 127.0.0.1:{port} http2;
    location / {{
        grpc_pass grpc://127.0.0.1:{upstream};
        error_page 502 = /grpc-unavailable;
    }}
    location = /grpc-unavailable {{
        internal;
        default_type application/grpc;
        add_header grpc-status 14 always;
        add_header grpc-message "upstream unavailable" always;
        return 204;
    }}
}}"""
    proxy = start_nginx(tmp_path, port, upstream, block)
    try:
        for extra in (("--dashboard", "never"), ("--counters",), ("--call-id", "some-call")):
            run = cli("watch", "--target", proxy.target, *extra)
            assert run.returncode == 1, run.stderr
            assert _one_line(run) == (f"callstate watch: {proxy.target} answered gRPC UNAVAILABLE ('upstream "
                                      "unavailable') from a proxy, not from a callstate server: the proxy could not "
                                      "reach the server behind it"), extra
    finally:
        proxy.stop()


@needs_nginx
def test_watch_through_nginx_whose_upstream_never_answers_says_504(tmp_path: Path) -> None:
    """The upstream takes the connection and never answers (a hung server): nginx gives up
    after its grpc_read_timeout and answers 504."""
    silent = socket.create_server(("127.0.0.1", 0))
    port = free_port()
    block = f"""server {{
    listen 127.0.0.1:{port} http2;
    location / {{
        grpc_pass grpc://127.0.0.1:{silent.getsockname()[1]};
        grpc_read_timeout 1s;
        grpc_send_timeout 1s;
    }}
}}"""
    proxy = start_nginx(tmp_path, port, silent.getsockname()[1], block)
    try:
        for extra in (("--dashboard", "never"), ("--call-id", "some-call")):
            run = cli("watch", "--target", proxy.target, *extra)
            assert run.returncode == 1, run.stderr
            assert _one_line(run) == (f"callstate watch: {proxy.target} answered HTTP 504 Gateway Timeout, not gRPC: "
                                      "a proxy there gave up waiting for the callstate server behind it"), extra
    finally:
        proxy.stop()
        silent.close()


@needs_nginx
def test_watch_through_nginx_when_the_server_behind_it_dies_says_the_proxy_now_answers(tmp_path: Path) -> None:
    """A watch through nginx, its server killed mid-watch: it said "INTERNAL: Stream removed
    (RST_STREAM (Received RST_STREAM with error code 2))". Now: the watch was cut, and what the
    proxy answers in its place."""
    srv = start_server(tmp_path)
    proxy = start_nginx(tmp_path, free_port(), srv.port)
    proc = None
    try:
        err = tmp_path / "watch.err"
        proc = subprocess.Popen([sys.executable, "-m", "callstate", "watch", "--target", proxy.target, "--dashboard",
                                 "never"], stdout=subprocess.DEVNULL, stderr=open(err, "wb"))
        _wait("watching", lambda: "watching" in err.read_text())
        srv.stop(signal.SIGKILL)
        assert proc.wait(EVIDENCE_WAIT) == 1
        text = err.read_text()
        assert "Traceback" not in text, text
        lines = text.splitlines()
        assert len(lines) == 2 and lines[0].startswith("watching"), lines
        assert lines[1].startswith(f"callstate watch: {proxy.target}: the watch was cut ("), lines
        assert lines[1].endswith(f"), and {proxy.target} now answers {BAD_GATEWAY}"), lines
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        proxy.stop()
        srv.stop()


# -- 2. watch --call-id over replicas ----------------------------------------------------------

def test_watch_of_one_call_finds_the_replica_that_holds_it(tmp_path: Path, refused_target: str) -> None:
    """`watch --call-id ID --target A --target B` was refused ("give one --target, the replica
    that holds it"), yet which replica holds a call is what the user does not know. Now each is
    asked: a call in flight on B is followed there to its End; an ended call on A is shown from A;
    a replica that does not answer does not stop it."""
    a, b = start_server(tmp_path, name="a"), start_server(tmp_path, name="b")
    proc = None
    try:
        held_id = f"held-{time.monotonic_ns()}"
        with grpc.insecure_channel(b.target) as channel:
            held = pb_grpc.EmulatorStub(channel).Call.future(
                pb.CallRequest(call_id=held_id, script=pb.Script(outcome=pb.OUTCOME_HOLD)), timeout=60)
            b.wait_entries(held_id, lambda es: bool(es))   # dispatched on B
            out = tmp_path / "watch.out"
            proc = subprocess.Popen([sys.executable, "-m", "callstate", "watch", "--target", a.target, "--target",
                                     b.target, "--call-id", held_id, "--json"], stdout=open(out, "wb"),
                                    stderr=subprocess.PIPE)
            _wait("the call's D line", lambda: '"state":"D"' in out.read_text())
            held.cancel()   # the caller's abortive cancel: the server ends the call 1818
            assert proc.wait(EVIDENCE_WAIT) == 0, proc.stderr.read() if proc.stderr else ""
        lines = out.read_text().splitlines()
        assert [re.search(r'"state":"(\w+)"', line).group(1) for line in lines if '"event":"enter"' in line][-1] == "End"
        assert '"code":1818' in lines[-1]
        # B's entries, each once (its state log is written a moment after its journal, which watch read)
        assert len(b.wait_entries(held_id)) == len(lines) and not a.entries(held_id)

        made = cli("call", "--target", a.target, "--log-file", str(tmp_path / "client.jsonl"))
        assert made.returncode == 0, made.stderr
        ended_id = read_entries(tmp_path / "client.jsonl")[0]["call_id"]
        shown = cli("watch", "--target", refused_target, "--target", b.target, "--target", a.target, "--call-id",
                    ended_id, "--json")
        assert shown.returncode == 0 and shown.stderr == "", shown.stderr
        assert len(shown.stdout.splitlines()) == len(a.entries(ended_id)) == 3
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        a.stop()
        b.stop()


def test_watch_of_a_call_on_no_replica_is_one_line_and_exit_1(tmp_path: Path, refused_target: str) -> None:
    a, b = start_server(tmp_path, name="a"), start_server(tmp_path, name="b")
    try:
        run = cli("watch", "--target", a.target, "--target", b.target, "--call-id", "made-nowhere")
        assert run.returncode == 1
        assert _one_line(run) == (f"callstate watch: no call 'made-nowhere' on {a.target}, {b.target} (never made "
                                  "there, or ended longer ago than its journal keeps: --journal-size)")
        down = cli("watch", "--target", a.target, "--target", refused_target, "--call-id", "made-nowhere")
        assert down.returncode == 1 and "Traceback" not in down.stderr
        lines = down.stderr.splitlines()
        assert len(lines) == 2 and lines[0].startswith(f"callstate watch: {refused_target}: UNAVAILABLE"), lines
        assert lines[1].startswith(f"callstate watch: no call 'made-nowhere' on {a.target} (never made"), lines
    finally:
        a.stop()
        b.stop()


# -- 3. HEAD /metrics ------------------------------------------------------------------------------

def _http(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """One raw HTTP/1.1 exchange (the endpoint closes the connection): status line, headers, and
    every byte after the header block."""
    with socket.create_connection(("127.0.0.1", port), timeout=EVIDENCE_WAIT) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    return status, {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}, body


def test_head_metrics_carries_the_headers_of_get_and_no_body(tmp_path: Path) -> None:
    """HEAD /metrics said Content-Length: 0 (and a HEAD refused for its token carried a body)."""
    srv = start_server(tmp_path, "--metrics-port", "0", "--metrics-token", "scrape-me")
    try:
        url = _wait("the metrics line", lambda: re.search(r"metrics on http://[^:]+:(\d+)/metrics",
                                                          srv.stderr.read_text()))
        port = int(url.group(1))  # type: ignore[union-attr]
        auth = b"Authorization: Bearer scrape-me\r\n"
        get_status, get_headers, body = _http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
        head_status, head_headers, nothing = _http(port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
        assert get_status == head_status == "HTTP/1.1 200 OK"
        assert int(get_headers["content-length"]) == len(body) > 0 and b"callstate_" in body
        assert head_headers == get_headers and nothing == b""   # no call in between: the same body's length

        denied_get = _http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        denied_head = _http(port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert denied_get[0] == denied_head[0] == "HTTP/1.1 401 Unauthorized"
        assert denied_head[1] == denied_get[1] and int(denied_get[1]["content-length"]) == len(denied_get[2]) > 0
        assert denied_head[2] == b""
    finally:
        srv.stop()


# -- 4. a call id replayed after the journal forgot its call ---------------------------------------

def _replay(stub: pb_grpc.EmulatorStub, call_id: str) -> grpc.RpcError | None:
    try:
        stub.Call(pb.CallRequest(call_id=call_id, script=pb.Script(outcome=pb.OUTCOME_COMPLETE)), timeout=10)
    except grpc.RpcError as err:
        return err
    return None


def test_an_id_is_refused_after_the_journal_forgot_its_call(tmp_path: Path) -> None:
    """With --journal-size 1, one more call and the first is forgotten: its id was then taken
    again, the state log had two lifecycles for it and `callstate check` failed ("server enter D
    after End"). Now the id is refused as while the journal knew it (ALREADY_EXISTS, 87)."""
    srv = start_server(tmp_path, "--journal-size", "1")
    try:
        first, second = f"first-{time.monotonic_ns()}", f"second-{time.monotonic_ns()}"
        with grpc.insecure_channel(srv.target) as channel:
            stub, journal = pb_grpc.EmulatorStub(channel), pb_grpc.JournalStub(channel)
            assert _replay(stub, first) is None and _replay(stub, second) is None
            with pytest.raises(grpc.RpcError) as forgotten:
                journal.GetCall(pb.GetCallRequest(call_id=first), timeout=10)
            assert forgotten.value.code() == grpc.StatusCode.NOT_FOUND   # the journal no longer has it
            refused = _replay(stub, first)
        assert refused is not None and refused.code() == grpc.StatusCode.ALREADY_EXISTS, refused
        assert "an id stays reserved for 60s" in refused.details()
        assert dict(refused.trailing_metadata())[CODE_KEY] == "87"
    finally:
        srv.stop()
    assert [e["state"] for e in srv.entries(first)] == ["D", "Comp", "End"]   # one lifecycle
    checked = cli("check", "--allow-one-side", str(srv.log))
    assert checked.returncode == 0, checked.stdout


def test_retained_ids_are_bounded_oldest_first(tmp_path: Path) -> None:
    """--max-retained-ids bounds the ids remembered beyond the journal: past it the oldest are let
    go (and may be taken again), the newest are still refused."""
    srv = start_server(tmp_path, "--journal-size", "0", "--max-retained-ids", "3")
    try:
        ids = [f"bounded-{i}-{time.monotonic_ns()}" for i in range(4)]
        with grpc.insecure_channel(srv.target) as channel:
            stub = pb_grpc.EmulatorStub(channel)
            assert all(_replay(stub, call_id) is None for call_id in ids)
            newest = _replay(stub, ids[-1])
            assert newest is not None and newest.code() == grpc.StatusCode.ALREADY_EXISTS
            assert _replay(stub, ids[0]) is None   # let go: over the bound
    finally:
        srv.stop()


def test_ended_ids_expire_by_age_and_a_later_end_of_the_same_id_is_kept() -> None:
    ids = EndedIds(retention=10.0, limit=100)
    ids.add("a", 1000.0)
    assert ids.ended_at("a") == 1000.0 and ids.ended_at("b") is None
    ids.add("b", 1011.5)   # "a" is past its retention (and the second of slack): let go
    assert ids.ended_at("a") is None and ids.ended_at("b") == 1011.5 and len(ids) == 1
    ids.add("b", 1030.0)   # taken again once free, and ended again
    ids.add("c", 1031.5)   # the first End of "b" expires; its second stays
    assert ids.ended_at("b") == 1030.0 and ids.forgotten_early == 0
    off = EndedIds(retention=0.0)
    off.add("a", 1000.0)
    assert off.ended_at("a") is None and len(off) == 0


# -- 5. serve started with SIGINT ignored (`callstate serve &` in a script) -------------------------

def _signals(pid: int) -> tuple[int, int] | None:
    """The process's ignored and caught signal masks, from /proc (None once it has exited)."""
    try:
        fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":\t" in line)
        return int(fields["SigIgn"], 16), int(fields["SigCgt"], 16)
    except (OSError, KeyError):
        return None


def _bit(sig: int) -> int:
    return 1 << (sig - 1)


def _serve_with_sigint_ignored(tmp: Path) -> tuple[subprocess.Popen[bytes], Path, Path, Path]:
    """`callstate serve` as a non-interactive shell starts a background job: SIGINT ignored."""
    port_file, log, err = tmp / "serve.port", tmp / "serve.jsonl", tmp / "serve.err"
    proc = subprocess.Popen(["sh", "-c", 'trap "" INT; exec "$0" -m callstate serve --port 0 --port-file "$1" '
                             '--log-file "$2"', sys.executable, str(port_file), str(log)],
                            stdout=subprocess.DEVNULL, stderr=open(err, "wb"))
    return proc, port_file, log, err


def _caught(proc: subprocess.Popen[bytes], sig: int) -> tuple[int, int]:
    """Poll (1 ms) until the process catches `sig`: its own code has started; bounded. Only once
    the wrapping shell has exec'd Python: dash itself catches SIGINT until its `trap "" INT` runs,
    and a signal sent then kills the shell (a race this test once lost: status -2)."""
    python = os.path.realpath(sys.executable)

    def masks() -> tuple[int, int] | None:
        got = _signals(proc.pid)
        assert got is not None and proc.poll() is None, "exited before catching the signal"
        try:
            execd = os.path.realpath(f"/proc/{proc.pid}/exe") == python
        except OSError:
            execd = False
        return got if execd and got[1] & _bit(sig) else None
    return _wait(f"a handler for signal {sig}", masks, poll=0.001)  # type: ignore[return-value]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_with_sigint_ignored_stops_at_the_first_signal_its_code_can_see(tmp_path: Path, sig: int) -> None:
    """SIGINT (or SIGTERM) the moment the process catches it, long before the port file: it
    exits at once, with 128 + the signal (0 had it served already: then the port file says so),
    no traceback; nothing kept it running."""
    proc, port_file, log, err = _serve_with_sigint_ignored(tmp_path)
    try:
        _caught(proc, sig)
        proc.send_signal(sig)
        status = proc.wait(EVIDENCE_WAIT)
        assert status == (0 if port_file.exists() else 128 + sig), err.read_text()
        assert "Traceback" not in err.read_text()
        assert log.read_bytes().endswith(b"\n") if log.exists() and log.stat().st_size else True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_with_sigint_ignored_never_drops_a_stop_signal_until_it_serves(tmp_path: Path) -> None:
    """From the first moment the process catches SIGINT until it serves, SIGINT and SIGTERM stay
    caught: it used to put back the ignored SIGINT once its modules had loaded (a Ctrl-C or
    `kill -INT` then was lost for the server's whole start), and SIGTERM killed it outright
    until the server's loop took over."""
    proc, port_file, _, err = _serve_with_sigint_ignored(tmp_path)
    try:
        wrapped = subprocess.run(["sh", "-c", 'trap "" INT; exec cat /proc/self/status'], capture_output=True,
                                 text=True, timeout=EVIDENCE_WAIT).stdout
        assert int(re.search(r"SigIgn:\t(\w+)", wrapped).group(1), 16) & _bit(signal.SIGINT)  # type: ignore[union-attr]
        _caught(proc, signal.SIGINT)
        samples = 0
        while not port_file.exists():
            got = _signals(proc.pid)
            assert got is not None and proc.poll() is None, err.read_text()
            ignored, caught = got
            assert caught & _bit(signal.SIGINT) and not ignored & _bit(signal.SIGINT), f"SIGINT dropped: {got}"
            assert caught & _bit(signal.SIGTERM), f"SIGTERM not caught while it starts: {got}"
            samples += 1
            time.sleep(0.001)
        assert samples > 0
        proc.send_signal(signal.SIGINT)   # serving now: the graceful stop
        assert proc.wait(EVIDENCE_WAIT) == 0
        assert "callstate: stopped after 0 calls" in err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_signal_noted_while_the_server_started_stops_it_before_it_serves(tmp_path: Path) -> None:
    """The signal came while the server was starting (noted by the command's early handler): the
    server stops gracefully as soon as its own handlers are in, writes no port file, closes its
    log, and says which signal."""
    from callstate.server.app import ServerOptions, serve

    port_file, log = tmp_path / "port", tmp_path / "server.jsonl"
    options = ServerOptions(port=0, log=str(log))
    stopped = asyncio.run(asyncio.wait_for(serve(options, port_file=str(port_file), early=[signal.SIGINT]),
                                           EVIDENCE_WAIT))
    assert stopped == signal.SIGINT and not port_file.exists() and log.exists()


def test_what_counts_as_a_proxys_answer() -> None:
    """Only what says so: an HTTP status in grpc's words, or UNAVAILABLE that came with a response
    (trailers). grpc's own UNAVAILABLE for a connection that failed, and a callstate server's own
    statuses, are not blamed on a proxy."""
    from grpc.aio import AioRpcError, Metadata

    from callstate.cli.proxy_answer import proxy_answer

    def err(code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, str], ...] = ()) -> AioRpcError:
        return AioRpcError(code, Metadata(), Metadata(*trailers), details)

    assert proxy_answer(err(grpc.StatusCode.UNAVAILABLE, "Received http2 header with status: 503")) == (
        "HTTP 503 Service Unavailable, not gRPC: a proxy there has no callstate server to forward to (none running, "
        "or every one marked down)")
    assert proxy_answer(err(grpc.StatusCode.UNIMPLEMENTED, "Received http2 header with status: 404")) == (
        "HTTP 404 Not Found, not gRPC: something other than a callstate server answers there (a proxy, or another "
        "HTTP server)")
    assert proxy_answer(err(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")) is None
    assert proxy_answer(err(grpc.StatusCode.UNAVAILABLE, "no upstream", (("server", "envoy"),))) is not None
    assert proxy_answer(err(grpc.StatusCode.RESOURCE_EXHAUSTED, "watcher slots taken", (("x", "y"),))) is None
    assert proxy_answer(err(grpc.StatusCode.UNKNOWN, "Stream removed (Data frame with END_STREAM flag received)"),
                        502).startswith("HTTP 502 Bad Gateway, not gRPC")
