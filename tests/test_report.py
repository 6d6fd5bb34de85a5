"""The HTML report: its numbers against a real run's logs, the violation examples, and the
file rendered in a real headless Chromium (renders, not blank, no console error, no request)."""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

from callstate import codes
from callstate.logfile import check_files
from callstate.lifecycle import CAN, CLIENT, COMP, END, ENTER, SERVER, cancel_kind_of
from callstate.statelog import parse_ts
from tests import browser
from tests.conftest import cli, read_entries, start_server
from tests.documentation import blocks, section as doc_section

needs_chromium = pytest.mark.skipif(browser.CHROMIUM is None, reason=browser.MISSING)
CONCURRENCY = 16


class Run:
    """One real `callstate serve` + `callstate load --html` run, shared by the tests below."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.client_log, self.load_html, self.load_json = tmp / "client.jsonl", tmp / "load.html", tmp / "load.json"
        srv = start_server(tmp, "--max-hold", "20")
        try:
            self.load = cli("load", "--target", srv.target, "--calls", "600", "--concurrency", str(CONCURRENCY),
                            "--seed", "5", "--cancel", "abortive=30,non-abortive=20",
                            "--cancel-at", "before-start,after-start,held:0.02", "--log-file", str(self.client_log),
                            "--report", str(self.load_json), "--html", str(self.load_html), timeout=120)
            assert self.load.returncode == 0, self.load.stdout + self.load.stderr
            deadline = time.monotonic() + 10   # the server's writer thread flushes its last batch
            while not check_files([self.client_log, srv.log]).ok and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            srv.stop()
        self.server_log = srv.log
        self.client = read_entries(self.client_log)
        self.server = read_entries(srv.log)
        self.report = json.loads(self.load_json.read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    yield Run(tmp_path_factory.mktemp("report"))


def by_call(entries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        out.setdefault(e["call_id"], []).append(e)
    return out


def path_counts(entries: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(" → ".join(e["state"] for e in es if e["event"] == ENTER) for es in by_call(entries).values()))


def section(html: str, kind: str) -> str:
    start = html.index(f'<h3 id="kind-{kind}">')
    end = html.find("<h3", start + 1)
    return html[start:end if end > 0 else len(html)]


def test_load_html_shows_the_runs_numbers(run: Run) -> None:
    html = run.load_html.read_text()
    for code, n in run.report["by_code"].items():
        row = re.search(rf"<td>{re.escape(codes.describe(int(code)))}</td><td class=\"num\">(\d+)</td>", html)
        assert row and int(row.group(1)) == n, (code, n)
    assert "OK: every invariant holds on both sides (600 calls)" in html
    assert f"{run.report['calls_per_s']:.0f}</b>calls/s" in html
    for side, entries in ((CLIENT, run.client), (SERVER, [e for e in run.server if e["call_id"] in
                                                         {c["call_id"] for c in run.client}])):
        for path, n in path_counts(entries).items():
            assert f'<td class="mono">{path}</td><td class="num">{n}</td>' in html, (side, path, n)
    assert html.count("<svg") == 3   # latency, timeline, propagation


def test_load_html_says_where_it_wrote_and_its_run_table_reads_like_the_command_line(run: Run) -> None:
    assert f"callstate load: HTML report written to {run.load_html.resolve()}" in run.load.stderr
    html = run.load_html.read_text()
    table = html[html.index('<h2 id="run">'):].split("</table>", 1)[0]
    assert "None" not in table and "{" not in table and "[" not in table, table
    assert '<th>cancel</th><td class="mono">abortive=30, non-abortive=20</td>' in table, table
    assert '<th>cancel_at</th><td class="mono">before-start, after-start, held:0.02</td>' in table, table


def test_report_from_logs_matches_the_logs(run: Run, tmp_path: Path) -> None:
    out_html, out_json = tmp_path / "out.html", tmp_path / "out.json"
    result = cli("report", str(run.client_log), str(run.server_log), "--html", str(out_html), "--json", str(out_json))
    assert result.returncode == 0, result.stderr
    assert "check OK" in result.stdout
    data = json.loads(out_json.read_text())
    client = by_call(run.client)
    # final codes and latency percentiles, recomputed from the logs: the client's view of each
    # call, the server's for a call only the server saw (the load's barrier call)
    latencies: dict[int, list[float]] = {}
    server_only = {cid: es for cid, es in by_call(run.server).items() if cid not in client}
    assert len(server_only) == 1
    for es in (*client.values(), *server_only.values()):
        end = next(e for e in es if e["state"] == END and e["event"] == ENTER)
        latencies.setdefault(end["code"], []).append((parse_ts(end["ts"]) - parse_ts(es[0]["ts"])) * 1000)
    assert {row["code"]: row["count"] for row in data["by_code"]} == {c: len(v) for c, v in latencies.items()}
    load_codes = Counter({int(c): n for c, n in run.report["by_code"].items()})
    assert load_codes + Counter({codes.RPC_S_OK: 1}) == Counter({c: len(v) for c, v in latencies.items()})
    for row in data["by_code"]:
        values = sorted(latencies[row["code"]])
        assert row["latency_ms"]["p50"] == pytest.approx(values[-(-len(values) // 2) - 1], abs=1e-3)
        assert row["latency_ms"]["max"] == pytest.approx(values[-1], abs=1e-3)
        assert sum(row["hist"]) == len(values)
    # paths on both sides (the server's log also has the load's barrier call)
    assert dict(data["paths"][CLIENT]) == path_counts(run.client)
    assert dict(data["paths"][SERVER]) == path_counts(run.server)
    # cancels over time by kind, and calls in flight never above the load's concurrency
    first_cancels = [next(e for e in es if e["state"] == CAN) for es in client.values()
                     if any(e["state"] == CAN for e in es)]
    kinds = Counter(cancel_kind_of(e.get("cancel"), e.get("detail")) for e in first_cancels)
    assert {k: sum(v) for k, v in data["timeline"]["cancels"].items()} == dict(kinds)
    in_flight = data["timeline"]["in_flight"]
    assert 0 < max(in_flight) <= CONCURRENCY + 1 and in_flight[-1] == 0   # +1: the server-only barrier call
    assert sum(data["timeline"]["ended"]) == sum(row["count"] for row in data["by_code"])
    # cancel propagation: the checker's own measure
    assert data["propagation"]["ms"]["count"] == len(check_files([run.client_log, run.server_log]).cancel_propagation_ms)
    assert data["propagation"]["ms"]["count"] > 0 and sum(data["propagation"]["hist"]) == data["propagation"]["ms"]["count"]


def broken_server_log(run: Run, tmp: Path) -> tuple[Path, str, str]:
    """The run's server log with two calls broken: one completed call's End carries code 5
    (wrong_final_code, code_mismatch), another completed call never reaches End (not_ended)."""
    completed = [cid for cid, es in by_call(run.server).items()
                 if [e["state"] for e in es if e["event"] == ENTER] == ["D", COMP, END]
                 and cid in {c["call_id"] for c in run.client}]
    wrong, unended = completed[0], completed[1]
    lines = []
    for e in run.server:
        if e["call_id"] == wrong and e["state"] == END:
            e = {**e, "code": codes.ERROR_ACCESS_DENIED}
        if e["call_id"] == unended and e["state"] == END:
            continue
        lines.append(json.dumps(e))
    path = tmp / "broken-server.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, wrong, unended


def test_report_shows_each_violation_kind_with_both_sides_histories(run: Run, tmp_path: Path) -> None:
    broken, wrong, unended = broken_server_log(run, tmp_path)
    out_html, out_json = tmp_path / "bad.html", tmp_path / "bad.json"
    result = cli("report", str(run.client_log), str(broken), "--html", str(out_html), "--json", str(out_json))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED (3 violations)" in result.stdout
    data = json.loads(out_json.read_text())
    kinds = {k["kind"]: k for k in data["check"]["kinds"]}
    assert set(kinds) == {"wrong_final_code", "code_mismatch", "not_ended"}
    assert kinds["not_ended"]["example"]["call_id"] == unended
    assert kinds["wrong_final_code"]["example"]["call_id"] == wrong == kinds["code_mismatch"]["example"]["call_id"]
    html = out_html.read_text()
    assert "FAILED: 3 violations" in html
    client, server = by_call(run.client), by_call(read_entries(broken))
    for kind, call_id in (("not_ended", unended), ("wrong_final_code", wrong), ("code_mismatch", wrong)):
        part = section(html, kind)
        assert call_id in part
        sides = part.split("<b>server</b>")
        assert len(sides) == 2, "the client's and the server's histories, side by side"
        for side_html, entries in ((sides[0], client[call_id]), (sides[1], server[call_id])):
            shown = re.findall(r'<td class="mono">(\d\d:\d\d:\d\d\.\d{6}Z)</td><td class="mono">(\w+)</td>', side_html)
            assert shown == [(e["ts"][11:], e["state"]) for e in entries]
    assert "5 ERROR_ACCESS_DENIED" in section(html, "wrong_final_code")


def test_one_sides_log_is_not_reported_as_both_sides_checked(run: Run, tmp_path: Path) -> None:
    out = tmp_path / "client-only.html"
    result = cli("report", str(run.client_log), "--html", str(out))
    assert result.returncode == 1 and "check NOT JUDGED" in result.stdout, result.stdout   # as `check` judges it
    assert cli("report", str(run.client_log), "--html", str(out), "--allow-one-side").returncode == 0
    html = out.read_text()
    assert "on both sides" not in html and "OK: every invariant holds on the client side" in html
    assert "no server log" in html


def test_caller_text_in_the_logs_is_escaped(tmp_path: Path) -> None:
    log = tmp_path / "evil.jsonl"
    evil = "<script>alert(1)</script>"
    log.write_text(json.dumps({"ts": "2026-11-24T15:55:37.256854Z", "side": CLIENT, "call_id": evil, "state": "C",
                               "prev": None, "event": ENTER, "move": "call", "detail": evil}) + "\n")
    out = tmp_path / "evil.html"
    result = cli("report", str(log), "--html", str(out))
    assert result.returncode == 1   # the call never ended
    html = out.read_text()
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.parametrize("content, expected", [
    (None, "No such file"),
    ("not json\n", "not JSON"),
    ('{"ts": "x"}\n', "not a state entry"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, content: str | None, expected: str) -> None:
    log = tmp_path / "in.jsonl"
    if content is not None:
        log.write_text(content)
    result = cli("report", str(log), "--html", str(tmp_path / "out.html"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and expected in result.stderr and "Traceback" not in result.stderr


def test_without_jinja2_html_says_what_to_install(monkeypatch, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from callstate.cli import main

    monkeypatch.setitem(sys.modules, "jinja2", None)
    log = tmp_path / "x.jsonl"
    log.write_text("")
    for command in (["report", str(log)], ["load", "--target", "127.0.0.1:1", "--calls", "1"]):
        assert main([*command, "--html", str(tmp_path / "x.html")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "pip install 'callstate[report]'" in err, err


def test_report_needs_html_option(tmp_path: Path) -> None:
    result = cli("report", str(tmp_path / "x.jsonl"))
    assert result.returncode == 2 and "--html" in result.stderr


def test_the_readme_report_commands_run(tmp_path: Path) -> None:
    block = blocks(doc_section("The HTML report"), "sh")[0]
    commands = [line.split("#")[0].split() for line in block.splitlines() if line.startswith("callstate ")]
    assert [c[:2] for c in commands] == [["callstate", "load"], ["callstate", "report"]]
    srv = start_server(tmp_path, "--max-hold", "20", name="server")   # writes server.jsonl, as the README names it
    try:
        load = commands[0][1:] + ["--target", srv.target]
        load[load.index("--calls") + 1] = "300"   # the README's 5000, smaller
        assert cli(*load, cwd=tmp_path, timeout=120).returncode == 0
        deadline = time.monotonic() + 10   # the server's writer thread flushes its last batch
        while not check_files([tmp_path / "client.jsonl", srv.log]).ok and time.monotonic() < deadline:
            time.sleep(0.1)
        result = cli(*commands[1][1:], cwd=tmp_path)
    finally:
        srv.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "load.html").stat().st_size > 10_000 and "check OK" in result.stdout
    assert "301 calls" in result.stdout   # 300 and the load's barrier call, which only the server logged


# -- in a real browser -------------------------------------------------------------------------

BROKEN_PAGE = """<!DOCTYPE html><html><body><h1>broken</h1>
<script>undefinedFunction();</script><img src="http://example.com/pixel.png" alt=""></body></html>"""


@needs_chromium
def test_the_browser_harness_sees_console_errors_requests_and_blank_pages(tmp_path: Path) -> None:
    """The checks below could pass vacuously; here they must fail on a page that breaks them."""
    broken = tmp_path / "broken.html"
    broken.write_text(BROKEN_PAGE)
    shown = browser.render(broken, tmp_path, 800, 600)
    assert any("Uncaught ReferenceError" in m for m in shown.console), shown.stderr[-3000:]
    assert shown.requests == ["http://example.com/pixel.png"]
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    assert browser.ink(browser.render(blank, tmp_path, 800, 600).screenshot)[0] < 0.001


@needs_chromium
@pytest.mark.parametrize("which", ["load", "violations"])
def test_the_report_renders_offline_in_chromium(run: Run, tmp_path: Path, which: str) -> None:
    page = run.load_html
    if which == "violations":
        broken, _wrong, _unended = broken_server_log(run, tmp_path)
        page = tmp_path / "bad.html"
        assert cli("report", str(run.client_log), str(broken), "--html", str(page)).returncode == 1
    text = page.read_text()
    assert not re.search(r"https?://|<script|<link|@import|url\(", text), "the file must fetch nothing"
    shown = browser.render(page, tmp_path)
    assert shown.console == [], shown.console
    assert shown.requests == [], shown.requests
    drawn, colours = browser.ink(shown.screenshot)
    assert drawn > 0.03 and colours > 50, (drawn, colours)
