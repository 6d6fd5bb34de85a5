"""Observability audit (session 33): what Prometheus, `watch` and the report say, checked against
each other and against a server that stops answering."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import grpc
import orjson
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from callstate.client.channel import ChannelSettings
from callstate.cli.report.run_report import ReportBuilder
from callstate.lifecycle import ABORTIVE, CAN, CANCEL_ESCALATED, CLIENT, END, ENTER, NON_ABORTIVE
from callstate.observe.metrics import Metrics
from callstate.statelog import Entry, format_ts
from tests.conftest import cli, start_server, wait_for_text


def _escalated_call(call_id: str, t: float) -> list[Entry]:
    """A client's entries for a call whose non-abortive cancel went unanswered and was escalated
    (the shape `callstate load` logs: two Can entries, one of each kind)."""
    rows = [("C", None, ENTER, "call", None, None), ("WComp", "C", ENTER, "started", None, None),
            (CAN, "WComp", ENTER, "cancel", NON_ABORTIVE, None), ("WComp", CAN, ENTER, "cancel_issued", None, None),
            ("WComp", "WComp", CANCEL_ESCALATED, None, None, None), (CAN, "WComp", ENTER, "cancel", ABORTIVE, None),
            ("WComp", CAN, ENTER, "cancel_issued", None, None), ("Comp", "WComp", ENTER, "complete", None, None),
            (END, "Comp", ENTER, "completed", None, 1818)]
    return [Entry(t + i / 1000, CLIENT, call_id, state, prev, event, move, code, cancel=cancel)
            for i, (state, prev, event, move, cancel, code) in enumerate(rows)]


def test_cancels_total_says_an_escalated_cancel_counts_under_both_kinds() -> None:
    """`callstate_cancels_total` counts every Can: a call whose non-abortive cancel was escalated
    counts once under each kind, so its abortive figure ran above the report's abortive cancels
    (which count each call once, by its first cancel: 3193 against 3142 over one 15 s load).
    Its HELP (and the docs) now say so and name the per-call figure, cancel_to_end's count,
    which agrees with the report on the same entries."""
    metrics = Metrics()
    side = metrics.side(CLIENT)
    builder = ReportBuilder()
    entries = _escalated_call("escalated", 1000.0) + [
        e._replace(call_id="plain", t=e.t + 1) for e in _escalated_call("plain", 1000.0) if e.event == ENTER][:4] + [
        Entry(1001.1, CLIENT, "plain", "Comp", "WComp", ENTER, "complete"),
        Entry(1001.2, CLIENT, "plain", END, "Comp", ENTER, "completed", 1818)]
    for e in entries:
        side.observe(e)
        builder.add_entry(e)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    cancels = {s.labels["kind"]: s.value for s in families["callstate_cancels"].samples}
    per_call = {s.labels["kind"]: s.value for s in families["callstate_cancel_to_end_seconds"].samples
                if s.name.endswith("_count")}
    assert cancels == {NON_ABORTIVE: 2, ABORTIVE: 1}      # each Can: the escalation counts again
    assert per_call == {NON_ABORTIVE: 2}                   # each call once, by its first cancel
    report = builder.build()
    assert {kind: sum(row) for kind, row in report["timeline"]["cancels"].items()} == per_call
    help_text = families["callstate_cancels"].documentation
    assert "escalated cancel counts again as abortive" in help_text, help_text
    assert "callstate_cancel_to_end_seconds_count" in help_text, help_text
    docs = (Path(__file__).parent.parent / "docs" / "observability.md").read_text()
    row = next(line for line in docs.splitlines() if line.startswith("| `callstate_cancels_total`"))
    assert "escalated to abortive counts under both kinds" in row and "cancel_to_end_seconds_count" in row, row


def test_watch_says_a_server_that_stopped_answering_is_stopped_or_hung(tmp_path: Path) -> None:
    """A server SIGSTOPped mid-watch: keepalive finds it silent and the watch ends (exit 1) with a
    line that says so. It said "the server was killed or became unreachable", the wrong lead for a
    process that is still there, stopped or hung (`watch --counters` on it already says SIGSTOP)."""
    srv = start_server(tmp_path)
    err = tmp_path / "watch.stderr"
    watch = subprocess.Popen([sys.executable, "-m", "callstate", "watch", "--target", srv.target, "--keepalive", "1",
                              "--dashboard", "never"], stdout=subprocess.DEVNULL, stderr=open(err, "wb"))
    try:
        wait_for_text(err, "watching", watch)
        srv.proc.send_signal(signal.SIGSTOP)
        try:
            assert watch.wait(20) == 1
        finally:
            srv.proc.send_signal(signal.SIGCONT)
        lines = err.read_text().splitlines()
        said = [line for line in lines if line.startswith(f"callstate watch: {srv.target}: UNAVAILABLE")]
        assert len(said) == 1, lines
        assert "stopped answering" in said[0] and "keepalive" in said[0] and "SIGSTOP" in said[0], said
        assert "killed" not in said[0], said
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
        srv.stop()


def test_a_server_that_never_sends_http2s_first_frame_is_named_stopped_or_hung() -> None:
    """`watch` (and every client) against a server SIGSTOPped before it connected: the TCP
    connection is taken by the kernel, then nothing comes; after gRPC's 20 s connect timeout the
    line was gRPC's own ("connection attempt timed out before receiving SETTINGS frame") with no
    hint, where `watch --counters` on the same server says "is the server stopped (SIGSTOP)"."""
    details = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:19052: connection attempt "
               "timed out before receiving SETTINGS frame")   # as grpc 1.7x said it, measured on a stopped server
    said = ChannelSettings().explain(grpc.StatusCode.UNAVAILABLE, details)
    assert said.startswith(details) and "stopped (SIGSTOP) or hung" in said, said
    assert ChannelSettings().explain(grpc.StatusCode.UNAVAILABLE, "Connection refused") == "Connection refused"


def _client_call(call_id: str, start: float, end: float) -> list[dict[str, object]]:
    """A client's log lines for a call that completed with 0 (C at `start`, End at `end`)."""
    rows = [("C", None, "call", start), ("WComp", "C", "started", start), ("Comp", "WComp", "complete", end),
            (END, "Comp", "completed", end)]
    return [{"ts": format_ts(t), "side": CLIENT, "call_id": call_id, "state": state, "prev": prev, "event": ENTER,
             "move": move, **({"code": 0} if state == END else {})} for state, prev, move, t in rows]


def test_report_draws_an_end_logged_before_its_call_began_at_the_calls_start(tmp_path: Path) -> None:
    """A log whose End is earlier than its call's first state (a wall clock stepped back while it
    ran: `check` reports it as time_order) made `callstate report` die with a traceback (an
    IndexError: the End's time bucket lay before the first call's), and an End a little earlier
    than the first call drew that call as ending in the run's last buckets (a negative index
    wrapped around), the calls in flight at the run's end one too few."""
    t0 = 1_780_000_000.0
    log = tmp_path / "client.jsonl"
    lines = _client_call("normal", t0, t0 + 10) + _client_call("stepped", t0 + 0.05, t0 - 3600)
    log.write_text("".join(orjson.dumps(e).decode() + "\n" for e in lines))
    result = cli("report", str(log), "--allow-one-side", "--html", str(tmp_path / "r.html"),
                 "--json", str(tmp_path / "r.json"))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.strip().endswith("2 calls, check FAILED (1 violation)"), result.stdout
    report = orjson.loads((tmp_path / "r.json").read_bytes())
    assert [k["kind"] for k in report["check"]["kinds"]] == ["time_order"]
    # a little earlier (2.5 buckets of 0.1 s before the first call's start): drawn where it began
    builder = ReportBuilder()
    for e in _client_call("normal", t0, t0 + 10) + _client_call("stepped", t0 + 0.05, t0 - 0.25):
        builder.add(e)
    timeline = builder.build(allow_one_side=True)["timeline"]
    assert timeline["bucket_s"] == 0.1
    assert timeline["ended"][0] == 1 and timeline["ended"][-1] == 1 and sum(timeline["ended"]) == 2, timeline["ended"]
    assert timeline["in_flight"][0] == 1 and timeline["in_flight"][-1] == 0 and min(timeline["in_flight"]) >= 0
    assert timeline["in_flight_peak"][0] == 1 and min(timeline["in_flight_peak"]) >= 0   # it ended as it began


def test_readme_says_which_replica_ends_make_watch_exit_1() -> None:
    """README said a replica that stops *or* is lost mid-watch makes the exit status 1; a graceful
    stop gives 0 (`watch --help`: "exit 1 in the end when one was lost"; the run is
    tests/test_audit27_ops.py's replicas test, SIGINT after one replica stopped: exit 0)."""
    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    said = readme[readme.index("callstate watch --target A --target B"):][:600]
    assert "and the exit status is 1;" not in said, said
    assert "the exit status is 1 when one was lost, 0 if it stopped" in said, said


def test_watch_counters_with_a_call_id_or_a_count_is_refused_not_ignored(refused_target: str) -> None:
    """`watch --counters --call-id ID` printed the whole server's counters, as if they were that
    call's, without a word (and `--count N` did nothing): now a usage error (exit 2) naming what
    would be ignored, before any connection."""
    for extra, named in ((("--call-id", "abc"), "--call-id"), (("--count", "3"), "--count")):
        result = cli("watch", "--target", refused_target, "--counters", *extra)
        assert result.returncode == 2 and result.stdout == "", result
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and f"--counters prints the whole server's counters once: {named} would be ignored" \
            in lines[0], lines


def test_an_escalated_calls_span_keeps_its_first_cancel_kind_as_the_docs_say() -> None:
    """The span of a call whose non-abortive cancel was escalated: `callstate.cancel_kind` is the
    first cancel's (non-abortive), each Can event carries its own kind; the docs said only that a
    cancelled call carries a kind, which a reader filtering traces on abortive cancels needs."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from callstate.observe.tracing import CANCEL_KIND, CANCELLED, CallTracer

    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = CallTracer(CLIENT, provider)
    for e in _escalated_call("escalated", 1000.0):
        tracer.observe(e)
    (span,) = exporter.get_finished_spans()
    assert span.attributes[CANCELLED] is True and span.attributes[CANCEL_KIND] == NON_ABORTIVE
    assert [e.attributes[CANCEL_KIND] for e in span.events if e.name == CAN] == [NON_ABORTIVE, ABORTIVE]
    assert CANCEL_ESCALATED in [e.name for e in span.events]
    docs = " ".join((Path(__file__).parent.parent / "docs" / "observability.md").read_text().split())
    assert "escalated to abortive keeps `non-abortive` on the span" in docs


def test_report_reads_a_rotated_log_in_any_order_as_check_does(tmp_path: Path) -> None:
    """A client log rotated mid-call (`client.jsonl.1`, the older part, sorts after `client.jsonl`:
    a directory argument or a shell glob names them newest first). `check` merges the files by
    time and says OK; `report` read them one after another and failed every call the rotation
    split (a 2000-call load split in two, newest first: check OK, report FAILED, 83 violations)."""
    t0 = 1_780_000_000.0
    calls = [_client_call(f"call-{i}", t0 + i, t0 + i + 0.5) for i in range(3)]
    older = [e for call in calls[:2] for e in call] + calls[2][:2]   # the last call's C, WComp
    newer = calls[2][2:]                                              # ... its Comp, End
    (tmp_path / "client.jsonl.1").write_text("".join(orjson.dumps(e).decode() + "\n" for e in older))
    (tmp_path / "client.jsonl").write_text("".join(orjson.dumps(e).decode() + "\n" for e in newer))
    files = [str(tmp_path / "client.jsonl"), str(tmp_path / "client.jsonl.1")]   # newest first
    checked = cli("check", *files, "--allow-one-side", "--json")
    assert checked.returncode == 0 and orjson.loads(checked.stdout)["violations"] == 0, checked
    reported = cli("report", *files, "--allow-one-side", "--html", str(tmp_path / "r.html"),
                   "--json", str(tmp_path / "r.json"))
    assert reported.returncode == 0 and reported.stdout.strip().endswith("3 calls, check OK"), reported
    report = orjson.loads((tmp_path / "r.json").read_bytes())
    assert report["files"] == files and [row["count"] for row in report["by_code"]] == [3]
    assert report["timeline"]["ended"][-1] == 1 and sum(report["timeline"]["ended"]) == 3


def test_serve_with_metrics_on_its_own_grpc_port_is_one_line_naming_both_flags(tmp_path: Path) -> None:
    """`serve --port P --metrics-port P`: /metrics took the port first and the server then failed
    with "cannot bind 127.0.0.1:P: grpc refused the address" (exit 1), which names neither flag.
    Now a usage error before anything starts: no port taken, no log created."""
    log = tmp_path / "server.jsonl"
    for extra in ((), ("--bind", "0.0.0.0")):
        result = cli("serve", "--port", "19459", "--metrics-port", "19459", "--log-file", str(log), *extra)
        assert result.returncode == 2, result
        assert result.stderr.splitlines() == ["callstate serve: --metrics-port 19459 is also --port: give /metrics "
                                              "a port of its own"], result.stderr
        assert not log.exists()


def test_a_split_calls_example_history_reads_in_time_order(tmp_path: Path) -> None:
    """The report's example history of a violation, for a call whose entries a rotation split:
    its entries read one file after another came newest file first (Comp, End, ... before C)."""
    t0 = 1_780_000_000.0
    call = _client_call("split", t0, t0 + 0.5)
    extra = {**call[-1], "ts": format_ts(t0 + 0.6)}   # a second End: after_end
    (tmp_path / "client.jsonl.1").write_text("".join(orjson.dumps(e).decode() + "\n" for e in call[:2]))
    (tmp_path / "client.jsonl").write_text("".join(orjson.dumps(e).decode() + "\n" for e in call[2:] + [extra]))
    result = cli("report", str(tmp_path / "client.jsonl"), str(tmp_path / "client.jsonl.1"), "--allow-one-side",
                 "--html", str(tmp_path / "r.html"), "--json", str(tmp_path / "r.json"))
    assert result.returncode == 1, result
    (kind,) = orjson.loads((tmp_path / "r.json").read_bytes())["check"]["kinds"]
    assert kind["kind"] == "after_end", kind
    assert [e["state"] for e in kind["example"][CLIENT]] == ["C", "WComp", "Comp", END, END], kind["example"]
