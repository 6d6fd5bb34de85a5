"""Audit of the operations commands (watch, the journal, conformance, check over replicas, call),
as a user runs them: real `callstate serve` processes on loopback, real CLI processes."""

from __future__ import annotations

from pathlib import Path

import grpc

from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from tests.conftest import cli, start_server

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
        call_id = srv.entries()[0]["call_id"]
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
