"""`callstate`: the command-line applications, one module per command.

Each command module has `add_parser(subparsers)` and `run(options) -> exit status`.
"""

from __future__ import annotations

import os

# grpc's C core logs failed TLS handshakes, ports it could not bind and the like on stderr,
# and now and then an epoll error as the interpreter closes its files at exit (seen under load
# after `check /dev/zero` had printed its one line): the commands report every failure
# themselves, in one line, so the core's lines are off (GRPC_VERBOSITY=ERROR or INFO brings
# them back).
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import argparse  # noqa: E402
from typing import NoReturn, Sequence  # noqa: E402

from callstate import __version__  # noqa: E402
from callstate.cli import call, check, health, serve, watch  # noqa: E402
from callstate.cli.conformance import command as conformance  # noqa: E402
from callstate.cli.load import command as load  # noqa: E402
from callstate.cli.report import command as report  # noqa: E402
from callstate.cli.options import epilog, para  # noqa: E402

COMMANDS = (serve, call, watch, health, load, check, report, conformance)


class OneLineErrors(argparse.ArgumentParser):
    """Bad usage is one line naming the option (and where to look), not the whole usage text.
    No abbreviations: `--outcom` is refused rather than taken for `--outcome` (a later option
    sharing the prefix would silently change what an old command line means)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)   # the subcommands' parsers are of this class too
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> "NoReturn":
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="callstate",
        description=para("Emulate the MS-RPC asynchronous call lifecycle over gRPC: a scripted server, "
                         "scripted calls, a load generator and a checker for both sides' state logs."),
        epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"callstate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(run=command.run)
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command's parser by name."""
    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    opts, extras = parser.parse_known_args(argv)
    if extras:   # argparse would blame the top parser: point at the command's own help instead
        subcommands(parser)[opts.command].error(f"unrecognized arguments: {' '.join(extras)}")
    try:
        return int(opts.run(opts) or 0)
    except KeyboardInterrupt:
        return 130
