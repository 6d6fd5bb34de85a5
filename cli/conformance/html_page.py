"""`callstate conformance --html`: a run as one self-contained HTML page to share with a team.

The page style is `callstate report`'s (`cli/report/templates/style.css.j2`, rendered in its Jinja2
environment, autoescaping on: a gateway's `server` header is text it chose); inline CSS, no
script, nothing fetched. It shows the gateway under test, the verdict, every property on both
paths with its figures, and each row's evidence: why it failed or was skipped, and its numbers
(what --report holds).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

from callstate.cli.conformance.properties import PROPERTIES
from callstate.cli.conformance.report import DIRECT, PROXY, SAME_ADDRESS
from callstate.statelog import format_ts

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "conformance.html.j2"
SHOWN = ("property", "verdict", "figures", "note", "seconds")   # a row's keys the page shows apart


def available() -> str:
    """'' when the page can be rendered, else why not (one line): it needs Jinja2, as `callstate report` does."""
    from callstate.cli.report import html_report
    return html_report.available()


def evidence(row: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """A row's numbers beyond its figures and note, as (what, value): `latency_ms`, `in_flight`..."""
    return [(key.replace("_", " "), value) for key, value in row.items() if key not in SHOWN]


def rows_of(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [row for rows in data["rows"].values() for row in rows]


def render(data: Mapping[str, Any], verdict: str, gateway: str) -> str:
    """The page of a run: `data` is what --report writes, `verdict` the table's last line, `gateway`
    what the proxy calls itself ('' when it says nothing)."""
    from callstate.cli.report import html_report

    by_path = {path: {row["property"]: row for row in rows} for path, rows in data["rows"].items()}
    props = [p for p in PROPERTIES if any(p in rows for rows in by_path.values())]
    return html_report.environment(TEMPLATES).get_template(TEMPLATE).render(
        r=data, verdict=verdict, gateway=gateway, generated=format_ts(time.time()), props=props, by_path=by_path,
        paths=(DIRECT, PROXY), evidence=evidence, tested=any(row.get("verdict") != "skip" for row in rows_of(data)), same_address=SAME_ADDRESS.format(proxy=data["proxy"]))

