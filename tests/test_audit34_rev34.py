"""Review of session 34's change (rev34): what the merged features still got wrong, each with the
case that showed it."""

from __future__ import annotations

from callstate.cli.conformance.properties import COMPLETE_SMALL, GRACEFUL_STOP, Row
from callstate.cli.conformance.report import DIRECT, PROXY, holds, to_json


def test_a_conformance_report_that_tested_nothing_is_not_ok() -> None:
    """`--only graceful-stop` with `--server`: every row skipped, NOT TESTED, exit 1; the --report
    JSON still said `"ok": true`, so a CI step that reads the report (not the exit status) went green
    on a run that measured nothing. `ok` is now what the exit status says, as `callstate check
    --json` says `"ok": false` on logs it could not judge."""
    skipped = {path: [Row(GRACEFUL_STOP, None, note="skipped: only with --serve-port")] for path in (DIRECT, PROXY)}
    assert not holds(skipped)
    assert to_json(skipped, "p:1", "s:2", {}, 1.0)["ok"] is False
    tested = {DIRECT: [Row(COMPLETE_SMALL, True, "4/4")], PROXY: [Row(COMPLETE_SMALL, True, "4/4"),
                                                               Row(GRACEFUL_STOP, None, note="skipped")]}
    assert to_json(tested, "p:1", "s:2", {}, 1.0)["ok"] is True   # one row tested, none failed: OK
    assert to_json(tested, "p:1", "s:2", {}, 1.0, "interrupted by SIGINT before the run ended")["ok"] is False
