"""The harness the suite itself relies on: log reading that never sees a half-written line, the
tiers, and tools/flake.sh."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson

from tests.conftest import ROOT, complete_lines, read_entries


def test_a_line_still_being_written_is_left_for_the_next_read(tmp_path: Path) -> None:
    whole = orjson.dumps({"call_id": "a", "state": "D", "event": "enter"}) + b"\n"
    assert complete_lines(whole + whole[:17]) == [whole.rstrip(b"\n")]
    log = tmp_path / "s.jsonl"
    log.write_bytes(whole + whole[:17])   # the writer is mid-line
    assert [e["call_id"] for e in read_entries(log)] == ["a"]


def test_reading_while_a_writer_appends_in_small_pieces_never_fails(tmp_path: Path) -> None:
    """A writer appending entries a few bytes at a time, the log read after every piece: every
    read parses, and sees exactly the entries whose newline is written."""
    log = tmp_path / "s.jsonl"
    log.touch()
    with open(log, "ab", buffering=0) as f:
        for i in range(50):
            line = orjson.dumps({"call_id": f"c{i}", "state": "D", "event": "enter"}) + b"\n"
            for k in range(0, len(line), 7):
                f.write(line[k:k + 7])
                done = k + 7 >= len(line)
                assert len(read_entries(log)) == i + done   # raised JSONDecodeError mid-line before


def test_every_test_has_one_tier_and_the_unit_tier_starts_no_server() -> None:
    res = subprocess.run([str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else "python3",
                          "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "unit",
                          str(ROOT / "tests")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    unit = [line for line in res.stdout.splitlines() if "::" in line]
    assert unit, res.stdout[-2000:] + res.stderr[-2000:]
    assert not any("test_conformance.py" in t for t in unit), "gateway tests are not unit tests"
    assert "tests/test_lifecycle.py::test_mermaid_diagrams_match_the_tables" in unit or \
        any(t.startswith("tests/test_lifecycle.py::") for t in unit)
    assert not any("test_pipes_e2e.py" in t and "shared" in t for t in unit)


def test_flake_sh_refuses_a_bad_count() -> None:
    res = subprocess.run(["bash", str(ROOT / "tools/flake.sh"), "zero"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "usage: tools/flake.sh" in res.stderr
