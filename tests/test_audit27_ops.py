"""Audit of the operations commands (watch, the journal, conformance, check over replicas, call),
as a user runs them: real `callstate serve` processes on loopback, real CLI processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import orjson

from callstate.lifecycle import (COMP, COMPLETE, COMPLETED, D, END, ENTER, PIPE_INITIAL_MOVE, PIPE_OUT, PUSH, SEND_COMPLETE,
                                 SERVER, START_PUSH)
from callstate.server.journal import MAX_MESSAGES_PER_CALL, CallRecord, Journal
from callstate.server.journal_service import HISTORY_BYTES, bounded_history
from callstate.statelog import Entry, to_proto
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from tests.conftest import EVIDENCE_WAIT, cli, read_entries, start_server, wait_for_text

GRPC_DEFAULT_RECEIVE = 4 * 1024 * 1024


def test_a_pipe_logged_message_by_message_still_has_a_history_a_client_can_receive(tmp_path: Path) -> None:
    """`--log-messages` and a pipe of 50,000 messages: its journal history was 5.6 MB, over a
    client's default 4 MiB receive limit, and `callstate watch --call-id` (and every GetCall)
    failed RESOURCE_EXHAUSTED. Now GetCall keeps the first and last entries and every
    transition, and says how many it left out; the watch prints the whole lifecycle and says so."""
    srv = start_server(tmp_path, "--log-messages")
    try:
        log = tmp_path / "client.jsonl"
        made = cli("call", "--target", srv.target, "--pipe", "out", "--server-messages", "50000", "--log-file",
                   str(log), timeout=120)
        assert made.returncode == 0, made.stderr
        call_id = read_entries(log)[0]["call_id"]
        logged = srv.wait_entries(call_id)
        assert len(logged) > 50_000

        with grpc.insecure_channel(srv.target) as channel:   # gRPC's default receive limit
            history = pb_grpc.JournalStub(channel).GetCall(pb.GetCallRequest(call_id=call_id), timeout=30)
        assert history.ByteSize() < GRPC_DEFAULT_RECEIVE and history.ended
        assert history.omitted > 0 and len(history.entries) + history.omitted == len(logged)
        transitions = [(e["prev"], e["state"]) for e in logged if e["prev"] != e["state"]]
        assert [(e.prev or None, e.state) for e in history.entries if e.prev != e.state] == transitions
        assert history.entries[0].ts == logged[0]["ts"] and history.entries[-1].ts == logged[-1]["ts"]

        watched = cli("watch", "--target", srv.target, "--call-id", call_id, "--json", timeout=60)
        assert watched.returncode == 0, watched.stderr
        assert f"leaves out {history.omitted} entries" in watched.stderr
        assert '"state":"End"' in watched.stdout.splitlines()[-1]
    finally:
        srv.stop()


def _watch(tmp: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    out, err = tmp / "watch.out", tmp / "watch.err"
    proc = subprocess.Popen([sys.executable, "-m", "callstate", "watch", *args], stdout=open(out, "wb"),
                            stderr=open(err, "wb"), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wait_for_text(err, "watching", proc)
    return proc, out, err


def test_watch_of_replicas_says_at_once_that_one_stopped_and_follows_the_others(tmp_path: Path) -> None:
    """Entry lines from two replicas; one stops gracefully. It used to be said only when the whole
    watch ended (Ctrl-C, maybe hours later): until then the replica just fell silent."""
    one, two = start_server(tmp_path, name="one"), start_server(tmp_path, name="two")
    proc = None
    try:
        proc, out, err = _watch(tmp_path, "--target", one.target, "--target", two.target)
        assert two.stop() == 0
        wait_for_text(err, f"{two.target} ended the stream: the server is stopping", proc)
        made = cli("call", "--target", one.target, "--log-file", str(tmp_path / "client.jsonl"))
        assert made.returncode == 0, made.stderr
        call_id = read_entries(tmp_path / "client.jsonl")[0]["call_id"]
        wait_for_text(out, call_id[:12], proc)   # still following the other replica
        proc.send_signal(signal.SIGINT)
        assert proc.wait(EVIDENCE_WAIT) == 0
        assert err.read_text().count("ended the stream") == 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        one.stop()
        two.stop()


def test_watch_of_a_server_killed_mid_watch_does_not_blame_tls(tmp_path: Path) -> None:
    """A server killed (SIGKILL) while watched: the watch said "if it uses TLS, pass --tls-ca",
    false for a plaintext server that had answered; now it says the connection was lost."""
    srv = start_server(tmp_path)
    proc = None
    try:
        proc, _, err = _watch(tmp_path, "--target", srv.target)
        srv.stop(signal.SIGKILL)
        assert proc.wait(EVIDENCE_WAIT) == 1
        lines = err.read_text().splitlines()
        assert lines[0].startswith("watching") and len(lines) == 2, lines
        assert lines[1].startswith(f"callstate watch: {srv.target}: UNAVAILABLE: the connection was lost while "
                                   "watching"), lines
        assert "tls" not in lines[1].lower()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        srv.stop()


def test_conformance_through_a_proxy_that_forwards_to_another_server_is_a_usage_error(tmp_path: Path) -> None:
    """--server is not the server the proxy forwards to (a proxy config pointing elsewhere; here the
    "proxy" is another callstate server, which answers every call itself): the run took minutes
    and then blamed the proxy, FAILED on six rows ("never reached the server"). Now its probe call
    must reach --server's journal: one line, exit 2, in seconds, and the report says why."""
    server, elsewhere = start_server(tmp_path, name="server"), start_server(tmp_path, name="elsewhere")
    try:
        report = tmp_path / "report.json"
        run = cli("conformance", "--proxy", elsewhere.target, "--server", server.target, "--calls", "2",
                  "--hold-seconds", "1", "--report", str(report), timeout=90)
        assert run.returncode == 2, run.stdout + run.stderr
        why = (f"a call through the proxy at {elsewhere.target} was answered, but the server at {server.target} "
               "never saw it")
        assert run.stderr.startswith(f"callstate conformance: {why}") and run.stderr.count("\n") == 1, run.stderr
        assert orjson.loads(report.read_bytes())["error"].startswith(why)
    finally:
        server.stop()
        elsewhere.stop()


def test_a_scripted_abort_with_code_5_is_not_blamed_on_a_missing_token(tmp_path: Path) -> None:
    """`call --outcome abort --code 5` (ERROR_ACCESS_DENIED travels as PERMISSION_DENIED) printed
    "(pass --token or set CALLSTATE_TOKEN)" for a server that takes no token: the handler chose the
    code (its callstate-code trailer says so). A server that does refuse the caller still says it."""
    open_srv, locked = start_server(tmp_path, name="open"), start_server(tmp_path, "--token", "sekret", name="locked")
    try:
        for kind in ((), ("--pipe", "out"), ("--pipe", "in")):
            made = cli("call", "--target", open_srv.target, "--outcome", "abort", "--code", "5", *kind)
            assert made.returncode == 1
            last = made.stderr.splitlines()[-1]
            assert last.startswith("final: 5 ERROR_ACCESS_DENIED: aborted with 5") and "token" not in last, last
        refused = cli("call", "--target", locked.target)
        assert refused.stderr.splitlines()[-1] == ("final: 5 ERROR_ACCESS_DENIED: this server requires a bearer "
                                                   "token (pass --token or set CALLSTATE_TOKEN)")
    finally:
        open_srv.stop()
        locked.stop()


def test_watch_of_one_call_says_when_the_server_stops_before_the_call_ended(tmp_path: Path) -> None:
    """`watch --call-id` for a call the server has not (yet) seen, then the server stops: the watch
    ended silently with exit 0, as if the call had ended. Now it says so and exits 1."""
    srv = start_server(tmp_path)
    proc = None
    try:
        err = tmp_path / "watch.err"
        proc = subprocess.Popen([sys.executable, "-m", "callstate", "watch", "--target", srv.target, "--call-id",
                                 "not-made-yet"], stdout=subprocess.DEVNULL, stderr=open(err, "wb"))
        wait_for_text(err, "waiting for it", proc)
        assert srv.stop() == 0
        assert proc.wait(EVIDENCE_WAIT) == 1
        assert err.read_text().splitlines()[-1] == (f"callstate watch: {srv.target} ended the stream: the server is "
                                                    "stopping, and call 'not-made-yet' had not ended there")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        srv.stop()


def test_call_and_watch_piped_into_head_end_quietly_and_the_call_still_ends(tmp_path: Path) -> None:
    """`callstate call ... | head -1`: the second state line raised BrokenPipeError inside the
    client's logging, the call was abandoned in WComp (its log cut short) and the command said
    "[Errno 32] Broken pipe", exit 2; `watch | head` and `watch --counters | head` printed a
    traceback. Now the call goes on to its end (its log whole, exit by its code), the watch ends
    quietly with 0."""
    srv = start_server(tmp_path)
    try:
        log = tmp_path / "client.jsonl"
        call = subprocess.Popen([sys.executable, "-m", "callstate", "call", "--target", srv.target, "--outcome",
                                 "hold", "--cancel-after", "0.5", "--log-file", str(log)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert call.stdout is not None and call.stderr is not None
        assert b"--call-->" in call.stdout.readline()
        call.stdout.close()   # what `head -1` does
        assert call.wait(EVIDENCE_WAIT) == 1, call.stderr.read()
        err = call.stderr.read().decode()
        assert err.splitlines() == ["final: 1818 RPC_S_CALL_CANCELLED: cancelled by the caller"], err
        assert [e["state"] for e in read_entries(log)][-1] == "End"

        watch = subprocess.Popen([sys.executable, "-m", "callstate", "watch", "--target", srv.target],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert watch.stdout is not None and watch.stderr is not None
        assert watch.stderr.readline().startswith(b"watching")
        assert cli("call", "--target", srv.target).returncode == 0
        assert b"--dispatch-->" in watch.stdout.readline()
        watch.stdout.close()
        for _ in range(3):   # entries to print into the closed pipe (the first may sit in a buffer)
            assert cli("call", "--target", srv.target).returncode == 0
            if watch.poll() is not None:
                break
        assert watch.wait(EVIDENCE_WAIT) == 0
        assert watch.stderr.read() == b""

        counters = subprocess.Popen([sys.executable, "-m", "callstate", "watch", "--target", srv.target,
                                     "--counters"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert counters.stdout is not None and counters.stderr is not None
        counters.stdout.close()   # gone before the command prints
        assert counters.wait(EVIDENCE_WAIT) == 0 and counters.stderr.read() == b""

        # any other command: as SIGPIPE; its stdout block-buffered as users have it (not
        # PYTHONUNBUFFERED), so the gone reader is met at the last flush, not at a print
        buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        check = subprocess.Popen([sys.executable, "-m", "callstate", "check", "--json", str(log), str(srv.log)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=buffered)
        assert check.stdout is not None and check.stderr is not None
        check.stdout.close()
        assert check.wait(EVIDENCE_WAIT) == 141 and check.stderr.read() == b""
    finally:
        srv.stop()


def test_watch_refuses_a_target_given_twice(tmp_path: Path, refused_target: str) -> None:
    """`--target A --target A` showed every entry of A twice and `--counters` summed A twice
    (dispatched 2 after one call). A usage error now, before anything is asked of A."""
    import socket
    with socket.socket() as held:   # B: a second address nobody serves on, held like refused_target
        held.bind(("127.0.0.1", 0))
        other = f"127.0.0.1:{held.getsockname()[1]}"
        for extra in ((), ("--counters",)):
            run = cli("watch", "--target", refused_target, "--target", other, "--target", refused_target, *extra)
            assert run.returncode == 2
            assert run.stderr.splitlines() == [f"callstate watch: error: --target {refused_target} given more than "
                                               "once: each server once (see callstate watch --help)"], run.stderr


def _pipe_history(call_id: str, messages: int) -> list[Entry]:
    """A server's out pipe logged message by message: D, Push, `messages` self-loops, Comp, End."""
    out = [Entry(0.0, SERVER, call_id, D, None, ENTER, PIPE_INITIAL_MOVE[SERVER][PIPE_OUT]), Entry(0.1, SERVER, call_id, PUSH, D, ENTER,
                                                                              START_PUSH)]
    out += [Entry(1.0 + i, SERVER, call_id, PUSH, PUSH, ENTER, SEND_COMPLETE, sent=i + 1) for i in range(messages)]
    return out + [Entry(9e6, SERVER, call_id, COMP, PUSH, ENTER, COMPLETE),
                  Entry(9e6 + 1, SERVER, call_id, END, COMP, ENTER, COMPLETED, 0, "OK")]


def test_one_getcall_reply_is_bounded_in_bytes_and_keeps_the_ends_and_every_transition() -> None:
    """The journal keeps 10,000 message entries per call, but a call id of up to 4,096 characters
    (--max-call-id) makes each entry 4 KB: 40 MB in one reply. GetCall's reply is bounded in bytes."""
    entries = _pipe_history("i" * 4096, 10_000)
    kept, omitted = bounded_history(entries)
    reply = pb.CallHistory(entries=kept, omitted=omitted)
    assert reply.ByteSize() <= HISTORY_BYTES < GRPC_DEFAULT_RECEIVE
    assert len(kept) + omitted == len(entries) and omitted > 9000
    assert [(e.prev or None, e.state) for e in kept if e.prev != e.state] == \
           [(e.prev, e.state) for e in entries if e.prev != e.state]
    assert kept[2].sent == 1 and kept[-3].sent == 10_000   # the first and the last messages
    small = _pipe_history("c1", 100)
    assert bounded_history(small) == ([to_proto(e) for e in small], 0)


def test_the_journal_keeps_a_bounded_number_of_one_pipes_messages() -> None:
    """A pipe of millions of messages with --log-messages held every entry in the server's memory
    while it ran (300,000 messages: +73 MB). Its transitions are kept, the messages past the cap
    counted."""
    journal = Journal()
    rec = journal.keep(CallRecord("big"))
    entries = _pipe_history("big", MAX_MESSAGES_PER_CALL + 5000)
    for e in entries:
        journal.add(rec, e)
    assert len(rec.entries) == MAX_MESSAGES_PER_CALL + 4 and rec.omitted == 5000 and rec.ended
    assert [e.state for e in rec.entries[-2:]] == [COMP, END]
    assert journal.by_state[PUSH] == MAX_MESSAGES_PER_CALL + 5001   # every state entered still counted


def test_the_conformance_verdict_names_what_it_did_not_test() -> None:
    """With --server, graceful-stop is skipped; the last line said "every property holds" as if
    it had been tested too. It now names what was not tested."""
    from callstate.cli.conformance.properties import COMPLETE_SMALL, GRACEFUL_STOP, Row
    from callstate.cli.conformance.report import DIRECT, PROXY, table

    rows = {path: [Row(COMPLETE_SMALL, True, "10/10 intact"), Row(GRACEFUL_STOP, None, "", "skipped: why")]
            for path in (DIRECT, PROXY)}
    assert table(rows, "p:1", "s:2").splitlines()[-1] == ("conformance: OK — every property holds through the proxy; "
                                                          f"not tested: {GRACEFUL_STOP} (see above)")
    rows = {path: [Row(COMPLETE_SMALL, True, "10/10 intact")] for path in (DIRECT, PROXY)}
    assert table(rows, "p:1", "s:2").splitlines()[-1] == "conformance: OK — every property holds through the proxy"


def test_a_state_log_on_a_full_disk_does_not_say_nothing_was_lost(tmp_path: Path) -> None:
    """`call --log-file /dev/full`: the entries sit in the file's buffer until its flush fails, and
    the warning said "0 entries and all later ones are not in it" with all four lost."""
    srv = start_server(tmp_path)
    try:
        made = cli("call", "--target", srv.target, "--log-file", "/dev/full")
        warning = [ln for ln in made.stderr.splitlines() if "cannot be written" in ln]
        assert len(warning) == 1, made.stderr
        lost = int(warning[0].split("; up to ")[1].split()[0])
        assert lost >= 1 and warning[0].endswith(f"up to {lost} entries and all later ones are not in it")
        assert made.returncode == 1, "the call went well, but its log is lost: not a success"
    finally:
        srv.stop()


def test_watch_of_replicas_goes_on_when_one_is_killed_and_exits_1(tmp_path: Path) -> None:
    """Two replicas watched, one killed (SIGKILL): the whole watch ended there, the surviving
    replica no longer followed. Now the lost one is said at once, the other still followed (as
    when one stops gracefully), and the exit status says a target was lost."""
    one, two = start_server(tmp_path, name="one"), start_server(tmp_path, name="two")
    proc = None
    try:
        proc, out, err = _watch(tmp_path, "--target", one.target, "--target", two.target)
        two.stop(signal.SIGKILL)
        wait_for_text(err, f"callstate watch: {two.target}: UNAVAILABLE: the connection was lost while watching", proc)
        made = cli("call", "--target", one.target, "--log-file", str(tmp_path / "client.jsonl"))
        assert made.returncode == 0, made.stderr
        wait_for_text(out, read_entries(tmp_path / "client.jsonl")[0]["call_id"][:12], proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(EVIDENCE_WAIT) == 1
        assert len(err.read_text().splitlines()) == 2   # "watching", then the lost replica once
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        one.stop()
        two.stop()


def test_call_refuses_how_to_cancel_without_anything_that_cancels(refused_target: str) -> None:
    """`call --outcome hold --non-abortive --on-cancel complete` held until --max-hold (1460):
    nothing cancelled it, the flag was dropped without a word (as `--escalate-after` without
    --non-abortive was). Usage errors now, before any call is made (the target is unreachable)."""
    for flags, says in ((("--non-abortive",), "--non-abortive says how to cancel, but nothing cancels the call"),
                        (("--pipe", "out", "--non-abortive", "--escalate-after", "1"),
                         "--non-abortive and --escalate-after say how to cancel, but nothing cancels the call"),
                        (("--cancel-after", "0.1", "--escalate-after", "1"),
                         "--escalate-after escalates a non-abortive cancel: add --non-abortive")):
        run = cli("call", "--target", refused_target, "--outcome", "hold", *flags)
        assert run.returncode == 2 and run.stderr.startswith(f"callstate call: error: {says}"), run.stderr
        assert run.stdout == "" and run.stderr.count("\n") == 1


def test_watch_says_watching_only_for_a_callstate_servers_headers() -> None:
    """Through a proxy whose upstream is down, the proxy's own response headers arrive before its
    error status: `watch` took them for the subscription and said "watching" (about 1 run in 8
    through nginx). A stand-in here answers Watch as such a proxy does: headers without the
    server's mark, then UNAVAILABLE a moment later."""
    import concurrent.futures
    import threading

    answered = threading.Event()

    def watch(request: bytes, context: grpc.ServicerContext) -> None:
        context.send_initial_metadata(())
        answered.set()
        threading.Event().wait(2.0)   # the scenario, not a synchronisation: the status comes a moment later
        context.abort(grpc.StatusCode.UNAVAILABLE, "upstream connect error")

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "callstate.v1.Journal", {"Watch": grpc.unary_stream_rpc_method_handler(watch)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        result = cli("watch", "--target", f"127.0.0.1:{port}", "--dashboard", "never", timeout=60)
    finally:
        server.stop(0)
    assert answered.is_set()
    said = result.stderr.splitlines()
    assert result.returncode != 0 and not any(line.startswith("watching ") for line in said), result.stderr
    assert "UNAVAILABLE" in result.stderr or "upstream connect error" in result.stderr, result.stderr
