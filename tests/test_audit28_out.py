"""What callstate's outputs say, read as a test engineer reads them, agrees with the logs and
with the other outputs of the same run: the load's last progress line gives the summary's
calls/s and counts cancels as its paths line does; a load's summary says why `callstate check`
over its logs counts one call more."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from callstate import codes
from callstate.cli.live.stats import RATE_WINDOW_S, LiveStats
from callstate.lifecycle import (ABORTIVE, CALL, CAN, CLIENT, COMP, COMPLETE, COMPLETED, DISPATCH, END, ENTER,
                                 NON_ABORTIVE, SERVER, STARTED, WCOMP, C, D)
from callstate.statelog import Entry, to_dict
from tests.conftest import ServerProcess, cli, read_entries, start_server

pytestmark = pytest.mark.timeout(240)

LOAD_CALLS = 200


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Run:
    """One bounded load against a server of its own, with its outputs and both sides' logs."""

    def __init__(self, server: ServerProcess, folder: Path) -> None:
        self.client_log, self.json = folder / "client.jsonl", folder / "load.json"
        result = cli("load", "--target", server.target, "--calls", str(LOAD_CALLS), "--seed", "7",
                     "--progress", "always", "--log-file", str(self.client_log), "--report", str(self.json),
                     timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        self.summary, self.progress = result.stdout, result.stderr.splitlines()
        self.report: dict[str, Any] = orjson.loads(self.json.read_bytes())
        self.server_log = server.log
        # the server's log is written in order: once the barrier's End is in, every call before it is
        assert server.wait_entries(self.report["server"]["barrier_call"]), "the barrier call never reached the log"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    folder = tmp_path_factory.mktemp("load")
    server = start_server(folder, "--max-hold", "20")
    try:
        yield Run(server, folder)
    finally:
        server.stop()


# -- the live progress agrees with the summary -------------------------------------------------

def test_the_last_progress_line_gives_the_summarys_calls_per_second(run: Run) -> None:
    # it counted from before the connection was made: 1421/s beside the summary's 3183 calls/s
    summary = re.match(r"\d+ calls in [\d.]+ s: (\d+) calls/s", run.summary)
    last = re.match(r"\s*[\d.]+s  (\d+)/(\d+) calls  (\d+)/s", run.progress[-1])
    assert summary and last, (run.summary, run.progress)
    assert int(last[1]) == int(last[2]) == LOAD_CALLS
    assert abs(int(last[3]) - int(summary[1])) <= 1, (run.progress[-1], run.summary)


def test_the_progress_counts_cancels_per_call_as_the_paths_line_does(run: Run) -> None:
    # it counted Can entries: the generator's own end of each held call (hold-for) and each
    # escalation were counted as abortive cancels asked for
    paths = run.report["paths"]
    assert paths.get("hold-for"), paths   # the run has what made the counts differ
    cancels = re.search(r"\| cancels ([^(|]*)", run.progress[-1])
    assert cancels, run.progress[-1]
    shown = dict((kind, int(n)) for kind, n in re.findall(r"([a-z-]+) (\d+)", cancels[1]))
    expected = {kind: paths[path] for kind, path in ((ABORTIVE, f"cancel-{ABORTIVE}"),
                                                      (NON_ABORTIVE, f"cancel-{NON_ABORTIVE}"),
                                                      ("hold-for", "hold-for")) if paths.get(path)}
    assert shown == expected, (run.progress[-1], paths)


def test_an_escalated_cancel_is_one_cancel_in_the_view_the_load_counts_for() -> None:
    stats = LiveStats(CLIENT, clock=Clock(), owner_counts_cancels=True)
    stats.entry(CLIENT, "x", CAN, ENTER, 1.0, cancel=NON_ABORTIVE)
    stats.entry(CLIENT, "x", CAN, ENTER, 1.1, cancel=ABORTIVE)   # the escalation
    stats.entry(CLIENT, "x", END, ENTER, 1.2, code=codes.RPC_S_CALL_CANCELLED)
    assert not stats.cancels and [rc.kind for rc in stats.recent_cancels()] == [NON_ABORTIVE]


def test_the_view_of_a_run_that_ended_keeps_its_time_and_rate() -> None:
    clock = Clock()
    stats = LiveStats(CLIENT, total=4, clock=clock)
    clock.now += 3.0             # connecting, subscribing: not the run's time
    stats.restart()
    clock.now += 0.5
    for i in range(4):
        stats.entry(CLIENT, f"c{i}", END, ENTER, 1.0, code=codes.RPC_S_OK)
    stats.freeze(0.5)
    clock.now += 2.0             # the wait for the server's last entries
    assert stats.elapsed == 0.5 and stats.rates() == {codes.RPC_S_OK: 8.0}
    assert "4/4 calls  8/s" in stats.plain_line()
    clock.now += RATE_WINDOW_S   # still the run's own figures
    assert stats.rates() == {codes.RPC_S_OK: 8.0}


# -- load and check over the same logs -------------------------------------------------------

def test_the_summary_names_the_call_check_counts_beyond_the_runs(run: Run) -> None:
    barrier = run.report["server"]["barrier_call"]
    assert barrier and {e["call_id"] for e in read_entries(run.server_log, barrier)} == {barrier}   # it is there
    assert f"the server's state log (if it keeps one) also holds the run's barrier call {barrier}" in run.summary, run.summary
    assert f"counts one call more than these {LOAD_CALLS}" in run.summary, run.summary
    result = cli("check", "--json", str(run.client_log), str(run.server_log))
    assert result.returncode == 0, result.stdout + result.stderr
    checked = orjson.loads(result.stdout)
    assert checked["calls"] == LOAD_CALLS + 1 == run.report["calls"] + 1
    expected = dict(run.report["by_code"])
    expected["0"] = expected.get("0", 0) + 1   # the barrier call, completed
    assert checked["by_code"] == expected, (checked["by_code"], run.report["by_code"])
    assert checked["server_only"] == 1   # and check says which
    # the rest agrees: the cancel propagation population and its figures
    assert checked["cancel_propagation_ms"]["count"] == run.report["cancel_propagation_ms"]["count"]


def test_no_barrier_line_for_an_unchecked_run(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--max-hold", "20")
    try:
        result = cli("load", "--target", server.target, "--calls", "20", "--no-verify", timeout=60)
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "barrier" not in result.stdout, result.stdout


# -- hand-built logs: every count said with its noun -------------------------------------------

def client_call(call_id: str, t: float, ended: bool = True) -> list[dict[str, Any]]:
    """One completed call as its client logs it (the last entry left off when not `ended`)."""
    entries = [Entry(t, CLIENT, call_id, C, None, ENTER, CALL),
               Entry(t + 0.001, CLIENT, call_id, WCOMP, C, ENTER, STARTED),
               Entry(t + 0.002, CLIENT, call_id, COMP, WCOMP, ENTER, COMPLETE),
               Entry(t + 0.003, CLIENT, call_id, END, COMP, ENTER, COMPLETED, code=codes.RPC_S_OK, grpc_status=codes.OK)]
    return [to_dict(e) for e in (entries if ended else entries[:-1])]


def write_log(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in entries))
    return path


def page(html: Path) -> tuple[str, list[str]]:
    """The report page's verdict box and its cards, as text."""
    text = html.read_text()
    [box] = re.findall(r'<div class="verdict[^"]*">([^<]*)</div>', text)
    cards = [re.sub(r"<[^>]+>", " ", c).split() for c in re.findall(r'<div class="card">(.*?)</div>', text)]
    return box, [" ".join(c) for c in cards]


def test_a_report_of_one_call_says_1_call(tmp_path: Path) -> None:
    # it said "(1 calls)" in the verdict, "1 calls" on the card and in the chart's hover text
    log = write_log(tmp_path / "one.jsonl", client_call("one", 1_700_000_000.0))
    out = tmp_path / "one.html"
    result = cli("report", str(log), "--html", str(out), "--allow-one-side")
    assert result.returncode == 0, result.stdout + result.stderr
    box, cards = page(out)
    assert "on the client side (1 call);" in box, box
    assert "1 call" in cards and "4 log entries 4 client" in cards and "0 violations" in cards, cards
    assert re.search(r"<title>0 RPC_S_OK \(1\): 1 call, ", out.read_text())


def test_a_report_with_one_violation_says_1_violation(tmp_path: Path) -> None:
    # it said "FAILED: 1 violations" and "1 violations" on the card
    log = write_log(tmp_path / "cut.jsonl", client_call("done", 1_700_000_000.0)
                    + client_call("cut", 1_700_000_001.0, ended=False))
    out = tmp_path / "cut.html"
    result = cli("report", str(log), "--html", str(out), "--allow-one-side")
    assert result.returncode == 1 and "check FAILED (1 violation)" in result.stdout, result.stdout
    box, cards = page(out)
    assert box == "FAILED: 1 violation", box
    assert "2 calls" in cards and "1 violation" in cards, cards


def server_call(call_id: str, t: float) -> list[dict[str, Any]]:
    """One completed call as the server logs it."""
    entries = [Entry(t, SERVER, call_id, D, None, ENTER, DISPATCH),
               Entry(t + 0.001, SERVER, call_id, COMP, D, ENTER, COMPLETE),
               Entry(t + 0.002, SERVER, call_id, END, COMP, ENTER, COMPLETED, code=codes.RPC_S_OK, grpc_status=codes.OK)]
    return [to_dict(e) for e in entries]


def test_check_says_which_calls_only_the_server_logged(tmp_path: Path) -> None:
    # it said "OK: every invariant holds" with no word that 2 of the 3 calls had no client log
    client = write_log(tmp_path / "client.jsonl", client_call("both", 1_700_000_000.0))
    server = write_log(tmp_path / "server.jsonl", server_call("both", 1_700_000_000.0005)
                       + server_call("other-1", 1_700_000_001.0) + server_call("other-2", 1_700_000_002.0))
    text = cli("check", str(client), str(server))
    assert text.returncode == 0, text.stdout + text.stderr
    assert ("2 calls only the server logged (no client log given has them): the client side and the codes' "
            "agreement of those calls are not checked") in text.stdout, text.stdout
    assert text.stdout.splitlines()[-1] == "OK: every invariant holds", text.stdout
    assert orjson.loads(cli("check", "--json", str(client), str(server)).stdout)["server_only"] == 2
    both = write_log(tmp_path / "both.jsonl", server_call("both", 1_700_000_000.0005))
    assert "only the server logged" not in cli("check", str(client), str(both)).stdout
    alone = cli("check", "--allow-one-side", str(server))   # one-sided logs say so on their own line
    assert "only the server logged" not in alone.stdout and "one-sided: only server entries" in alone.stdout


def test_load_and_check_give_the_same_cancel_propagation_figures(tmp_path: Path) -> None:
    # the load measured the client's Can at its in-memory time, finer than its log line's
    # microsecond: check over the same logs then printed e.g. p99=50.827 ms beside the load's 50.826
    server = start_server(tmp_path, "--max-hold", "20")
    client_log, report_file = tmp_path / "client.jsonl", tmp_path / "load.json"
    try:
        result = cli("load", "--target", server.target, "--calls", "200", "--seed", "5", "--mix", "hold=100",
                     "--cancel", "abortive=30,non-abortive=30", "--cancel-at", "held:0.05", "--concurrency", "8",
                     "--cancel-poll", "0=50,20=50", "--log-file", str(client_log), "--report", str(report_file),
                     timeout=120)
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    report = orjson.loads(report_file.read_bytes())
    checked = orjson.loads(cli("check", "--json", str(client_log), str(server.log)).stdout)
    for figure in ("cancel_propagation_ms", "cancel_propagation_polled_ms", "cancel_poll_wait_ms"):
        assert report[figure]["count"] >= 3, report[figure]   # enough calls of each kind to compare
        assert report[figure] == {k: round(v, 3) if isinstance(v, float) else v for k, v in checked[figure].items()}, figure
    assert "; of it waiting for the poll: p50=" in result.stdout, result.stdout   # check's words


# -- the report page's charts and run table --------------------------------------------------

def test_the_timeline_says_its_buckets_in_ms_and_per_bucket() -> None:
    # it said "buckets of 2e-03 s" and hover text "2 at 2e-03–4e-03 s"; "calls ended" read as a total
    from callstate.cli.report import svg_charts

    svg = svg_charts.timeline(0.002, [("calls in flight", "#000", [1, 2, 1])], [("abortive cancels", "#000", [0, 2, 0])],
                              line_title="calls", bar_title="cancels")
    assert "buckets of 2 ms" in svg and "e-0" not in svg, svg
    assert "abortive cancels: 2 at 0.002–0.004 s" in svg, svg


def test_the_load_page_names_everything_that_shaped_the_run(tmp_path: Path) -> None:
    # --cancel-poll (and --hold-for, --delay, --abort-code) were in neither the page nor --report;
    # the card counted only the propagations to handlers that do not poll
    server = start_server(tmp_path, "--max-hold", "20")
    html, report_file = tmp_path / "load.html", tmp_path / "load.json"
    try:
        result = cli("load", "--target", server.target, "--calls", "100", "--seed", "5", "--mix", "hold=100",
                     "--cancel", "abortive=50,non-abortive=50", "--cancel-at", "held:0.05", "--concurrency", "8",
                     "--cancel-poll", "0=50,20=50", "--hold-for", "0.004", "--abort-code", "77",
                     "--html", str(html), "--report", str(report_file), timeout=120)
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    config = orjson.loads(report_file.read_bytes())["config"]
    assert (config["cancel_poll"], config["hold_for"], config["abort_code"], config["delay"]) == ("0=50,20=50", 0.004, 77, 0.0)
    text = html.read_text()
    rows = dict(re.findall(r"<tr><th>([a-z_]+)</th><td[^>]*>([^<]*)</td></tr>", text))
    assert (rows["cancel_poll"], rows["hold_for"], rows["abort_code"]) == ("0=50,20=50", "0.004", "77"), rows
    polled = orjson.loads(report_file.read_bytes())["cancel_propagation_polled_ms"]["count"]
    assert polled and f"and {polled} to polling handlers, apart" in text
    assert "calls ended per bucket" in text and "abortive cancels per bucket" in text


# -- --help says what the options do and default to -----------------------------------------

def test_every_default_a_help_text_states_is_the_real_one() -> None:
    from callstate.cli import build_parser
    from callstate.cli.parser import subcommands

    checked = 0
    for name, sub in subcommands(build_parser()).items():
        for action in sub._actions:
            said = re.search(r"\(default: ([^;)]+)\)$", (action.help or "").replace("%(default)s", str(action.default)))
            if said and isinstance(action.default, (int, float, str)) and action.default not in ("", False, True):
                assert said[1] == str(action.default) or said[1].startswith(f"{action.default}: "), f"{name} {action.option_strings}: help says {said[1]}, " \
                                                       f"the default is {action.default!r}"
                checked += 1
    assert checked > 50


def test_load_help_says_its_timeout_is_each_calls() -> None:
    # it said "gRPC deadline for the call", in a command that makes thousands
    from callstate.cli import build_parser
    from callstate.cli.parser import subcommands

    [timeout] = [a for a in subcommands(build_parser())["load"]._actions if "--timeout" in a.option_strings]
    assert timeout.help.startswith("gRPC deadline of each call, not of the run"), timeout.help


# -- callstate call's final line ---------------------------------------------------------------

def test_calls_final_line_says_1_byte(shared_server: ServerProcess) -> None:
    # it said "reply of 1 bytes"
    result = cli("call", "--target", shared_server.target, "--reply-bytes", "1", timeout=60)
    assert result.returncode == 0 and result.stderr.splitlines()[-1] == "final: 0 RPC_S_OK: reply of 1 byte", result.stderr


def test_a_pipe_point_that_cannot_fire_says_1_message(refused_target: str) -> None:
    # it said "the caller pushes only 1 messages"
    result = cli("call", "--target", refused_target, "--pipe", "in", "--messages", "1", "--cancel-at", "after-sent:2")
    assert result.returncode == 2, result.stderr
    assert "the caller pushes only 1 message (--messages)" in result.stderr, result.stderr


# -- serve's shutdown summary ------------------------------------------------------------------

def test_serve_says_it_stopped_after_1_call(tmp_path: Path) -> None:
    # it said "stopped after 1 calls"
    server = start_server(tmp_path)
    try:
        result = cli("call", "--target", server.target, timeout=60)
        assert result.returncode == 0, result.stderr
    finally:
        assert server.stop() == 0
    assert "callstate: stopped after 1 call (0 left in flight)" in server.stderr.read_text().splitlines(), \
        server.stderr.read_text()


def test_watch_says_1_entry_lost(capsys: pytest.CaptureFixture[str]) -> None:
    # it said "1 entries lost"
    from types import SimpleNamespace

    from callstate.cli.watch import _Watch

    _Watch._lost(SimpleNamespace(targets=["127.0.0.1:1"]), "127.0.0.1:1", 1, 1)  # type: ignore[arg-type]
    assert capsys.readouterr().err == "callstate watch: 1 entry lost (this watcher was too slow; 1 in all)\n"


# -- a stand-in's calls on a terminal ----------------------------------------------------------

def test_a_stand_ins_entry_line_names_its_method_and_rule() -> None:
    # watch printed "server D - --dispatch-->" alike for every method of a stand-in: which of the
    # user's methods a line was about (and which rule answered it) was in the JSON form only
    from callstate.cli.terminal import human

    e = to_dict(Entry(1_700_000_000.0, SERVER, "x", D, None, ENTER, DISPATCH, method="shop.v1.Shop/Charge",
                      rule="declined"))
    assert human(e).endswith("--dispatch-->  (shop.v1.Shop/Charge, rule declined)"), human(e)
    plain = to_dict(Entry(1_700_000_000.0, SERVER, "x", D, None, ENTER, DISPATCH))
    assert human(plain).endswith("--dispatch-->"), human(plain)


def test_the_report_page_says_which_calls_only_the_server_logged(tmp_path: Path) -> None:
    # its verdict said "every invariant holds on both sides (3 calls)" and nothing of the 2
    # calls no client log had, as check now says
    client = write_log(tmp_path / "client.jsonl", client_call("both", 1_700_000_000.0))
    server = write_log(tmp_path / "server.jsonl", server_call("both", 1_700_000_000.0005)
                       + server_call("other-1", 1_700_000_001.0) + server_call("other-2", 1_700_000_002.0))
    out = tmp_path / "page.html"
    result = cli("report", str(client), str(server), "--html", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("<p>2 calls only the server logged (no client log given has them): the client side and the codes' "
            "agreement of those calls are not checked.</p>") in out.read_text()
    out_one = tmp_path / "one.html"
    assert cli("report", str(client), str(write_log(tmp_path / "s1.jsonl", server_call("both", 1_700_000_000.0005))),
               "--html", str(out_one)).returncode == 0
    assert "no client log given has" not in out_one.read_text()
