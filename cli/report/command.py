"""`callstate report`: an HTML report of a run from any state logs (both sides, any order)."""

from __future__ import annotations

import argparse
import sys

import orjson

from callstate.cli import COMMANDS
from callstate.check import counted
from callstate.cli.check import LOGS_HELP, log_paths
from callstate.cli.options import para
from callstate.cli.outputs import output_problem
from callstate.files import error_text, write_atomically
from callstate.statelog import LogFormatError

# run()'s extension modules load with this module, while main() defers Ctrl-C (cli/check.py).


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("report", help=COMMANDS["report"].help,
                       description=para("Read client and server JSON-lines state logs (any number, any order), check "
                                        "them with the same rules as `callstate check`, and write one self-contained "
                                        "HTML file that opens offline: latency distribution per final code, calls in "
                                        "flight and cancels over time, cancel propagation, counts per path on each "
                                        "side, the invariant check, and for each violation kind an example call with "
                                        "both sides' histories. Exit status 1 when an invariant fails or nothing could "
                                        "be judged (no entries, or one side only without --allow-one-side; the "
                                        "report is still written), 2 when a file cannot be read or written."),
                       epilog="example:\n  callstate report client.jsonl server.jsonl --html report.html",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", metavar="LOG", help=LOGS_HELP)
    p.add_argument("--html", required=True, metavar="OUT.html", help="where to write the report")
    p.add_argument("--title", default="callstate run", help="the report's title (default: %(default)s)")
    p.add_argument("--json", metavar="OUT.json", help="also write the report's data as JSON")
    p.add_argument("--allow-one-side", action="store_true",
                   help="judge logs that hold one side only (a server that is not callstate) as `callstate check "
                        "--allow-one-side` does; without it such logs are written up but not judged (exit 1)")
    return p


def run(opts: argparse.Namespace) -> int:
    from callstate.cli.report import html_report
    from callstate.cli.report.run_report import FAILED, NOT_JUDGED, build_from_files

    if why := html_report.available():
        print(f"callstate report: {why}", file=sys.stderr)
        return 2
    try:
        logs = log_paths(opts.logs)
        if why := output_problem((opts.html, opts.json), (("--html", opts.html), ("--json", opts.json)),
                                 [("the log", log) for log in logs]):
            raise OSError(why)   # fail before reading, not after: nothing is created or emptied, no log overwritten
        report = build_from_files(logs, warn=lambda text: print(f"callstate report: warning: {text}", file=sys.stderr),
                                  title=opts.title, allow_one_side=opts.allow_one_side)
        html_report.write(report, opts.html)
        if opts.json:
            write_atomically(opts.json, orjson.dumps(report, option=orjson.OPT_INDENT_2))
    except (OSError, LogFormatError) as exc:
        print(f"callstate report: {error_text(exc)}", file=sys.stderr)
        return 2
    check = report["check"]
    verdict = check["verdict"]   # the page's: the checker's own rule, as `callstate check` applies it
    if verdict == FAILED:
        verdict += f" ({counted(check['violations'], 'violation')})"
    elif verdict == NOT_JUDGED:
        verdict += f" ({check['why']})"
    print(f"{opts.html}: {counted(report['calls'], 'call')}, check {verdict}")
    return 0 if check["ok"] else 1
