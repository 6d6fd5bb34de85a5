"""Session 32, gateways: `callstate conformance` as a platform engineer certifying a gateway uses it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from tests.middleboxes import free_port


def test_a_gone_stdout_reader_still_gets_the_reports_written(tmp_path: Path) -> None:
    """`callstate conformance ... | head -3` in the container (PYTHONUNBUFFERED=1, the image's setting):
    the table met the gone reader before the reports were written, and the run that took minutes ended
    141 with no --report and no --junit-xml for CI. They are written whole however stdout fares."""
    port = free_port()
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    read, write = os.pipe()
    os.close(read)   # the reader has gone before the first line
    try:
        res = subprocess.run([sys.executable, "-m", "callstate", "conformance", "--serve-port", str(port),
                              "--proxy", f"127.0.0.1:{port}", "--only", "check", "--quiet",
                              "--report", str(report), "--junit-xml", str(junit)],
                             stdout=write, stderr=subprocess.PIPE, text=True, timeout=60,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        os.close(write)
    assert "Traceback" not in res.stderr, res.stderr
    data = orjson.loads(report.read_bytes())
    assert data["error"] is None and data["ok"] is True, data
    assert junit.read_text().startswith("<?xml"), "the JUnit is written too"
