"""The top-level parser: every command listed (only the one that runs loaded), and usage
errors in one line that point at the command's own help."""

from __future__ import annotations

import argparse
import importlib
from typing import TYPE_CHECKING, Any, Collection, Mapping, NoReturn

from callstate import __version__
from callstate.cli.options import epilog, para

if TYPE_CHECKING:
    from callstate.cli import Command


class OneLineErrors(argparse.ArgumentParser):
    """Bad usage is one line naming the option (and where to look), not the whole usage text.
    No abbreviations: `--outcom` is refused rather than taken for `--outcome` (a later option
    sharing the prefix would silently change what an old command line means)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)   # the subcommands' parsers are of this class too
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> "NoReturn":
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    # What the command line gave, apart from the defaults (`given_dests` on the namespace): an
    # option typed at its default value (`call --messages 3` without --pipe) is as out of place
    # as any other value, and a check comparing values with the defaults cannot see it.
    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._taken: set[str] = set()
        opts, extras = super().parse_known_args(args, namespace)
        opts.given_dests = frozenset(self._taken | getattr(opts, "given_dests", frozenset()))
        return opts, extras

    def _get_values(self, action: argparse.Action, arg_strings: Any) -> Any:
        self._taken.add(action.dest)   # argparse converts each argument it takes here, never a default
        return super()._get_values(action, arg_strings)


def build_parser(commands: "Mapping[str, Command]", load: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every command listed (callstate.cli.COMMANDS, passed in: that package
    imports this module); the commands named in `load` (all by default) have their full
    parsers, the others only their line of help."""
    parser = OneLineErrors(
        prog="callstate",
        description=para("Emulate the MS-RPC asynchronous call lifecycle over gRPC: a scripted server, "
                         "scripted calls, a load generator and a checker for both sides' state logs."),
        epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"callstate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in commands.items():
        if load is None or name in load:
            module = importlib.import_module(command.module)
            module.add_parser(sub).set_defaults(run=module.run)
        else:
            sub.add_parser(name, help=command.help, add_help=False)
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command's parser by name."""
    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # type: ignore[return-value]
