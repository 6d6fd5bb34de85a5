"""The metrics and tracing options of `serve`, `call` and `load`, and the tracer provider they use."""

from __future__ import annotations

import argparse
from typing import Any

from callstate.cli.options import port

METRICS_BIND = "127.0.0.1"   # the /metrics endpoint's default address

OTEL_HELP = ("trace every call with OpenTelemetry (needs callstate[otel]): one span per call, its states as span "
             "events, its trace context in the gRPC metadata. The exporter comes from OTEL_TRACES_EXPORTER "
             "(otlp, console (to stderr) or none; default otlp, which needs callstate[otlp]) and the other "
             "standard OTEL_* variables")


def add_metrics(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--metrics-port", type=port, metavar="PORT",
                   help=f"serve Prometheus metrics of {what} on http://BIND:PORT/metrics (needs callstate[metrics]; "
                        "0 picks a free port, printed on stderr)")
    p.add_argument("--metrics-bind", default=METRICS_BIND, metavar="ADDRESS",
                   help="address the /metrics endpoint listens on (default: %(default)s)")


def metrics_options_unused(opts: argparse.Namespace, settings: tuple[tuple[str, str, Any], ...]) -> str | None:
    """Why the command line is refused when it sets up /metrics without --metrics-port (no endpoint
    is served, so they would be dropped without a word), or None. `settings`: (flag, attribute,
    default) of the command's /metrics options."""
    if opts.metrics_port is not None:
        return None
    given = [flag for flag, name, default in settings if getattr(opts, name) != default]
    if not given:
        return None
    return (f"{' and '.join(given)} {'set' if len(given) > 1 else 'sets'} up the /metrics endpoint, which only "
            "--metrics-port serves: add --metrics-port PORT")


def add_otel(p: argparse.ArgumentParser) -> None:
    p.add_argument("--otel", action="store_true", help=OTEL_HELP)


def tracer_provider(opts: argparse.Namespace, service_name: str, warn_at_once: str | None = None) -> Any:
    """The SDK tracer provider from OTEL_* when --otel is given, else None (ObserveError when it
    cannot be built). The caller shuts it down at exit, which flushes the last spans. A long-running
    command passes its name as `warn_at_once`: spans that cannot be exported are said when it happens."""
    if not opts.otel:
        return None
    from callstate.observe.tracing import provider_from_env
    return provider_from_env(service_name, warn_at_once)


def shutdown_tracing(provider: Any, prog: str) -> None:
    """Flush the last spans at exit, bounded in time, with one warning line when they could not
    be exported (no collector answering, say)."""
    if provider is not None:
        from callstate.observe.tracing import shutdown
        shutdown(provider, prog)
