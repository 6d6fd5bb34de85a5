"""`callstate check`: verify both sides' state logs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import orjson

from callstate.cli import COMMANDS
from callstate.cli.options import para
from callstate.cli.terminal import printable
from callstate.logfile import check_files
from callstate.statelog import LogFormatError

# What run() needs is imported here, with the module: main() defers Ctrl-C while a command's
# module loads, and an extension module's initialisation (orjson's) interrupted by a
# KeyboardInterrupt can crash the interpreter.


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("check", help=COMMANDS["check"].help,
                       description=para("Read client and server JSON-lines state logs (any number, any order), join "
                                        "them by call id and verify: legal transitions on each side (the same tables "
                                        "the server and client use), End exactly once and nothing after it, each "
                                        "side's final code fits its own path, and the client's final code agrees "
                                        "with the server's outcome. A last line cut short (a writer killed "
                                        "mid-line, a full disk), or such a line inside a log a restarted writer "
                                        "appended to, is reported as a warning and the complete lines are "
                                        "checked. Exit status 1 on any violation or when nothing could be judged (no "
                                        "entries, or one side only without --allow-one-side), 2 when a file cannot "
                                        "be read, is not a regular file or holds a line that is not a state entry."))
    p.add_argument("logs", nargs="+", metavar="LOG", help=LOGS_HELP)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--allow-one-side", action="store_true",
                   help="judge logs that hold only one side (a client driving a server that is not callstate) on "
                        "that side alone; without it such logs fail (exit 1): the other side is unknown")
    return p


LOGS_HELP = ("state log files (JSON lines), or folders of them (their *.jsonl files): e.g. one client log and "
             "the server logs of every replica behind a balancer")


def log_paths(args: list[str]) -> list[Path]:
    """The LOG arguments with each folder replaced by its *.jsonl files (sorted); OSError naming
    a folder that holds none, so a wrong folder is never checked as an empty run."""
    paths: list[Path] = []
    for arg in map(Path, args):
        if arg.is_dir():
            try:   # Path.glob would take a folder it may not list for one with no log in it
                names = os.listdir(arg)
            except OSError as exc:
                raise OSError(f"{arg}: the folder cannot be read ({exc.strerror or exc})") from None
            found = sorted(p for p in map(arg.joinpath, names) if p.name.endswith(".jsonl") and p.is_file())
            if not found:
                raise OSError(f"{arg}: a folder with no state log in it (no *.jsonl file)")
            paths += found
        else:
            paths.append(arg)
    unique: dict[object, Path] = {}
    for path in paths:
        unique.setdefault(_identity(path), path)
    return list(unique.values())


def _identity(path: Path) -> object:
    """What names one file however it is written: a log given twice (a folder and one of its
    files, or ./x and x) is read once; read twice, every call in it would end twice."""
    try:
        st = path.stat()
    except OSError:   # it cannot be read: the reader names it as given
        return path
    return st.st_dev, st.st_ino


def run(opts: argparse.Namespace) -> int:
    try:
        report = check_files(log_paths(opts.logs), warn=lambda text: print(f"callstate check: warning: {text}", file=sys.stderr))
    except (OSError, LogFormatError) as exc:
        print(f"callstate check: {exc}", file=sys.stderr)
        return 2
    allow = opts.allow_one_side
    text = (orjson.dumps(report.to_json(allow), option=orjson.OPT_INDENT_2).decode() if opts.json
            else report.summary(allow))
    # call ids and messages are the logs' text: a control character in one (ESC) would act on the terminal
    print("\n".join(map(printable, text.split("\n"))))
    if report.ok and (why := report.not_judged(allow)) is not None:
        where = f" in {', '.join(opts.logs)}" if not report.entries else ""
        print(f"callstate check: {why}{where}", file=sys.stderr)
    return 0 if report.verdict_ok(allow) else 1
