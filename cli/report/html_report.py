"""Render `run_report`'s dict as one self-contained HTML file (inline CSS and SVG, no script).

The page opens offline and fetches nothing: the charts are SVG drawn here (`svg_charts`),
the styles are inline (`templates/style.css.j2`, which `callstate conformance --html` shares), and the
template (`templates/report.html.j2`) is rendered by Jinja2
with autoescaping on, because call ids and details in the logs are caller-chosen text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from callstate import codes
from callstate.check import counted
from callstate.cli.report import svg_charts
from callstate.cli.live.stats import rate_text
from callstate.cli.report.run_report import OTHER
from callstate.lifecycle import C, CAN, CANCEL_SEEN, CLIENT, END, ENTER, SERVER

MISSING_JINJA = "the HTML report needs Jinja2: pip install 'callstate[report]'"
TEMPLATE = "report.html.j2"
TEMPLATES = Path(__file__).parent / "templates"


def available() -> str:
    """'' when the report can be rendered, else why not (one line)."""
    try:
        import jinja2  # noqa: F401
    except ImportError:
        return MISSING_JINJA
    return ""


def charts(report: Mapping[str, Any]) -> dict[str, str]:
    """The report's SVG charts by name (empty when there is nothing to draw)."""
    out: dict[str, str] = {}
    by_code = report["by_code"]
    if by_code:
        out["latency"] = svg_charts.log_histogram(
            [(f"{row['describe']} ({row['count']})", svg_charts.colour(i), row["hist"]) for i, row in enumerate(by_code)],
            report["latency_edges_ms"], x_title="latency, ms (log scale)")
    tl = report["timeline"]
    if tl["in_flight"]:
        out["timeline"] = svg_charts.timeline(
            tl["bucket_s"], [("calls in flight (most at once in the bucket)", svg_charts.colour(0),
                              tl["in_flight_peak"]),
                             ("calls ended per bucket", svg_charts.colour(2), tl["ended"])],
            [(f"{kind} cancels per bucket", svg_charts.colour(1 + 2 * i), v) for i, (kind, v) in enumerate(tl["cancels"].items())],
            line_title="calls", bar_title="cancels")
    prop = report["propagation"]
    if prop["ms"]["count"]:
        out["propagation"] = svg_charts.log_histogram(
            [(f"client {CAN} → server {CANCEL_SEEN}", svg_charts.colour(1), prop["hist"])], prop["edges_ms"],
            x_title="cancel propagation, ms (log scale)")
    return out


def setting(value: Any) -> str:
    """A run setting as the command line spells it: `abortive=20, non-abortive=10` for shares,
    a comma list for lists, `-` when unset (never a Python repr such as None or {'a': 1})."""
    if value is None or value == {} or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={setting(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(setting(v) for v in value)
    return str(value)


def noun(n: int, singular: str, plural: str = "") -> str:
    """The noun a count stands over, as a card spells it: "1 / call", "2 / calls"."""
    return counted(n, singular, plural).split(" ", 1)[1]


def environment(*folders: Path) -> Any:
    """The Jinja2 environment every HTML report renders in: autoescaping on, the reports' filters, and
    this room's templates (the shared page style, `style.css.j2`) after `folders` (another report's own)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader([*folders, TEMPLATES]),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["setting"] = setting
    env.filters["counted"] = counted   # "1 call", "2 calls"
    env.filters["noun"] = noun
    env.filters["rate"] = rate_text   # calls/s: "0.5", not "0"
    return env


def render(report: Mapping[str, Any]) -> str:
    from markupsafe import Markup

    return environment().get_template(TEMPLATE).render(
        r=report, charts={k: Markup(v) for k, v in charts(report).items()},
        describe=codes.describe, C=C, CLIENT=CLIENT, SERVER=SERVER, END=END, ENTER=ENTER, CAN=CAN, CANCEL_SEEN=CANCEL_SEEN,
        OTHER=OTHER)


def write(report: Mapping[str, Any], path: str | Path) -> None:
    from callstate.files import write_atomically

    write_atomically(path, render(report).encode("utf-8"))
