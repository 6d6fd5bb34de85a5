"""The conformance results as a terminal table, a JSON report and JUnit XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from callstate.check import counted
from callstate.cli.conformance.properties import PROPERTIES, Row

DIRECT, PROXY = "direct", "proxy"
SAME_ADDRESS = ("note: --proxy {proxy} is the server's own address: no proxy stood between, so both columns are "
                "the server straight; give the proxy's address to test it")


def failed(rows: dict[str, list[Row]]) -> list[tuple[str, Row]]:
    return [(path, row) for path, path_rows in rows.items() for row in path_rows if row.ok is False]


def untested(rows: dict[str, list[Row]]) -> bool:
    """No row was tested (every one asked for was skipped): the run has no verdict, never OK."""
    return not any(row.ok is not None for path_rows in rows.values() for row in path_rows)


def holds(rows: dict[str, list[Row]]) -> bool:
    """The run's verdict is OK (exit 0): no row failed, and one at least was tested."""
    return not failed(rows) and not untested(rows)


def table(rows: dict[str, list[Row]], proxy: str, server: str, only: tuple[str, ...] = (), error: str = "",
          seconds: float | None = None) -> str:
    """`only`: the properties --only asked for (the verdict then speaks of those alone); `error`: why the
    run ended before its verdict (the rows judged until then are shown); `seconds`: the run's time, on
    the line before the verdict, which is the last line."""
    by_path = {path: {r.prop: r for r in path_rows} for path, path_rows in rows.items()}
    props = [p for p in PROPERTIES if any(p in by_path[path] for path in by_path)]
    last = [] if seconds is None else [f"({seconds:.1f} s)"]
    if error:
        judged = sum(map(len, rows.values()))
        last.append(f"conformance: NO VERDICT — {error} ({counted(judged, 'row')} judged"
                    + (", shown above)" if judged else ")"))
    else:
        last.append(verdict_line(rows, only))
    if not props:
        return "\n".join(last)

    def cell(path: str, prop: str) -> str:
        row = by_path.get(path, {}).get(prop)
        return "" if row is None else f"{row.verdict:<4}  {row.figures}".rstrip()
    heads = {DIRECT: f"direct to {server}", PROXY: f"through {proxy}"}
    width = max(len(p) for p in props)
    col = max([len(heads[DIRECT])] + [len(cell(DIRECT, p)) for p in props])
    lines = [f"{'property':<{width}}  {heads[DIRECT]:<{col}}  {heads[PROXY]}"]
    lines += [f"{p:<{width}}  {cell(DIRECT, p):<{col}}  {cell(PROXY, p)}" for p in props]
    notes = [f"{row.verdict} {row.prop} ({heads[path]}): {row.note}" for path, path_rows in rows.items()
             for row in path_rows if row.note and row.ok is not True]
    if proxy == server:
        notes.append(SAME_ADDRESS.format(proxy=proxy))
    return "\n".join(lines + [""] + notes + last)


def verdict_line(rows: dict[str, list[Row]], only: tuple[str, ...] = ()) -> str:
    """The table's last line: the failed properties, or OK (of the ones --only asked for)."""
    bad = failed(rows)
    if bad:
        names = ", ".join(dict.fromkeys(f"{row.prop}" + (" (direct)" if path == DIRECT else "") for path, row in bad))
        return f"conformance: FAILED — {names}"
    skipped = ", ".join(dict.fromkeys(row.prop for path_rows in rows.values() for row in path_rows if row.ok is None))
    if untested(rows):
        return f"conformance: NOT TESTED — no property asked for could be tested here: {skipped or 'none ran'} (see above)"
    return ("conformance: OK — every property "
            + (f"asked for ({len(only)} of {len(PROPERTIES)}, --only) " if only else "")
            + "holds through the proxy" + (f"; not tested: {skipped} (see above)" if skipped else ""))


def to_json(rows: dict[str, list[Row]], proxy: str, server: str, config: dict[str, Any],
            seconds: float, error: str = "") -> dict[str, Any]:
    """`error`: why the run ended before its verdict (exit 2, or interrupted); then not ok. Nor is
    a run that tested nothing (NOT TESTED, exit 1): `ok` is what the exit status says."""
    return {"proxy": proxy, "upstream": server, "ok": holds(rows) and not error,
            "error": error or None,
            "seconds": round(seconds, 2), "config": config, "properties": PROPERTIES,
            "failed": [{"path": path, "property": row.prop, "note": row.note} for path, row in failed(rows)],
            "rows": {path: [row.to_json() for row in path_rows] for path, path_rows in rows.items()}}


def junit_xml(rows: dict[str, list[Row]], proxy: str, server: str, seconds: float, error: str = "") -> bytes:
    """One test suite per path, one test case per property: CI systems show each one. A run that
    ended before its verdict (`error`) adds a case in error saying why, so no CI reads it as green."""
    suites = ET.Element("testsuites", name="callstate conformance", time=f"{seconds:.2f}")
    for path, path_rows in rows.items():
        suite = ET.SubElement(suites, "testsuite", name=f"conformance.{path}",
                              tests=str(len(path_rows)), failures=str(sum(r.ok is False for r in path_rows)),
                              errors="0", skipped=str(sum(r.ok is None for r in path_rows)),
                              time=f"{sum(r.seconds for r in path_rows):.2f}")
        ET.SubElement(ET.SubElement(suite, "properties"), "property", name="target",
                      value=proxy if path == PROXY else server)
        for row in path_rows:
            case = ET.SubElement(suite, "testcase", classname=f"conformance.{path}", name=row.prop,
                                 time=f"{row.seconds:.3f}")
            ET.SubElement(case, "system-out").text = f"{PROPERTIES[row.prop]}\n{row.figures}"
            if row.ok is False:
                ET.SubElement(case, "failure", message=row.note or row.figures).text = row.figures
            elif row.ok is None:
                ET.SubElement(case, "skipped", message=row.note)
    if error:
        suite = ET.SubElement(suites, "testsuite", name="conformance.run", tests="1", failures="0", errors="1",
                              skipped="0", time=f"{seconds:.2f}")
        case = ET.SubElement(suite, "testcase", classname="conformance.run", name="run", time=f"{seconds:.3f}")
        ET.SubElement(case, "error", message=error).text = error
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)
