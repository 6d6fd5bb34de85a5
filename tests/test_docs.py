"""The documentation works as shown: the site builds with no broken link, every Python example
runs against a real server, and every `callstate` command line in it parses."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, ServerProcess
from tests.documentation import _text, blocks, documentation, pages

# Examples another test runs as written, where they need more than a server (a Locust master,
# an inner pytest session, an OpenTelemetry exporter): the marker names that test.
RUN_ELSEWHERE = ("# locustfile.py", "# test_cancel_paths.py", "InMemorySpanExporter", "# drive_shop.py")


def python_examples() -> list[tuple[str, str]]:
    out = []
    for page in pages():
        for i, block in enumerate(blocks(_text(page), "python")):
            if not any(mark in block for mark in RUN_ELSEWHERE):
                out.append((f"{page.relative_to(ROOT)}#{i}", block))
    return out


def test_the_site_builds_strict_with_every_page_in_the_nav(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    assert mkdocs, "mkdocs is in the dev extra: pip install -e '.[dev]'"
    done = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    home = (tmp_path / "site" / "index.html").read_text()
    assert "Quick start" in home and 'href="docs/' not in home   # the README's links, rewritten for the site


@pytest.mark.parametrize("where, code", python_examples(), ids=[w for w, _ in python_examples()])
def test_every_python_example_runs_as_shown(where: str, code: str, shared_server: ServerProcess,
                                            tmp_path: Path) -> None:
    if "tls/" in code:   # the security example's own files, as its page makes them
        subprocess.run([sys.executable, str(ROOT / "tools" / "make_certs.py"), "tls"], cwd=tmp_path, check=True,
                       capture_output=True, timeout=60)
    script = tmp_path / "example.py"
    script.write_text(code.replace("127.0.0.1:50051", shared_server.target))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{where}:\n{done.stderr[-2000:]}"


def command_lines() -> list[str]:
    """Every `callstate ...` command line of a shell block, continuations joined."""
    out = []
    for page in pages():
        for block in blocks(_text(page), "sh"):
            joined = block.replace("\\\n", " ")
            for line in joined.splitlines():
                line = line.split(" #", 1)[0].strip().rstrip("&").strip()
                if line.startswith("callstate ") and "[" not in line and "..." not in line:
                    out.append(line)
    return out


def test_every_documented_command_line_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command line shown parses with the real parser: no renamed or removed flag lingers.
    The PEM files the examples name are made first, as their pages say (the parser reads them)."""
    from callstate.cli import build_parser
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_certs.py"), "tls"], cwd=tmp_path, check=True,
                   capture_output=True, timeout=60)
    for pem in (tmp_path / "tls").glob("*"):
        (tmp_path / pem.name).write_bytes(pem.read_bytes())   # some examples name them without the folder
    monkeypatch.chdir(tmp_path)
    parser = build_parser()
    bad = []
    for line in command_lines():
        try:
            parser.parse_args(shlex.split(line)[1:])
        except SystemExit:
            bad.append(line)
    assert command_lines(), "no command line found"
    assert not bad, "documented commands that no longer parse:\n" + "\n".join(bad)


def test_the_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 450
    assert ". .venv/bin/activate" in readme
    # the Quick start activates the environment before any command line uses a bare `callstate`
    bare = [line for block in blocks(readme, "sh") for line in block.splitlines() if line.startswith("callstate ")]
    assert bare and readme.index(". .venv/bin/activate") < readme.index(bare[0]), bare[:1]
    assert "nothing else" in documentation()


def test_the_code_table_in_the_docs_is_the_one_in_the_code() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gen_code_table
    finally:
        sys.path.remove(str(ROOT / "tools"))
    text = gen_code_table.MODEL.read_text()
    assert gen_code_table.rendered(text) == text, "run python tools/gen_code_table.py"


def test_the_cancel_point_tables_in_the_docs_are_the_ones_in_the_code() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gen_cancel_points
    finally:
        sys.path.remove(str(ROOT / "tools"))
    text = gen_cancel_points.PAGE.read_text()
    assert gen_cancel_points.rendered(text) == text, "run python tools/gen_cancel_points.py"


def test_no_page_lists_the_pipe_cancel_points_by_hand() -> None:
    """The points are listed once, in the generated table: prose naming three or more of them in a
    row would drift from the table."""
    from callstate.cancel_points import PIPE
    names = [p.name for p in PIPE.points]
    for page in pages():
        for line in _text(page).splitlines():
            if not line.startswith("|") and sum(name in line for name in names[1:]) >= 3:
                raise AssertionError(f"{page.relative_to(ROOT)} lists pipe cancel points by hand: {line.strip()}")


def test_every_code_has_a_documented_row_naming_the_status_it_is_sent_with() -> None:
    from callstate import codes
    from callstate.code_docs import ROWS
    assert set(ROWS) == set(codes.NAMES), "a code without a row in callstate/code_docs.py, or a row for no code"
    for code, (status, _) in ROWS.items():
        sent = codes.grpc_status_name_for(code)
        if code in codes.NAMES and sent != "ABORTED":   # ABORTED: no mapping, the abort row's default
            assert status.startswith(sent), f"{code}: the table says {status!r}, the server sends {sent}"


def test_the_readme_stand_in_example_runs_as_shown(tmp_path: Path) -> None:
    """The README's own-proto example: the stand-in it starts, then each call ends with the code
    its comment names, and the server's log passes the checker."""
    from tests.conftest import cli, start_server
    from tests.documentation import section
    block = blocks(section("Stand in for your own service, and drive it"), "sh")[0]
    serve, *calls = [line.split("   #")[0].rstrip(" &") for line in block.splitlines()]
    codes = [int(line.rsplit("#", 1)[1]) for line in block.splitlines()[1:]]
    args = shlex.split(serve.replace("tests/protos", str(ROOT / "tests" / "protos")))
    assert args[:2] == ["callstate", "serve"]
    srv = start_server(tmp_path, *args[2:])
    try:
        for line, code in zip(calls, codes):
            out = cli(*shlex.split(line)[1:], "--target", srv.target, timeout=60)
            assert f"final: {code} " in out.stderr, out.stdout + out.stderr
    finally:
        srv.stop()
    checked = cli("check", str(srv.log), "--allow-one-side")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_documented_prometheus_query_selects_a_side() -> None:
    """The README's `sum(callstate_calls_total)` added the server's and the client's count of
    every call (each side counts a call once). Every metric with a `side` label, wherever a page
    queries it, carries a `side` selector."""
    import re

    from callstate.lifecycle import ABORTIVE, CANCEL_SEEN, CLIENT, ENTER, SERVER
    from callstate.observe.metrics import Metrics
    from callstate.statelog import Entry

    metrics = Metrics()
    client, server = metrics.side(CLIENT), metrics.side(SERVER)
    for e in (Entry(1.0, CLIENT, "x", "C", None, ENTER, "call"), Entry(1.1, CLIENT, "x", "Can", "C", ENTER, "cancel",
                                                                      cancel=ABORTIVE),
              Entry(1.2, CLIENT, "x", "End", "Can", ENTER, "completed", 1818, "CANCELLED")):
        client.observe(e)
    for e in (Entry(1.0, SERVER, "x", "D", None, ENTER, "dispatch"), Entry(1.1, SERVER, "x", "D", "D", CANCEL_SEEN,
                                                                          cancel=ABORTIVE),
              Entry(1.2, SERVER, "x", "End", "D", ENTER, "fatal", 1726, "UNKNOWN")):
        server.observe(e)
    sided = {f.name for f in metrics.registry.collect() for s in f.samples if "side" in s.labels}
    assert {"callstate_calls", "callstate_calls_in_flight", "callstate_cancels"} <= sided, sided
    query = re.compile(r"\b(sum|rate|irate|increase|avg|max|min|histogram_quantile)\b[^(]*\(.*callstate_")
    queries = [q for page in pages() for q in _text(page).splitlines() if query.search(q)]   # any page, any block
    assert any("callstate_calls_total" in q for q in queries), "no documented query of callstate_calls_total"
    unsided = []
    for query in queries:
        for m in re.finditer(r"\b(callstate_\w+?)(_total|_bucket|_count|_sum)?\b(\{[^}]*\})?", query):
            if m.group(1) in sided and "side=" not in (m.group(3) or "").replace(" ", ""):
                unsided.append(query.strip())
    assert not unsided, "queries that add both sides' counts of each call:\n" + "\n".join(unsided)


def test_every_path_the_load_counts_is_explained() -> None:
    """The load's `paths:` line named `cancel-at-after` and its kin, and no page said what they
    were: each name it can print is explained on the load page, with its prefixes."""
    from callstate.cancel_points import PIPE, UNARY
    from callstate.lifecycle import CANCEL_KINDS, PIPE_KINDS
    from callstate.script import OUTCOMES

    page = (ROOT / "docs" / "load.md").read_text()
    explained = page.split("**The `paths:` line**", 1)[1].split("\n\n", 1)[0]
    for name in [*OUTCOMES, "hold-for", *(f"cancel-{k}" for k in CANCEL_KINDS), *(f"pipe-{k}" for k in PIPE_KINDS)]:
        assert f"`{name}`" in explained, name
    assert "`cancel-at-` and the" in explained and "`pipe-cancel-at-` and its point" in explained
    for table, prefix in ((UNARY, "cancel-at-"), (PIPE, "pipe-cancel-at-")):   # the point names are in the tables
        for point in table.points:
            assert f"| `{point.name}" in page, (prefix, point.name)
