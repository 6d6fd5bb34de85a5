"""`callstate`: the command-line applications, one module (or room) per command.

`COMMANDS` names each command's module and its one-line help; a command's module is imported
only when that command runs (or its help is asked for), so importing this package loads none.
Each command module has `add_parser(subparsers)` and `run(options) -> exit status`.

This module imports little (no grpc, no protobuf, nothing of callstate's): the console script
imports it before `main` can catch a Ctrl-C, so whatever loads here is a window in which Ctrl-C
prints a KeyboardInterrupt traceback. Everything else loads inside `main`.
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
import contextlib  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402
from typing import Collection, Iterator, NamedTuple, NoReturn, Sequence  # noqa: E402

from callstate import __version__  # noqa: E402


class Command(NamedTuple):
    module: str   # imported when the command runs
    help: str     # its line in `callstate --help` (the module's parser uses it too)


COMMANDS: dict[str, Command] = {   # in the order `callstate --help` lists them
    "serve": Command("callstate.cli.serve", "run the emulator server (Emulator, Journal, health, reflection)"),
    "call": Command("callstate.cli.call", "make one scripted call, printing each client state as it is entered"),
    "watch": Command("callstate.cli.watch", "follow the server's journal live"),
    "health": Command("callstate.cli.health", "ask the server's gRPC health service (exit 0 when SERVING)"),
    "load": Command("callstate.cli.load.command", "load-test the cancellation paths and verify both sides' lifecycles"),
    "check": Command("callstate.cli.check", "verify client and server state logs (the lifecycle invariants)"),
    "report": Command("callstate.cli.report.command",
                      "write an HTML report of a run from client and server state logs"),
    "conformance": Command("callstate.cli.conformance.command",
                           "test a gRPC proxy: does it keep every call's lifecycle? (direct vs proxied)"),
}


class OneLineErrors(argparse.ArgumentParser):
    """Bad usage is one line naming the option (and where to look), not the whole usage text.
    No abbreviations: `--outcom` is refused rather than taken for `--outcome` (a later option
    sharing the prefix would silently change what an old command line means)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)   # the subcommands' parsers are of this class too
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> "NoReturn":
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(load: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every command listed; the commands named in `load` (all by default)
    have their full parsers, the others only their line of help."""
    from callstate.cli.options import epilog, para

    parser = OneLineErrors(
        prog="callstate",
        description=para("Emulate the MS-RPC asynchronous call lifecycle over gRPC: a scripted server, "
                         "scripted calls, a load generator and a checker for both sides' state logs."),
        epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"callstate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        if load is None or name in load:
            module = importlib.import_module(command.module)
            module.add_parser(sub).set_defaults(run=module.run)
        else:
            sub.add_parser(name, help=command.help, add_help=False)
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command's parser by name."""
    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # type: ignore[return-value]


def command_named(argv: Sequence[str]) -> str | None:
    """The command a command line runs: its first word that is not an option (the top level's
    options, --help and --version, take no value)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    # Ctrl-C before a command handles it itself (while its modules import, say: grpc and
    # protobuf take a moment, seconds on a busy machine) is an interrupted command too: exit
    # 130, not a KeyboardInterrupt traceback. What a command has recorded is kept: its state
    # log is flushed and closed by its own `finally` or at exit (callstate.logfile).
    try:
        with _interrupt_deferred() as interrupted:
            argv = sys.argv[1:] if argv is None else list(argv)
            parser = build_parser(load={command_named(argv)} & COMMANDS.keys())
            opts, extras = parser.parse_known_args(argv)
            if extras:   # argparse would blame the top parser: point at the command's own help instead
                subcommands(parser)[opts.command].error(f"unrecognized arguments: {' '.join(extras)}")
        if interrupted:
            return 130
        return int(opts.run(opts) or 0)
    except KeyboardInterrupt:
        return 130


@contextlib.contextmanager
def _interrupt_deferred() -> Iterator[list[int]]:
    """While the command's modules load, Ctrl-C is noted (in the list yielded), not raised: a
    KeyboardInterrupt raised inside an extension module's initialisation (protobuf's, orjson's,
    _ssl's) can crash the interpreter (SIGSEGV) or come out as an ImportError. Outside the main
    thread (main() called by a test, say) there is no handler to change."""
    import signal

    noted: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, _frame: noted.append(signum))
    except ValueError:   # not the main thread
        yield noted
        return
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, previous)
