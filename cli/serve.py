"""`callstate serve`: run the emulator until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import sys

from callstate.cli.options import epilog, non_negative_float, non_negative_int, outcome_mix, para, port
from callstate.script import Limits
from callstate.server.app import ServerOptions
from callstate.server.emulator import EmulatorConfig

_SERVER, _EMULATOR, _LIMITS = ServerOptions(), EmulatorConfig(), Limits()


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="run the emulator server (Emulator, Journal, health, reflection)",
                       description=para("Run the gRPC emulator. Each call follows its script: dispatch delay, then "
                                        "complete, abort with a code, fail fatally, or hold until cancelled. Every "
                                        "state entered is written to the state log as a JSON line. Stops gracefully "
                                        "on SIGINT/SIGTERM, ending every call in flight and flushing the log."),
                       epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bind", default=_SERVER.bind, help="address to listen on (default: %(default)s; "
                   "0.0.0.0 in containers)")
    p.add_argument("--port", type=port, default=_SERVER.port, help="port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--port-file", metavar="PATH", help="write the bound port here once serving (for harnesses)")
    p.add_argument("--log-file", default="-", metavar="PATH",
                   help="state log destination: a file (appended), or - for stdout (default)")
    p.add_argument("--no-state-log", action="store_true", help="do not write a state log (the journal still works)")
    p.add_argument("--journal-size", type=non_negative_int, default=_SERVER.journal_size, metavar="N",
                   help="ended calls the journal keeps in memory (default: %(default)s)")
    p.add_argument("--mix", type=outcome_mix, default=_EMULATOR.mix, metavar="MIX",
                   help="outcomes for calls without a script, e.g. complete=80,abort=10,fatal=5,hold=5 "
                        "(default: %(default)s)")
    p.add_argument("--abort-code", type=int, default=_EMULATOR.abort_code, metavar="CODE",
                   help="exception code of aborts drawn from the mix (default: %(default)s)")
    p.add_argument("--max-hold", type=non_negative_float, default=_EMULATOR.max_hold, metavar="SECONDS",
                   help="a held call ends with 1460 RPC_S_TIMEOUT after this long (default: %(default)s)")
    p.add_argument("--max-delay", type=non_negative_float, default=_LIMITS.max_delay_ms / 1000, metavar="SECONDS",
                   help="longest delay a script may ask for (default: %(default)s)")
    p.add_argument("--max-reply-bytes", type=non_negative_int, default=_LIMITS.max_reply_bytes, metavar="N",
                   help="largest reply a script may ask for (default: %(default)s)")
    p.add_argument("--max-in-flight", type=non_negative_int, default=_EMULATOR.max_in_flight, metavar="N",
                   help="calls over this many in flight get 1723 RPC_S_SERVER_TOO_BUSY (default: %(default)s)")
    p.add_argument("--log-messages", action="store_true",
                   help="pipes: also log one line per message (send_complete / receive_complete); by default "
                        "only the transitions, with message counts")
    p.add_argument("--seed", type=int, help="seed for the default mix's draws (reproducible runs)")
    p.add_argument("--grace", type=non_negative_float, default=_SERVER.grace, metavar="SECONDS",
                   help="on shutdown, how long calls in flight get before they are ended (default: %(default)s)")
    return p


def run(opts: argparse.Namespace) -> int:
    from callstate.server.app import serve

    config = EmulatorConfig(mix=opts.mix, abort_code=opts.abort_code, max_hold=opts.max_hold,
                            max_in_flight=opts.max_in_flight, seed=opts.seed, log_messages=opts.log_messages,
                            limits=Limits(max_delay_ms=int(opts.max_delay * 1000), max_reply_bytes=opts.max_reply_bytes))
    options = ServerOptions(bind=opts.bind, port=opts.port, log=None if opts.no_state_log else opts.log_file,
                            journal_size=opts.journal_size, emulator=config, grace=opts.grace)
    try:
        asyncio.run(serve(options, port_file=opts.port_file))
    except OSError as exc:
        print(f"callstate serve: {exc}", file=sys.stderr)
        return 1
    return 0
