"""`callstate serve`: run the emulator until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Callable

from callstate.cli import COMMANDS
from callstate.cli.observe_options import (METRICS_BIND, add_metrics, add_otel, metrics_options_unused, shutdown_tracing,
                                           tracer_provider)
from callstate.cli.outputs import clash, gzipped_log
from callstate.cli.standin_options import add_standin, load_standin
from callstate.arg_types import bounded_int, non_negative_float, non_negative_int, outcome_mix, positive_float
from callstate.cli.options import abort_code, add_keepalive, env_token, epilog, para, pem_file, port, token
from callstate.cli.options import env_secret
from callstate.lifecycle import CLIENT
from callstate.script import ABORT_CODE_RULE, GRPC_MAX_RECEIVE, LONGEST_CALL_ID, REPLY_FRAMING, Limits
from callstate.wire import METRICS_TOKEN_ENV, TOKEN_ENV
from callstate.server.app import ServerOptions
from callstate.server.emulator import EmulatorConfig

_SERVER, _EMULATOR, _LIMITS = ServerOptions(), EmulatorConfig(), Limits()


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help=COMMANDS["serve"].help,
                       description=para("Run the gRPC emulator. Each call follows its script: dispatch delay, then "
                                        "complete, abort with a code, fail fatally, or hold until cancelled. Every "
                                        "state entered is written to the state log as a JSON line. Stops gracefully "
                                        "on SIGINT/SIGTERM (and SIGHUP unless nohup ignores it), ending every call "
                                        "in flight and flushing the log."),
                       epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bind", default=_SERVER.bind, help="address to listen on (default: %(default)s; "
                   "0.0.0.0 in containers)")
    p.add_argument("--port", type=port, default=_SERVER.port, help="port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--port-file", metavar="PATH", help="write the bound port here once serving (for harnesses)")
    state_log = p.add_mutually_exclusive_group()   # a log not written has no destination: both is a usage error
    # no default of its own: given at all (even as -), it is refused beside --no-state-log
    state_log.add_argument("--log-file", metavar="PATH",
                           help="state log destination: a file (appended), or - for stdout (default)")
    state_log.add_argument("--no-state-log", action="store_true",
                           help="do not write a state log (the journal still works); not with --log-file")
    p.add_argument("--journal-size", type=non_negative_int, default=_SERVER.journal_size, metavar="N",
                   help="ended calls the journal keeps in memory (default: %(default)s)")
    p.add_argument("--mix", type=outcome_mix, default=_EMULATOR.mix, metavar="MIX",
                   help="outcomes for calls without a script, e.g. complete=80,abort=10,fatal=5,hold=5 "
                        "(default: %(default)s)")
    p.add_argument("--abort-code", type=abort_code, default=_EMULATOR.abort_code, metavar="CODE",
                   help=f"exception code of aborts drawn from the mix: {ABORT_CODE_RULE} (default: %(default)s)")
    p.add_argument("--max-hold", type=non_negative_float, default=_EMULATOR.max_hold, metavar="SECONDS",
                   help="no call lasts longer than this from its dispatch, whatever its script or on-cancel "
                        "policy: it ends with 1460 RPC_S_TIMEOUT (default: %(default)s)")
    p.add_argument("--max-delay", type=non_negative_float, default=_LIMITS.max_delay_ms / 1000, metavar="SECONDS",
                   help="longest delay a script may ask for (default: %(default)s)")
    reply_cap = GRPC_MAX_RECEIVE - REPLY_FRAMING
    p.add_argument("--max-reply-bytes", type=bounded_int(0, reply_cap, "a reply must fit gRPC's 4 MiB receive limit"),
                   default=_LIMITS.max_reply_bytes, metavar="N",
                   help=f"largest reply a script may ask for, at most {reply_cap} so that it fits a client's "
                        "default 4 MiB receive limit with its framing (default: %(default)s)")
    p.add_argument("--max-payload-bytes", type=bounded_int(0, reply_cap, "gRPC's 4 MiB receive limit"),
                   default=_LIMITS.max_payload_bytes, metavar="N",
                   help="largest request payload, and largest pipe push (default: %(default)s)")
    p.add_argument("--max-message-bytes", type=bounded_int(0, 2048, "longer ones may not reach a client intact"),
                   default=_LIMITS.max_message_bytes, metavar="N",
                   help="longest abort or fatal message, in UTF-8 bytes (default: %(default)s)")
    p.add_argument("--max-call-id", type=bounded_int(1, LONGEST_CALL_ID), default=_LIMITS.max_call_id_bytes, metavar="N",
                   help="longest call id (printable ASCII only) (default: %(default)s)")
    p.add_argument("--max-reply-backlog", type=non_negative_int, default=_EMULATOR.max_reply_backlog_bytes,
                   metavar="BYTES", help="reply bytes handed to gRPC and not yet taken by their callers; a complete "
                   "beyond it gets 1723 RPC_S_SERVER_TOO_BUSY (default: %(default)s)")
    p.add_argument("--id-retention", type=non_negative_float, default=_EMULATOR.id_retention, metavar="SECONDS",
                   help="a call id that ended is refused (ALREADY_EXISTS) this long after, whether or not the journal "
                        "still holds its call (bounded by --max-retained-ids) (default: %(default)s)")
    p.add_argument("--max-retained-ids", type=non_negative_int, default=_EMULATOR.max_retained_ids, metavar="N",
                   help="ended call ids kept reserved for --id-retention beyond the journal's calls, at most (about "
                        "130 bytes each); past it the oldest are freed early (default: %(default)s)")
    p.add_argument("--max-reply-backlog-per-connection", type=non_negative_int, default=None, metavar="BYTES",
                   help="the same for each connection, pipes' messages included (default: --max-reply-backlog; a proxy "
                        "carries many callers on one connection)")
    p.add_argument("--max-concurrent-streams", type=non_negative_int, default=_SERVER.max_concurrent_streams,
                   metavar="N", help="HTTP/2 streams (calls) per connection at once; 0 = unbounded "
                   "(default: %(default)s)")
    p.add_argument("--early-notice-ttl", type=positive_float, default=_EMULATOR.early_notice_ttl, metavar="SECONDS",
                   help="a cancel notice that arrives before its call waits this long for it (default: %(default)s)")
    p.add_argument("--max-early-notices", type=non_negative_int, default=_EMULATOR.max_early_notices, metavar="N",
                   help="cancel notices kept for calls not dispatched yet; new ones refused when full, so none is displaced (default: %(default)s)")
    p.add_argument("--max-early-notice-bytes", type=non_negative_int, default=_EMULATOR.max_early_notice_bytes,
                   metavar="BYTES", help="the same, in bytes of their call ids (default: %(default)s)")
    p.add_argument("--journal-bytes", type=non_negative_int, default=_SERVER.journal_bytes, metavar="BYTES",
                   help="ended calls' histories the journal keeps, in bytes (default: %(default)s)")
    p.add_argument("--journal-events-per-call", type=non_negative_int, default=_SERVER.journal_events_per_call,
                   metavar="N", help="events (cancel notices, ...) stored in one call's history; later ones are "
                   "counted, not stored (the state log still has them) (default: %(default)s)")
    p.add_argument("--max-watchers", type=non_negative_int, default=_SERVER.max_watchers, metavar="N",
                   help="Journal Watch/Follow streams at once; one caller (client certificate, else host) holds "
                        "at most a quarter of them, its oldest stuck watcher evicted and told to make room; a "
                        "watcher past every bound gets RESOURCE_EXHAUSTED (default: %(default)s)")
    p.add_argument("--watch-buffer", type=bounded_int(1, 10_000_000), default=_SERVER.watch_buffer, metavar="N",
                   help="entries queued for one watcher; beyond it entries are dropped and the watcher is told "
                        "on its own stream (default: %(default)s)")
    p.add_argument("--max-in-flight", type=non_negative_int, default=_EMULATOR.max_in_flight, metavar="N",
                   help="calls over this many in flight get 1723 RPC_S_SERVER_TOO_BUSY; 0 turns every call away: "
                        "a server always too busy (default: %(default)s)")
    p.add_argument("--log-messages", action="store_true",
                   help="pipes: also log one line per message (send_complete / receive_complete); by default "
                        "only the transitions, with message counts")
    p.add_argument("--cancel-poll-ms", type=bounded_int(0, _LIMITS.max_delay_ms), default=_EMULATOR.cancel_poll_ms,
                   metavar="MS", help="handlers test for a cancel (RpcServerTestCancel) only every MS ms and at their "
                   "outcome, so they keep working after it; 0 = they see it at once; a script's cancel_poll_ms "
                   "overrides it (default: %(default)s)")
    p.add_argument("--seed", type=int, help="seed for the default mix's draws (reproducible runs)")
    p.add_argument("--grace", type=non_negative_float, default=_SERVER.grace, metavar="SECONDS",
                   help="on shutdown, how long calls in flight get before they are ended (default: %(default)s)")
    add_metrics(p, "the server's calls, states, cancels and journal")
    p.add_argument("--metrics-token", type=token, metavar="TOKEN",
                   help=f"/metrics then needs Authorization: Bearer TOKEN (401 otherwise); for an exposed endpoint "
                        f"(default: ${METRICS_TOKEN_ENV}, if set: unlike the command line, not shown by ps)")
    p.add_argument("--metrics-idle-timeout", type=positive_float, default=_SERVER.metrics_idle_timeout,
                   metavar="SECONDS",
                   help="close a /metrics connection that sends no request this long (default: %(default)s)")
    add_otel(p)
    g = p.add_argument_group("access (see docs/security.md)")
    g.add_argument("--tls-cert", type=pem_file, metavar="PEM", help="serve TLS with this certificate (chain); "
                   "with --tls-key (default: plaintext)")
    g.add_argument("--tls-key", type=pem_file, metavar="PEM", help="the certificate's private key")
    g.add_argument("--tls-client-ca", type=pem_file, metavar="PEM",
                   help="mutual TLS: require client certificates signed by this CA")
    g.add_argument("--token", type=token, metavar="TOKEN",
                   help=f"require 'authorization: Bearer TOKEN' on the Emulator and Journal services (health and "
                        f"reflection stay open) (default: ${TOKEN_ENV}, if set; else no token)")
    add_keepalive(g, CLIENT)   # the peer whose silence ends the calls
    add_standin(p)
    p.add_argument("--loop", choices=LOOPS, default="auto",
                   help="the event loop the server runs in: auto takes uvloop (libuv's loop, installed with "
                        "callstate where it builds: Linux and macOS) when it can be imported, else asyncio's. On "
                        "uvloop the server spends about a tenth less CPU per call; its start line names the "
                        "loop; see docs/performance.md (default: %(default)s)")
    return p


def run(opts: argparse.Namespace) -> int:
    from callstate.observe import ObserveError
    from callstate.server.app import serve

    # SIGINT / SIGTERM / SIGHUP that came while the command loaded and the server starts, noted by
    # callstate.cli.main until serve() installs its own handlers: they stop it before it serves
    early: list[int] = getattr(opts, "early_signals", [])
    if why := _tls_flags_refused(opts) or metrics_options_unused(opts, METRICS_OPTIONS):
        print(f"callstate serve: {why}", file=sys.stderr)
        return 2
    options = _server_options(opts)
    if why := _refused(opts, options):
        print(f"callstate serve: {why}", file=sys.stderr)
        return 2
    try:
        loop_factory = _loop_factory(opts.loop)
    except ImportError:
        print("callstate serve: --loop uvloop needs uvloop, which is not installed here (pip install uvloop; "
              "or --loop asyncio)", file=sys.stderr)
        return 2
    provider = None
    stopped = None
    try:
        if early:   # nothing started yet: nothing to stop
            return _stopped_before_serving(early[0])
        options.tracing = provider = tracer_provider(opts, "callstate-serve", warn_at_once="callstate serve")
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            stopped = runner.run(serve(options, port_file=opts.port_file, early=early))
    except (OSError, ValueError, ObserveError) as exc:
        print(f"callstate serve: {exc}", file=sys.stderr)
        return 1
    finally:
        shutdown_tracing(provider, "callstate serve")
    return 0 if stopped is None else _stopped_before_serving(stopped)


# the settings of /metrics, each with its default: given without --metrics-port, no endpoint uses them
METRICS_OPTIONS = (("--metrics-bind", "metrics_bind", METRICS_BIND), ("--metrics-token", "metrics_token", None),
                   ("--metrics-idle-timeout", "metrics_idle_timeout", _SERVER.metrics_idle_timeout))


def _tls_flags_refused(opts: argparse.Namespace) -> str | None:
    if (opts.tls_cert is None) != (opts.tls_key is None):
        return "--tls-cert and --tls-key go together"
    if opts.tls_client_ca is not None and opts.tls_cert is None:
        return "--tls-client-ca needs --tls-cert and --tls-key"
    return None


def _server_options(opts: argparse.Namespace) -> ServerOptions:
    """The server's options from the command line (the secrets from the environment when not given)."""
    config = EmulatorConfig(mix=opts.mix, abort_code=opts.abort_code, max_hold=opts.max_hold,
                            max_in_flight=opts.max_in_flight, seed=opts.seed, log_messages=opts.log_messages,
                            limits=Limits(max_delay_ms=int(opts.max_delay * 1000), max_reply_bytes=opts.max_reply_bytes,
                                          max_message_bytes=opts.max_message_bytes, max_call_id_bytes=opts.max_call_id,
                                          max_payload_bytes=opts.max_payload_bytes),
                            max_reply_backlog_bytes=opts.max_reply_backlog, early_notice_ttl=opts.early_notice_ttl,
                            max_early_notices=opts.max_early_notices,
                            max_early_notice_bytes=opts.max_early_notice_bytes, cancel_poll_ms=opts.cancel_poll_ms,
                            max_reply_backlog_per_connection=opts.max_reply_backlog_per_connection,
                            id_retention=opts.id_retention, max_retained_ids=opts.max_retained_ids)
    return ServerOptions(bind=opts.bind, port=opts.port, log=None if opts.no_state_log else opts.log_file or "-",
                         journal_size=opts.journal_size, emulator=config, grace=opts.grace,
                         journal_bytes=opts.journal_bytes, journal_events_per_call=opts.journal_events_per_call,
                         max_watchers=opts.max_watchers, watch_buffer=opts.watch_buffer,
                         max_concurrent_streams=opts.max_concurrent_streams,
                         metrics_port=opts.metrics_port, metrics_bind=opts.metrics_bind,
                         metrics_token=opts.metrics_token or env_secret(METRICS_TOKEN_ENV, "callstate serve"),
                         metrics_idle_timeout=opts.metrics_idle_timeout,
                         tls_cert=opts.tls_cert, tls_key=opts.tls_key, tls_client_ca=opts.tls_client_ca,
                         token=opts.token or env_token("callstate serve"), keepalive=opts.keepalive or None)


def _refused(opts: argparse.Namespace, options: ServerOptions) -> str | None:
    """Why the server cannot start with these options (a usage error, before anything starts);
    the stand-in's schema and rules are loaded into `options` on the way."""
    from callstate.server.app import check_tls
    try:
        check_tls(options)   # a key that is encrypted or not the certificate's, an expired certificate
    except (OSError, ValueError) as exc:
        return str(exc)
    for flag, path in (("--port-file", opts.port_file), ("--log-file", None if opts.no_state_log else opts.log_file)):
        if path and path != "-" and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            return f"{flag} {path}: its folder does not exist"
    if why := clash((("--log-file", options.log), ("--port-file", opts.port_file))) or _not_a_port_file(opts.port_file):
        return why   # the port would replace the recorded log
    if why := gzipped_log("--log-file", None if opts.no_state_log else opts.log_file):
        return why
    if opts.metrics_port and opts.metrics_port == opts.port and (
            opts.metrics_bind == opts.bind or {opts.metrics_bind, opts.bind} & {"", "0.0.0.0", "::"}):
        # /metrics binds first, and grpc's bind then failed with no reason it could name
        return f"--metrics-port {opts.port} is also --port: give /metrics a port of its own"
    try:
        options.schema, options.rules = load_standin(opts, options.emulator.limits)
    except ValueError as exc:   # SchemaError, RulesError: one line naming the file, line or field
        return str(exc)
    return None


def _not_a_port_file(path: str | None) -> str:
    """Why writing the port to `path` would lose something ("" when it would not): a file there
    holds what is not a port, such as a state log given as --port-file by mistake (the port
    replaces the file whole, and a server still writing that log then writes to no file at all)."""
    if not path or not os.path.isfile(path):
        return ""
    try:
        with open(path, "rb") as f:
            held = f.read(64).strip()
    except OSError:   # unreadable: said when the port is written
        return ""
    if not held or held.isdigit():   # empty, or the port an earlier run wrote
        return ""
    return (f"--port-file {path} holds something other than a port (a state log?): writing the port would "
            "replace it; give a file of its own")


LOOPS = ("auto", "asyncio", "uvloop")


def _loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop's factory (None: asyncio's own); ImportError when uvloop is asked for and missing.
    auto takes uvloop when it imports, as uvicorn's --loop auto does: the emulator should not be the
    slowest part of a load test, and uvloop leaves the server's behaviour as asyncio's (the suite runs
    on it; --loop asyncio is there for a platform or a doubt)."""
    if loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            raise
        return None
    return uvloop.new_event_loop   # type: ignore[no-any-return]


def _stopped_before_serving(signum: int) -> int:
    import signal

    print(f"callstate serve: stopped by {signal.Signals(signum).name} before it served", file=sys.stderr, flush=True)
    return 128 + signum
