"""`callstate`: the command-line applications, one module (or room) per command.

`COMMANDS` names each command's module and its one-line help; a command's module is imported
only when that command runs (or its help is asked for), so importing this package loads none.
Each command module has `add_parser(subparsers)` and `run(options) -> exit status`.

This module imports os and sys only (not even argparse or typing: the parser is in
callstate.cli.parser): the console script imports it before `main` can catch a Ctrl-C, so
whatever loads here is a window in which Ctrl-C prints a KeyboardInterrupt traceback.
Everything else loads inside `main`.
"""

from __future__ import annotations

import os

# grpc's C core logs failed TLS handshakes, ports it could not bind and the like on stderr,
# and now and then an epoll error as the interpreter closes its files at exit (seen under load
# after `check /dev/zero` had printed its one line): the commands report every failure
# themselves, in one line, so the core's lines are off (GRPC_VERBOSITY=ERROR or INFO brings
# them back).
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import sys  # noqa: E402

TYPE_CHECKING = False   # typing itself is not loaded here (the module's docstring says why)
if TYPE_CHECKING:
    import argparse
    from typing import Collection, Sequence


class Command:
    """A command: its module, imported when the command runs, and its line in `callstate
    --help` (the module's parser uses it too)."""

    __slots__ = ("module", "help")

    def __init__(self, module: str, help: str) -> None:
        self.module, self.help = module, help


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


# The commands that catch Ctrl-C themselves once started (serve keeps the early handler instead, until
# its own): started with SIGINT ignored (a script's background job), they get Python's handler, not the
# ignored one, for the moment between the loading and their own handler; a Ctrl-C or `kill -INT` there
# was lost, and the command then caught every later one (a call held on after it, until killed).
CATCH_INTERRUPT = frozenset({"call", "watch", "load", "conformance"})


def build_parser(load: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every command listed (callstate.cli.parser); the commands named in
    `load` (all by default) have their full parsers, the others only their line of help."""
    from callstate.cli import parser

    return parser.build_parser(COMMANDS, load)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command's parser by name."""
    from callstate.cli.parser import subcommands

    return subcommands(parser)


def command_named(argv: Sequence[str]) -> str | None:
    """The command a command line runs: its first word that is not an option (the top level's
    options, --help and --version, take no value)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _tolerant_output() -> None:
    """A terminal or pipe that cannot show a character (PYTHONIOENCODING=ascii, LANG=C on an
    old Python) gets it escaped: an em dash in a summary must not cost the run its report."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and hasattr(stream, "reconfigure") and stream.errors == "strict":
            stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # First of all, before any module of the command loads: a signal from here on is noted, never
    # lost. A shell starts a background job (`callstate serve &`) with SIGINT ignored, and Python
    # then installs no handler of its own: without this one the server ignored a Ctrl-C / `kill
    # -INT` until it had started serving. `serve` keeps its handler (SIGTERM and SIGHUP too) until
    # the server installs its own, which then stops it gracefully (callstate.cli.serve).
    early = _DeferredInterrupt(keep=command_named(argv) == "serve", catches=command_named(argv) in CATCH_INTERRUPT)
    _tolerant_output()
    # Ctrl-C before a command handles it itself (while its modules import, say: grpc and
    # protobuf take a moment, seconds on a busy machine) is an interrupted command too: exit
    # 130, not a KeyboardInterrupt traceback. What a command has recorded is kept: its state
    # log is flushed and closed by its own `finally` or at exit (callstate.logfile).
    try:
        with early as interrupted:
            parser = build_parser(load={command_named(argv)} & COMMANDS.keys())
            opts, extras = parser.parse_known_args(argv)
            if extras:   # argparse would blame the top parser: point at the command's own help instead
                subcommands(parser)[opts.command].error(f"unrecognized arguments: {' '.join(extras)}")
        if interrupted:
            return 128 + interrupted[0]
        opts.early_signals = interrupted   # signals noted from now on, while `serve` starts
        status = int(opts.run(opts) or 0)
        # stdout to a pipe or file is block-buffered: a reader gone by now (`| head`) is met
        # here, not by the flush at exit, which would print a traceback and exit 120
        if sys.stdout is not None:
            sys.stdout.flush()
        return status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:   # stdout's reader went away (`| head`): no traceback; exit as SIGPIPE would
        from callstate.cli.terminal import stdout_gone

        stdout_gone()   # the flush at exit would raise it again
        return 128 + 13
    finally:
        # however it ends (run, refused at parse time, interrupted while loading): main() run in a
        # process that goes on (a test) must not leave `serve`'s handlers noting its Ctrl-C
        early.release()


class _DeferredInterrupt:
    """While the command's modules load, Ctrl-C is noted (`noted`), not raised: a
    KeyboardInterrupt raised inside an extension module's initialisation (protobuf's, orjson's,
    _ssl's) can crash the interpreter (SIGSEGV) or come out as an ImportError. Outside the main
    thread (main() called by a test, say) there is no handler to change. Installed when made.

    `keep` (serve): SIGTERM and SIGHUP (unless ignored: nohup) are noted too, and the handlers
    stay after the block, until the command installs its own (the server's event loop does).
    `catches` (a command that catches SIGINT once started): an ignored SIGINT is given back as
    Python's default handler when the command goes on to run, so one that comes before the
    command's own handler is an interrupt too (refused or interrupted: the handler found). A command
    with neither keeps an ignored SIGINT ignored, loading included."""

    def __init__(self, keep: bool = False, catches: bool = False) -> None:
        import signal

        self.noted: list[int] = []
        self.keep, self.catches = keep, catches
        self.previous: dict[int, object] = {}
        hangup = getattr(signal, "SIGHUP", None)
        # A command that never catches Ctrl-C (check, report, health) started with SIGINT ignored (a
        # script's background job) ignores it while it loads too: noted, it ended the command with 130
        # in that moment only, and the background job was meant to survive the terminal's Ctrl-C.
        ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signals = [] if ignored and not (keep or catches) else [signal.SIGINT]
        if keep:
            signals.append(signal.SIGTERM)
            if hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN:
                signals.append(hangup)
        for sig in signals:
            try:
                self.previous[sig] = signal.signal(sig, self._note)
            except ValueError:   # not the main thread
                break

    def _note(self, signum: int, _frame: object) -> None:
        self.noted.append(signum)

    def __enter__(self) -> list[int]:
        return self.noted

    def __exit__(self, failed: object, *_: object) -> None:
        if not self.keep:
            self.release(runs=self.catches and failed is None and not self.noted)

    def release(self, runs: bool = False) -> None:
        """Put back the handlers found, where this one is still in place (the command's own stay);
        `runs`: the command that catches SIGINT runs now, and an ignored SIGINT comes back as Python's;
        after the run (main()'s last call), Python's handler in place of an ignored SIGINT goes again."""
        import signal

        for sig, previous in self.previous.items():   # None: a handler not set from Python, which SIG_DFL stands for
            current = signal.getsignal(sig)
            if sig == signal.SIGINT and previous == signal.SIG_IGN:
                if runs:
                    previous = signal.default_int_handler
                elif current is signal.default_int_handler:
                    # the run is over: Python's handler, given for it (or left by its event loop, which
                    # puts Python's back, never an ignored one), goes; main() run in a process that goes
                    # on (a test, pytest as a script's background job) keeps its ignored SIGINT
                    current = self._note
            if current == self._note:
                signal.signal(sig, signal.SIG_DFL if previous is None else previous)  # type: ignore[arg-type]
