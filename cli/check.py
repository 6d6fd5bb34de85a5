"""`callstate check`: verify both sides' state logs."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import orjson

from callstate.cli import COMMANDS
from callstate.cli.live.view import MODES
from callstate.cli.options import para
from callstate.cli.terminal import printable
from callstate.files import error_text
from callstate.logfile import ReadProgress, check_files
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
                                        "appended to, is reported as a warning (on stderr, and in --json's "
                                        "warnings) and the complete lines are checked. A gzip'd log is read as it "
                                        "is. Not judged (NOT JUDGED, exit 1, with the one reason): call ids a later "
                                        "call used again once the first had ended (runs appended to the same logs), "
                                        "and calls that look unended in a log still being written (it grew while "
                                        "read, or a process, even a stopped one, has it open for writing). Exit status 1 on any violation or when nothing could be judged (no "
                                        "entries, or one side only without --allow-one-side), 2 when a file cannot "
                                        "be read, is not a regular file or holds a line that is not a state entry. "
                                        "The logs are read together, merged by time, and a call is judged and "
                                        "dropped 10 s of log time after both its sides ended (310 s when one side "
                                        "only logged it: the other side may come as late as the clock skew allowed), "
                                        "so memory follows the calls of the last minutes, not the run's length: "
                                        "about 2 KB per call held, e.g. some 450 MB for a soak at 3,000 calls/s "
                                        "(a fifth of them cancelled before the server saw them), plus about 70 "
                                        "bytes per call judged (its id's hash, so that a late entry of a call "
                                        "already judged is still a violation): 0.7 GB more for 10 million calls."))
    p.add_argument("logs", nargs="+", metavar="LOG", help=LOGS_HELP)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--allow-one-side", action="store_true",
                   help="judge logs that hold only one side (a client driving a server that is not callstate) on "
                        "that side alone; without it such logs fail (exit 1): the other side is unknown")
    p.add_argument("--progress", choices=MODES, default="auto",
                   help="while long logs are read, a line on stderr every few seconds: how much of the logs is "
                        "read, calls judged. auto: when stderr is a terminal; always: also when it is not; never: "
                        "none. Default: %(default)s")
    return p


PROGRESS_S = 2.0   # the first progress line after this long reading, then one as often


class Progress:
    """`check_files`'s progress as lines on stderr, the first once reading has taken PROGRESS_S."""

    def __init__(self) -> None:
        self.next = time.monotonic() + PROGRESS_S

    def __call__(self, p: ReadProgress) -> None:
        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + PROGRESS_S
        share = f" ({100 * p.bytes_read / p.bytes_total:.0f}%)" if p.bytes_total else ""
        print(f"callstate check: read {p.bytes_read / 1e6:.1f} of {p.bytes_total / 1e6:.1f} MB{share}, "
              f"{p.entries} entries; {p.calls_judged} calls judged, {p.calls_held} held", file=sys.stderr, flush=True)


def progress_of(mode: str) -> Progress | None:
    """The progress lines a --progress mode asks for (auto: only on a terminal)."""
    return Progress() if mode == "always" or (mode == "auto" and sys.stderr.isatty()) else None


LOGS_HELP = ("state log files (JSON lines, gzip'd or not), or folders of them (their *.jsonl and *.jsonl.gz "
             "files, and logrotate's numbered ones: *.jsonl.1, *.jsonl.2.gz, ...): e.g. one client log and the "
             "server logs of every replica behind a balancer")
# A folder's state logs: x.jsonl, x.jsonl.gz, and the numbered ones logrotate leaves beside them
# (x.jsonl.1, x.jsonl.2.gz): a call's entries may be split over a log and its rotated part.
LOG_NAME = re.compile(r"\.jsonl(\.\d+)?(\.gz)?\Z")


def log_paths(args: list[str]) -> list[Path]:
    """The LOG arguments with each folder replaced by its logs (sorted); OSError naming
    a folder that holds none, so a wrong folder is never checked as an empty run."""
    paths: list[Path] = []
    for arg in map(Path, args):
        if str(arg) == "-" and not arg.exists():   # was "-: No such file or directory", as if a file were missing
            raise OSError("-: standard input is not read (logs are read as regular files only): save the stream "
                          "to a file and give its name")
        if arg.is_dir():
            try:   # Path.glob would take a folder it may not list for one with no log in it
                names = os.listdir(arg)
            except OSError as exc:
                raise OSError(f"{arg}: the folder cannot be read ({exc.strerror or exc})") from None
            found = sorted(p for p in map(arg.joinpath, names) if LOG_NAME.search(p.name) and p.is_file())
            if not found:
                raise OSError(f"{arg}: a folder with no state log in it (no *.jsonl or *.jsonl.gz file)")
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
        report = check_files(log_paths(opts.logs), warn=lambda text: print(f"callstate check: warning: {text}", file=sys.stderr),
                             progress=progress_of(opts.progress))
    except (OSError, LogFormatError) as exc:
        print(f"callstate check: {error_text(exc)}", file=sys.stderr)
        return 2
    allow = opts.allow_one_side
    text = (orjson.dumps(report.to_json(allow), option=orjson.OPT_INDENT_2).decode() if opts.json
            else report.summary(allow))
    # call ids and messages are the logs' text: a control character in one (ESC) would act on the terminal
    print("\n".join(map(printable, text.split("\n"))))
    if (why := report.shown_not_judged(allow)) is not None:
        where = f" in {', '.join(opts.logs)}" if not report.entries else ""
        print(f"callstate check: {why}{where}", file=sys.stderr)
    return 0 if report.verdict_ok(allow) else 1
