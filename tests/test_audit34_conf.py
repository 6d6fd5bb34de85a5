"""Session 34, conformance: `--html` (a page to share a gateway's verdicts with a team), and the
command's outputs as a user meets them: the verdict on the last line, Ctrl-C keeping what was
measured on stdout, progress into a CI log, and the gateway matrix tool's bad input."""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from callstate.cli.conformance.properties import (CANCEL_ABORTIVE, CHECK, COMPLETE_SMALL, GRACEFUL_STOP, HELD,
                                                  PROPERTIES, Row)
from callstate.cli.conformance.report import DIRECT, PROXY, table, to_json, verdict_line
from tests import browser
from tests.conftest import ROOT, cli, wait_for_text
from tests.middleboxes import free_port, start_nginx

needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None,
                                 reason="nginx is not installed (tools/system-deps.sh installs it)")
needs_chromium = pytest.mark.skipif(browser.CHROMIUM is None, reason=browser.MISSING)
QUICK = ("--calls", "2", "--concurrency", "2", "--hold-seconds", "0.5", "--cancel-bound-ms", "5000", "--wait", "30")
FETCHES = re.compile(r"https?://|<script|<link|@import|url\(")


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# -- --html ----------------------------------------------------------------------------------------

@needs_nginx
@needs_chromium
def test_the_html_page_of_a_run_through_nginx_names_the_gateway_shows_every_row_and_renders_offline(
        tmp_path: Path) -> None:
    """What a user shares with the team: the gateway (its address and what it calls itself, nginx's
    `server` header), each property's verdict and figures on both paths, from the very run --report
    wrote; one file that opens offline in a real browser, fetching nothing, with no script error."""
    upstream = free_port()
    proxy = start_nginx(tmp_path, free_port(), upstream)
    page, report = tmp_path / "conformance.html", tmp_path / "conformance.json"
    try:
        res = cli("conformance", "--serve-port", str(upstream), "--proxy", proxy.target, *QUICK,
                  "--only", f"{COMPLETE_SMALL},{CANCEL_ABORTIVE},{CHECK}", "--html", str(page), "--report", str(report),
                  timeout=120)
    finally:
        proxy.stop()
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines()[-1].startswith("conformance: OK"), res.stdout   # the help's "last line"
    text = page.read_text()
    data = orjson.loads(report.read_bytes())
    assert f"callstate conformance: {proxy.target} (nginx/" in text   # the title: the gateway under test
    assert re.search(r"it answers as <span class=\"mono\">nginx/\d", text), text
    assert data["upstream"] in text and "verdict ok" in text
    for path in (DIRECT, PROXY):
        assert [r["property"] for r in data["rows"][path]] == [COMPLETE_SMALL, CANCEL_ABORTIVE, CHECK]
        for row in data["rows"][path]:
            cell = f'<td class="{row["verdict"]}"><span class="word">{row["verdict"]}</span>{html.escape(row["figures"])}</td>'
            assert cell in text, cell
    assert "p99" in text and "latency ms" in text   # a row's numbers: cancel-abortive's percentiles
    assert not FETCHES.search(text), "the page must fetch nothing"
    shown = browser.render(page, tmp_path)
    assert shown.console == [] and shown.requests == [], (shown.console, shown.requests)
    drawn, colours = browser.ink(shown.screenshot)
    assert drawn > 0.03 and colours > 50, (drawn, colours)


def test_the_html_page_escapes_what_the_gateway_says_and_shows_failures_skips_and_a_run_with_no_verdict() -> None:
    """A gateway's header and a row's note are text from the network: escaped. A FAIL, a skip and a
    property the run never reached each look so; an interrupted run says NO VERDICT, in the shared
    page style of `callstate report`."""
    from callstate.cli.conformance import html_page

    rows = {DIRECT: [Row(COMPLETE_SMALL, True, "4/4 intact"), Row(GRACEFUL_STOP, None, note="only with --serve-port"),
                     Row(HELD, True, "10/10 held 1 s")],
            PROXY: [Row(COMPLETE_SMALL, False, "1/4 intact", note="reset <script>alert(1)</script> x3",
                        data={"latency_ms": {"p50": 1.5, "p99": 9.25}}),
                    Row(GRACEFUL_STOP, None, note="only with --serve-port")]}
    data = to_json(rows, "127.0.0.1:8080", "127.0.0.1:50051", {"calls": 2, "only": []}, 3.0)
    failed = html_page.render(data, verdict_line(rows), "<b>Evil</b>/1.0")
    assert "<script>alert" not in failed and "&lt;script&gt;alert(1)&lt;/script&gt;" in failed
    assert "<b>Evil</b>" not in failed and "&lt;b&gt;Evil&lt;/b&gt;/1.0" in failed
    assert '<div class="verdict failed">conformance: FAILED — complete-small</div>' in failed
    assert '<td class="FAIL"><span class="word">FAIL</span>1/4 intact</td>' in failed
    assert '<td class="skip"><span class="word">skip</span>only with --serve-port</td>' in failed
    assert '<td class="none">not judged</td>' in failed   # held: the proxy path never got to it
    assert "<dt>latency ms</dt><dd>p50=1.5, p99=9.25</dd>" in failed
    style = (ROOT / "cli" / "report" / "templates" / "style.css.j2").read_text().split("\n", 1)[1]
    assert style.strip() in failed   # the page style `callstate report` has
    stopped = html_page.render(to_json(rows, "127.0.0.1:8080", "127.0.0.1:50051", {}, 3.0, "interrupted by SIGINT before "
                                       "the run ended"), verdict_line(rows), "")
    assert ('<div class="verdict unjudged">NO VERDICT: interrupted by SIGINT before the run ended; the rows below '
            "were judged before it</div>") in stopped
    assert "it names itself in no response header" in stopped


def test_a_run_ended_by_a_usage_error_still_writes_the_page_saying_why(tmp_path: Path, refused_target: str) -> None:
    page = tmp_path / "c.html"
    res = cli("conformance", "--serve-port", "0", "--proxy", refused_target, "--max-bytes", "99999999",
              "--html", str(page))
    assert res.returncode == 2 and "over the largest reply" in one_line(res.stderr)
    assert "NO VERDICT: --max-bytes 99999999 is over the largest reply" in page.read_text()


@pytest.mark.parametrize("where, words", [
    ("missing/c.html", "No such file or directory"),
    ("same", "is the same file as"),
])
def test_an_html_path_that_cannot_be_written_is_one_line_before_the_run(tmp_path: Path, refused_target: str,
                                                                       where: str, words: str) -> None:
    page = tmp_path / ("c.json" if where == "same" else where)
    res = cli("conformance", "--serve-port", "0", "--proxy", refused_target, "--report", str(tmp_path / "c.json"),
              "--html", str(page))
    assert res.returncode == 2 and words in one_line(res.stderr), res.stderr
    assert not page.exists() and not (tmp_path / "c.json").exists()


def test_html_without_jinja2_is_one_line_before_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str], refused_target: str) -> None:
    """The page needs Jinja2 (the report extra), as `callstate report` does: said before anything runs."""
    from callstate.cli import build_parser
    from callstate.cli.conformance import command
    from callstate.cli.report import html_report

    monkeypatch.setattr(html_report, "available", lambda: html_report.MISSING_JINJA)
    page = tmp_path / "c.html"
    opts = build_parser().parse_args(["conformance", "--server", refused_target, "--proxy", refused_target,
                                      "--html", str(page)])
    assert command.run(opts) == 2
    assert one_line(capsys.readouterr().err) == f"callstate conformance: {html_report.MISSING_JINJA}"
    assert not page.exists()


# -- the text output and a long run ----------------------------------------------------------------

def test_the_verdict_is_the_last_line_after_the_runs_time() -> None:
    """--help: "1 when one fails (named on the last line)"; the last line was the run's time, so
    `| tail -1` in a CI script read "(40.7 s)"."""
    rows = {DIRECT: [Row(COMPLETE_SMALL, True, "4/4")], PROXY: [Row(COMPLETE_SMALL, False, "3/4", note="hung")]}
    lines = table(rows, "p:1", "s:2", seconds=40.7).splitlines()
    assert lines[-2:] == ["(40.7 s)", "conformance: FAILED — complete-small"], lines


def test_ctrl_c_prints_the_rows_measured_and_progress_reaches_a_ci_log(tmp_path: Path) -> None:
    """Ctrl-C mid-run without --report printed nothing on stdout: every row measured until then was
    lost (and in a CI log, with stderr not a terminal, no progress line said what had been judged).
    `--progress always` prints the lines into the log; the interrupt prints the rows judged, the last
    line saying there is no verdict; --html says so too."""
    upstream = free_port()   # the proxy is the server itself: what is measured here is the command
    out, err, page = tmp_path / "out.txt", tmp_path / "err.txt", tmp_path / "c.html"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "callstate", "conformance", "--serve-port", str(upstream),
                                 "--proxy", f"127.0.0.1:{upstream}", "--only", f"{COMPLETE_SMALL},{HELD}",
                                 "--calls", "2", "--hold-seconds", "60", "--progress", "always", "--html", str(page)],
                                stdout=stdout, stderr=stderr)
    try:
        wait_for_text(err, f"[{PROXY} 1/2] {COMPLETE_SMALL} pass", proc, timeout=60)   # held runs on, 60 s
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = out.read_text().splitlines()
    assert lines[0].startswith("property") and lines[1].startswith(COMPLETE_SMALL) and "pass  4/4 intact" in lines[1]
    assert lines[-1] == ("conformance: NO VERDICT — interrupted by SIGINT before the run ended "
                         "(2 rows judged, shown above)"), lines
    assert "NO VERDICT: interrupted by SIGINT" in page.read_text() and f'<a href="#{COMPLETE_SMALL}">' in page.read_text()


def test_progress_and_quiet_together_is_a_usage_error(refused_target: str) -> None:
    res = cli("conformance", "--serve-port", "0", "--proxy", refused_target, "--progress", "always", "--quiet")
    assert res.returncode == 2 and "not allowed with" in one_line(res.stderr)


# -- tools/gateway-matrix.sh: which gateways ---------------------------------------------------------

def _matrix(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The tool with no proxy on its PATH (nor in `tmp`, its --pypi-bin): whatever it is asked, it can
    measure nothing, so a run that ought to be refused cannot rewrite docs/gateways.md instead."""
    return subprocess.run([sys.executable, str(ROOT / "tools" / "gateway_matrix.py"), "--pypi-bin", str(tmp), *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": str(tmp)})


def test_an_unknown_gateway_is_one_line_and_the_committed_matrix_is_never_emptied(tmp_path: Path) -> None:
    """`tools/gateway-matrix.sh --only nginix` ran nothing and wrote docs/gateways.md with no row, exit 0;
    --only nginx wrote it with nginx's row alone. Now: an unknown family is one line naming the choices,
    --only needs --out, and a run that measured no proxy leaves the page as it was (exit 1)."""
    unknown = _matrix(tmp_path, "--only", "nginix", "--out", str(tmp_path / "g.md"))
    assert unknown.returncode == 2 and "invalid choice: 'nginix'" in one_line(unknown.stderr)
    assert "'nginx', 'haproxy', 'traefik', 'caddy', 'apache'" in unknown.stderr
    alone = _matrix(tmp_path, "--only", "nginx")
    assert alone.returncode == 2 and "give --out FILE" in one_line(alone.stderr)
    page = tmp_path / "g.md"
    page.write_text("the matrix as it was\n")
    nothing = _matrix(tmp_path, "--only", "nginx", "--out", str(page))
    assert nothing.returncode == 1 and "no proxy was measured" in nothing.stderr, nothing.stderr
    assert page.read_text() == "the matrix as it was\n"


def test_every_property_has_its_row_in_the_html_table() -> None:
    """The page's table lists the properties in the battery's order, whichever rows ran."""
    from callstate.cli.conformance import html_page
    rows = {DIRECT: [Row(p, True, "ok") for p in PROPERTIES], PROXY: [Row(p, True, "ok") for p in PROPERTIES]}
    text = html_page.render(to_json(rows, "p:1", "s:2", {}, 1.0), verdict_line(rows), "")
    assert [m for m in re.findall(r'<tr><td><a href="#([\w-]+)">', text)] == list(PROPERTIES)


def test_a_run_that_tested_nothing_is_not_ok(tmp_path: Path, refused_target: str) -> None:
    """`--server X --only graceful-stop`: the row is skipped on both paths (only with --serve-port), and
    the run said "conformance: OK — every property asked for (1 of 20, --only) holds through the proxy",
    exit 0: nothing had been measured. Now NOT TESTED, exit 1, the page's verdict unjudged, as `callstate check`
    is NOT JUDGED, never OK, on logs it cannot judge (and the JSON says ok: false, as its exit status does)."""
    from callstate.cli.conformance.report import holds, untested
    rows = {path: [Row(GRACEFUL_STOP, None, note="skipped: only with --serve-port")] for path in (DIRECT, PROXY)}
    assert untested(rows) and table(rows, "p:1", "s:2").splitlines()[-1] == (
        f"conformance: NOT TESTED — no property asked for could be tested here: {GRACEFUL_STOP} (see above)")
    assert not holds(rows)   # exit status 1
    from callstate.cli.conformance import html_page
    page = html_page.render(to_json(rows, "p:1", "s:2", {}, 1.0), verdict_line(rows), "")
    assert '<div class="verdict unjudged">conformance: NOT TESTED' in page
    rows[PROXY].insert(0, Row(COMPLETE_SMALL, True, "4/4"))   # one row tested: OK, naming the one skipped
    assert not untested(rows) and holds(rows)


def test_a_proxy_that_is_the_server_itself_is_said_so(tmp_path: Path) -> None:
    """`--proxy` given the server's own address (a slip, or --serve-port N --proxy 127.0.0.1:N): every row
    passed "through the proxy" and the verdict said the proxy keeps every property, with no proxy there."""
    from markupsafe import escape

    from callstate.cli.conformance import html_page
    port = free_port()
    page = tmp_path / "c.html"
    res = cli("conformance", "--serve-port", str(port), "--proxy", f"127.0.0.1:{port}", *QUICK,
              "--only", COMPLETE_SMALL, "--html", str(page), timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    note = (f"note: --proxy 127.0.0.1:{port} is the server's own address: no proxy stood between, so both columns "
            "are the server straight; give the proxy's address to test it")
    assert res.stdout.splitlines()[-3] == note, res.stdout
    assert f'<p class="warning">{escape(note)}</p>' in page.read_text()
    rows = {path: [Row(COMPLETE_SMALL, True, "4/4")] for path in (DIRECT, PROXY)}
    assert "note:" not in table(rows, "127.0.0.1:8080", "127.0.0.1:50051")
    assert "warning" not in html_page.render(to_json(rows, "127.0.0.1:8080", "127.0.0.1:50051", {}, 1.0),
                                             verdict_line(rows), "").split("</style>")[1]
