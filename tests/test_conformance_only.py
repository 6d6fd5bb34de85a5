"""`callstate conformance --only`: re-running the rows a gateway failed, and nothing else.

The runs here go "through" the server itself (--proxy is the server's own address): the point
is which rows are judged and how the outputs say so, not a gateway's behaviour."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson

from callstate.cli.conformance.command import progress_line
from callstate.cli.conformance.properties import CANCEL_ABORTIVE, CHECK, PIPE_CANCEL, PROPERTIES, Row
from tests.conftest import cli
from tests.middleboxes import free_port

# The bound is generous: these tests are about which rows are judged, and a loaded machine's
# cancels can take longer than the default 250 ms to cross (a pass must not depend on it).
QUICK = ("--calls", "2", "--hold-seconds", "1", "--streams", "10", "--max-bytes", "65536", "--wait", "30",
         "--cancel-bound-ms", "5000")


def test_only_judges_the_properties_asked_for_on_both_paths(tmp_path: Path) -> None:
    port = free_port()
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    res = cli("conformance", "--serve-port", str(port), "--proxy", f"127.0.0.1:{port}", *QUICK,
              "--only", f"{PIPE_CANCEL}, {CANCEL_ABORTIVE},{PIPE_CANCEL}", "--report", str(report),
              "--junit-xml", str(junit), timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    data = orjson.loads(report.read_bytes())
    for path in ("direct", "proxy"):   # in the battery's order, each once
        assert [r["property"] for r in data["rows"][path]] == [CANCEL_ABORTIVE, PIPE_CANCEL], data["rows"][path]
        assert all(r["verdict"] == "pass" for r in data["rows"][path]), data["rows"][path]
    assert data["config"]["only"] == [PIPE_CANCEL, CANCEL_ABORTIVE]
    cases = [c.get("name") for c in ET.parse(junit).getroot().iter("testcase")]
    assert sorted(cases) == sorted([CANCEL_ABORTIVE, PIPE_CANCEL] * 2)
    table = res.stdout.splitlines()
    assert [line.split()[0] for line in table[1:3]] == [CANCEL_ABORTIVE, PIPE_CANCEL] and table[3] == "", res.stdout
    assert f"every property asked for (2 of {len(PROPERTIES)}, --only) holds" in res.stdout


def test_only_check_alone_is_skipped_not_passed_on_no_calls(tmp_path: Path) -> None:
    port = free_port()
    report = tmp_path / "report.json"
    res = cli("conformance", "--serve-port", str(port), "--proxy", f"127.0.0.1:{port}", *QUICK,
              "--only", CHECK, "--report", str(report), timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr   # nothing tested is never OK
    data = orjson.loads(report.read_bytes())
    rows = data["rows"]
    assert [(r["property"], r["verdict"]) for r in rows["direct"] + rows["proxy"]] == [(CHECK, "skip")] * 2
    assert "no other row ran (--only)" in res.stdout
    assert res.stdout.splitlines()[-1] == ("conformance: NOT TESTED — no property asked for could be tested here: "
                                           f"{CHECK} (see above)"), res.stdout


def test_an_unknown_property_is_one_line_naming_it_and_the_choices(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    for only, words in (("cancel-abortiv", "no property named 'cancel-abortiv'"), (",", "no property given")):
        res = cli("conformance", "--serve-port", str(free_port()), "--proxy", f"127.0.0.1:{free_port()}", "--only", only,
                  "--report", str(report), timeout=30)
        assert res.returncode == 2, res.stdout + res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and CANCEL_ABORTIVE in lines[0] and "Traceback" not in res.stderr
        assert not report.exists()


def test_progress_counts_the_rows_asked_for() -> None:
    out = io.StringIO()
    show, running = progress_line(out, 2)
    running("direct", CANCEL_ABORTIVE, 10.0, 1)
    show("direct", Row(CANCEL_ABORTIVE, True, "4/4"))
    assert out.getvalue().splitlines() == [f"[direct 1/2] {CANCEL_ABORTIVE} still running (10 s, 1 calls ended)",
                                           f"[direct 1/2] {CANCEL_ABORTIVE} pass (0.0 s): 4/4"]
