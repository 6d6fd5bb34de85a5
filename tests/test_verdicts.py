"""What the commands print agrees with how they exit: a summary never says OK where the command
fails, a run of nothing is refused, and the paths a load reports are the ones the user asked for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from callstate.statelog import parse_log
from tests.conftest import ServerProcess, cli


@pytest.fixture(scope="module")
def client_log(shared_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One call's client log alone: a side whose other half is not given."""
    log = tmp_path_factory.mktemp("verdicts") / "client.jsonl"
    done = cli("call", "--target", shared_server.target, "--outcome", "abort", "--log-file", str(log))
    assert done.returncode == 1 and log.stat().st_size > 0, done.stdout + done.stderr   # exit 1: it aborted
    return log


def test_check_of_an_empty_log_says_nothing_was_judged(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    done = cli("check", str(empty))
    assert done.returncode == 1
    assert "NOT JUDGED: nothing was checked" in done.stdout and "OK" not in done.stdout, done.stdout
    assert "()" not in done.stdout   # no empty list of sides
    as_json = json.loads(cli("check", "--json", str(empty)).stdout)
    assert as_json["ok"] is False and as_json["not_judged"].startswith("nothing was checked")


def test_check_of_one_side_says_not_judged_unless_asked(client_log: Path) -> None:
    done = cli("check", str(client_log))
    assert done.returncode == 1 and "NOT JUDGED: only the client side is logged" in done.stdout, done.stdout
    assert "OK" not in done.stdout and "--allow-one-side" in done.stderr
    assert json.loads(cli("check", "--json", str(client_log)).stdout)["ok"] is False
    allowed = cli("check", "--allow-one-side", str(client_log))
    assert allowed.returncode == 0 and "OK: every invariant holds on the client side" in allowed.stdout
    assert json.loads(cli("check", "--json", "--allow-one-side", str(client_log)).stdout)["ok"] is True


def test_report_judges_as_check_does(client_log: Path, tmp_path: Path) -> None:
    pytest.importorskip("jinja2", reason="the report extra (jinja2) is not installed")
    html = tmp_path / "one.html"
    done = cli("report", str(client_log), "--html", str(html))
    assert done.returncode == 1 and "check NOT JUDGED (only the client side is logged" in done.stdout, done.stdout
    assert html.stat().st_size > 0   # written all the same
    allowed = cli("report", str(client_log), "--html", str(html), "--allow-one-side")
    assert allowed.returncode == 0 and "check OK" in allowed.stdout, allowed.stdout
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    nothing = cli("report", str(empty), "--html", str(tmp_path / "e.html"))
    assert nothing.returncode == 1 and "NOT JUDGED (nothing was checked" in nothing.stdout, nothing.stdout


@pytest.mark.parametrize("args", [("load", "--calls", "0"), ("watch", "--count", "0")], ids=" ".join)
def test_a_count_of_zero_is_a_usage_error(args: tuple[str, ...], refused_target: str) -> None:
    done = cli(*args, "--target", refused_target)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert args[1] in done.stderr and "Traceback" not in done.stderr


def test_a_unary_cancel_at_names_the_flags_that_apply(refused_target: str) -> None:
    done = cli("call", "--target", refused_target, "--cancel-at", "before-start")
    assert done.returncode == 2 and done.stderr.startswith("callstate call: error: --cancel-at"), done.stderr
    assert "--cancel-after" in done.stderr and "callstate call --help" in done.stderr


def test_held_calls_ended_after_hold_for_are_counted_apart_from_the_cancels_asked_for(
        shared_server: ServerProcess, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    done = cli("load", "--target", shared_server.target, "--calls", "20", "--mix", "hold=50,complete=50",
               "--cancel", "none", "--hold-for", "0.05", "--seed", "3", "--report", str(report), "--progress", "never",
               timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    paths = json.loads(report.read_text())["paths"]
    assert paths["hold-for"] == paths["hold"] > 0, paths
    assert not any(p.startswith("cancel-") for p in paths), paths   # no cancel was asked for


def test_a_cut_line_warning_counts_its_lines_in_good_english() -> None:
    warnings: list[str] = []
    good = (b'{"ts": "2026-12-04T10:00:00.000001Z", "side": "client", "call_id": "x", "state": "C", '
            b'"prev": null, "event": "enter", "move": "call"}\n')
    list(parse_log([good, b'{"ts": "2026-12'], "log", warnings.append))
    assert warnings and "the 1 line before it is checked" in warnings[0], warnings
