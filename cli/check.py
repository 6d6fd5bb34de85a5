"""`callstate check`: verify both sides' state logs."""

from __future__ import annotations

import argparse
import sys

from callstate.cli.options import para


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("check", help="verify client and server state logs (the lifecycle invariants)",
                       description=para("Read client and server JSON-lines state logs (any number, any order), join "
                                        "them by call id and verify: legal transitions on each side (the same tables "
                                        "the server and client use), End exactly once and nothing after it, each "
                                        "side's final code fits its own path, and the client's final code agrees "
                                        "with the server's outcome. A last line cut short (a writer killed "
                                        "mid-line, a full disk) is reported as a warning and the complete lines are "
                                        "checked. Exit status 1 on any violation, 2 when a file cannot be read or is "
                                        "not a regular file."))
    p.add_argument("logs", nargs="+", metavar="LOG", help="state log files (JSON lines)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--allow-one-side", action="store_true",
                   help="judge logs that hold only one side (a client driving a server that is not callstate) on "
                        "that side alone; without it such logs fail (exit 1): the other side is unknown")
    return p


def run(opts: argparse.Namespace) -> int:
    import orjson

    from callstate.check import check_files
    from callstate.statelog import LogFormatError

    try:
        report = check_files(opts.logs, warn=lambda text: print(f"callstate check: warning: {text}", file=sys.stderr))
    except (OSError, LogFormatError) as exc:
        print(f"callstate check: {exc}", file=sys.stderr)
        return 2
    print(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode() if opts.json else report.summary())
    if not report.entries:
        print(f"callstate check: nothing was checked: no entries in {', '.join(opts.logs)}", file=sys.stderr)
        return 1
    if report.one_sided and not opts.allow_one_side:
        print(f"callstate check: only the {report.one_sided} side is logged: pass --allow-one-side to judge it "
              "alone, or add the other side's log", file=sys.stderr)
        return 1
    return 0 if report.ok else 1
