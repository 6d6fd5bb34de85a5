"""The documentation works as shown: the site builds with no broken link, every Python example
runs against a real server, and every `callstate` command line in it parses."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT, ServerProcess
from tests.documentation import _text, blocks, documentation, pages, section

# Examples another test runs as written, where they need more than a server (a Locust master,
# an inner pytest session, an OpenTelemetry exporter): the marker names that test.
RUN_ELSEWHERE = ("# locustfile.py", "# test_cancel_paths.py", "InMemorySpanExporter", "# drive_shop.py")


# Shell blocks, whatever their label and however deep a list item indents them: the parse test
# read only flush-left ```sh blocks, and a ```bash block or one indented in a list escaped it.
SHELL = ("sh", "bash", "shell", "console")
# Every other fence label a page may use, and what reads it (a new label must be added here, so no
# kind of block is left unread without saying so).
OTHER_FENCES = {"python": "test_every_python_example_runs_as_shown",
                "mermaid": "test_lifecycle, test_pipe_lifecycle",
                "nginx": "tests/middleboxes.py",
                "promql": "test_every_documented_prometheus_query_selects_a_side",
                "yaml": "test_the_rules_file_reference_loads_as_shown",
                "json": "test_the_state_log_sample_is_what_a_server_writes",
                "ini": "test_the_pytest_ini_sample_names_the_plugins_settings",
                "text": "an output sample", "": "an output sample"}
_FENCE = re.compile(r"^( *)```([\w+-]*)\n(.*?)^\1```", re.S | re.M)


def fences(text: str) -> list[tuple[str, str]]:
    """(label, body) of every fenced block, an indented one's body dedented."""
    return [(m.group(2), textwrap.dedent(m.group(3))) for m in _FENCE.finditer(text)]


def shell_blocks(text: str) -> list[str]:
    return [body for label, body in fences(text) if label in SHELL]


def python_examples() -> list[tuple[str, str]]:
    out = []
    for page in pages():
        for i, block in enumerate(body for label, body in fences(_text(page)) if label == "python"):
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
        for block in shell_blocks(_text(page)):
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


def test_every_fenced_block_is_read_by_some_test() -> None:
    """No block escapes the snippet tests by its label, nor by its indentation in a list."""
    labels = {label for page in pages() for label, _ in fences(_text(page))}
    assert labels <= {*SHELL, *OTHER_FENCES}, f"fence labels no test reads: {labels - {*SHELL, *OTHER_FENCES}}"
    nested = "- a step:\n\n  ```bash\n  callstate call --outcome fatal\n  ```\n"
    assert shell_blocks(nested) == ["callstate call --outcome fatal\n"]
    assert any("callstate serve --port 50051" == line for line in command_lines())   # client-design.md's ```bash


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
    block = blocks(section("Stand in for your own service, and drive it"), "sh")[0]
    block = "\n".join(line for line in block.splitlines() if not line.startswith("callstate health"))   # start_server waits
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


def test_the_readme_walk_runs_as_written(tmp_path: Path) -> None:
    """A newcomer's first ten minutes, from the README alone and in its order: the quick start's
    server and call, the scripted cancelled calls and their check, then the load with its client
    log and the check of that log against the server's. Each line is run as written (the load
    smaller) in one folder, so a log a later line reads must be one an earlier line wrote: the
    load example once wrote no client log, and its check had nothing to read."""
    from tests.conftest import cli, ended, read_entries, start_server, wait_entries
    quick = blocks(section("Quick start"), "sh")[1]
    serve = next(line for line in quick.splitlines() if line.startswith("callstate serve"))
    assert "--log-file server.jsonl" in serve, serve   # the log the checks below read, as start_server names it
    lines = [line for line in quick.splitlines() if line.startswith("callstate call")]
    for heading in ("Script a server and make calls", "Load-test the cancellation paths"):
        lines += [line for line in blocks(section(heading), "sh")[0].splitlines() if line.startswith("callstate ")]
    assert [line.split()[1] for line in lines] == ["call", "call", "call", "check", "load", "check"], lines
    srv = start_server(tmp_path, name="server")
    try:
        for line in lines:
            command, _, comment = line.partition(" #")
            args = shlex.split(command.replace("--calls 5000", "--calls 200"))[1:]
            if args[0] in ("call", "load"):
                args += ["--target", srv.target]
            done = cli(*args, cwd=tmp_path, timeout=90)
            said = done.stdout + done.stderr
            if args[0] == "call":
                code = int(re.findall(r"\d+", comment)[-1])
                assert f"final: {code} " in done.stderr, f"{line}\n{said}"
                for call_id in {e["call_id"] for e in read_entries(tmp_path / "client.jsonl")}:
                    wait_entries(srv.log, call_id, until=ended)   # the server's End is in its log (flushed every 50 ms)
            elif args[0] == "load":
                assert done.returncode == 0 and "check: OK" in done.stdout, f"{line}\n{said}"
                barrier = re.search(r"callstate-load-barrier-\w+", done.stdout)
                assert barrier, said
                wait_entries(srv.log, barrier.group(0), until=ended)
            else:
                assert done.returncode == 0 and "OK: every invariant holds" in done.stdout, f"{line}\n{said}"
    finally:
        srv.stop()


def test_the_client_walk_on_the_design_page_is_todays(shared_server: ServerProcess) -> None:
    """docs/client-design.md's "After" listing of `callstate call --outcome abort` and the table's
    figures for it are what tools/call_walk.py finds today: the listing had stayed at 43 stops
    (no client/arguments.py) while the table said 47."""
    import json
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "call_walk.py"), "--target", shared_server.target,
                           "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    walk = json.loads(done.stdout)
    page = (ROOT / "docs" / "client-design.md").read_text()
    listing = blocks(page.split("\nAfter:\n", 1)[1], "text")[0]
    shown = [line.split(". ", 1)[1].split(":", 1)[0] for line in listing.splitlines()]
    assert shown == [stop["file"] for stop in walk["walk"]], "rerun tools/call_walk.py and paste its walk"
    figures = f"{walk['stops']} / {walk['returns']} / {walk['revisits']}"
    row = next(line for line in page.splitlines() if line.startswith("| `--outcome abort`"))
    assert row.rstrip(" |").endswith(figures), (row, figures)
    assert f"The {walk['revisits']} revisits are" in page


def test_the_folded_walks_on_the_design_page_are_what_the_tool_counts(shared_server: ServerProcess) -> None:
    """docs/client-design.md's table of folded walks: each row's figures are what its command
    (the page's own, its variables expanded) prints today, the first row the walk unfolded."""
    import json
    page = (ROOT / "docs" / "client-design.md").read_text()
    block = next(b for b in blocks(page, "bash") if "--fold" in b)
    names = dict(line.split("=", 1) for line in block.splitlines() if re.match(r"^[A-Z]+=", line))
    commands = [line.split("#")[0].split() for line in block.splitlines() if line.startswith("python ")]
    table = page.split("| folded | stops / files / revisits |", 1)[1].split("\n\n", 1)[0]
    rows = [line.rsplit("|", 2)[1].strip() for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == len(commands) + 1, rows
    for argv, row in zip([["python", "tools/call_walk.py", "--target", "T"]] + commands, rows):
        args = [re.sub(r"\$([A-Z]+)", lambda m: names[m.group(1)], a) for a in argv[2:]]
        args[args.index("--target") + 1] = shared_server.target
        done = subprocess.run([sys.executable, str(ROOT / "tools" / "call_walk.py"), *args, "--json"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        walk = json.loads(done.stdout)
        assert row == f"{walk['stops']} / {walk['files']} / {walk['revisits']}", (args, row, walk["revisits"])


def test_the_benchmarks_the_performance_page_lists_are_the_runners() -> None:
    """The page's `benchmarks/run.py` line names every benchmark the runner takes (it left out
    `standin`), and no other: the runner's own refusal lists them."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "no-such-bench"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    runner = done.stderr.rsplit("choose from ", 1)[1].strip().split(", ")
    line = next(line for line in (ROOT / "docs" / "performance.md").read_text().splitlines()
                if "# one or more of:" in line)
    assert line.split("# one or more of:", 1)[1].split() == runner, (line, runner)


def test_the_wire_contract_names_every_method_of_the_proto() -> None:
    """docs/wire.md lists each service's methods: `Journal/Follow`, which every `load` uses, was
    missing from it."""
    from callstate.v1 import callstate_pb2
    contract = section("The wire contract")
    for service in callstate_pb2.DESCRIPTOR.services_by_name.values():
        listed = contract.split(f"`{service.name}` (", 1)[1].split(")", 1)[0]
        for method in service.methods:
            assert f"`{method.name}`" in listed, f"{service.name}/{method.name} is not in docs/wire.md's list"


def test_the_load_pages_sample_and_its_sums_agree() -> None:
    """The load page's sample run and the sentence that adds up its cancels are one run: the
    sample had been replaced by hand in parts, and `--seed 1` no longer gave its paths."""
    page = (ROOT / "docs" / "load.md").read_text()
    sample = next(block for block in blocks(page) if block.startswith("5000 calls in "))
    codes = re.findall(r"^  \d+ \w+ +(\d+) ", sample, re.M)
    assert sum(map(int, codes)) == 5000, codes
    line = sample.split("paths: ", 1)[1].split("\n")[0]
    paths = {name: int(n) for name, n in re.findall(r"([\w-]+) (\d+)", line)}
    kinds = [paths["cancel-abortive"], paths["cancel-non-abortive"]]
    points = [n for name, n in paths.items() if name.startswith("cancel-at-")]
    said = re.search(r"In the run above the ([\d,]+) cancels are\s+([\d,]+) abortive and ([\d,]+) non-abortive, "
                     r"and ([\d +]+) by point", page)
    assert said, "the sentence adding up the sample's cancels is gone"
    total, abortive, non_abortive = (int(said.group(i).replace(",", "")) for i in (1, 2, 3))
    assert (total, [abortive, non_abortive]) == (sum(kinds), kinds)
    assert sorted(map(int, said.group(4).split(" + "))) == sorted(points) and sum(points) == total


def test_every_callstate_option_the_pages_name_exists() -> None:
    """`--callstate-*` options are the pytest plugin's and the Locust user's: neither is a
    `callstate` command line, so the parse test above never saw them. Each one a page names is
    declared by one of the two (read from their source: importing the Locust module switches
    grpc to gevent)."""
    plugin = (ROOT / "integrations" / "pytest_plugin" / "__init__.py").read_text()
    locust = (ROOT / "integrations" / "locust" / "options.py").read_text()
    declared = set(re.findall(r'addoption\("(--callstate-[a-z-]+)"', plugin))
    declared |= set(re.findall(r'^\s+"(--callstate-[a-z-]+)": \(', locust, re.M))
    assert {"--callstate-target", "--callstate-mix", "--callstate-tls-ca"} <= declared, declared
    named = {m.rstrip("-") for m in re.findall(r"--callstate-[a-z-]*[a-z]", documentation())}
    assert named and named <= declared, f"options the pages name that nothing declares: {sorted(named - declared)}"


# Options of other tools the pages name (docker, compose, locust, pytest, pip, k6, py-spy, perf, the
# benchmarks and tools/ scripts), and `--outcom`, the page's example of an abbreviation refused.
OTHER_TOOLS_FLAGS = set("""
    --base --bridge --build --cpu --exit-code-from --extras --iptables --name --network --no-build --profile
    --rm --rmi --save --scale --tag --variant --csv --expect-workers --headless --host --json-file --master
    --master-host --worker --pdb --strict --config-settings --no-index --wheel-dir --vus --format --gil --pid
    --per-thread --pdeathsig --include --protocol --driver --pin --pipe-cancels --rounds --variants --show-diff
    --check --outcom --fold --floor --threads --client --log --batches
""".split())


def test_every_option_a_page_names_is_one_of_callstates_or_a_named_tools() -> None:
    """The parse test reads command lines only; prose names options too (`--settle`, `--hold-for`).
    Each `--option` on any page is one of a `callstate` command's, a `--callstate-*` one, or one
    of the other tools listed above: a renamed option left in prose shows here."""
    import argparse

    from callstate.cli import build_parser
    flags: set[str] = set()
    parsers = [build_parser()]
    while parsers:
        for action in parsers.pop()._actions:
            flags.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9](?![\w>-])", documentation()))   # not a log arrow
    unknown = sorted(n for n in named - flags - OTHER_TOOLS_FLAGS if not n.startswith("--callstate"))
    assert not unknown, f"options the pages name that no callstate command (or listed tool) has: {unknown}"


def _figure(text: str) -> float:
    """The first figure of a limits-table cell: `1 MiB`, `4,193,280 (...)`, `600 s`, `10,000 calls`."""
    m = re.match(r"\s*([\d,.]+)\s*(KiB|MiB|GiB)?", text)
    assert m, text
    return float(m.group(1).replace(",", "")) * {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, None: 1}[m.group(2)]


def test_the_limits_table_gives_the_servers_defaults() -> None:
    """Each bound docs/limits.md gives with its `serve` flag has the default that flag has."""
    import argparse

    from callstate.cli import build_parser
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    defaults = {a.option_strings[0]: a.default for a in commands.choices["serve"]._actions if a.option_strings}
    compared = []
    for row in (ROOT / "docs" / "limits.md").read_text().splitlines():
        cells = row.split(" | ")
        if not row.startswith("| ") or len(cells) < 3:
            continue
        flags = [f for f in re.findall(r"`(--[a-z-]+)`", cells[1]) if f in defaults]
        if not flags:
            continue
        for flag, shown in zip(flags, cells[2].split(";")):
            assert _figure(shown) == defaults[flag], f"limits.md: {flag} {shown.strip()!r}, serve: {defaults[flag]}"
            compared.append(flag)
    assert len(compared) >= 18, compared


PAYMENTS_PROTO = """syntax = "proto3";
package payments.v1;
service Payments {
  rpc Charge(ChargeRequest) returns (ChargeReply);
  rpc Refund(ChargeRequest) returns (ChargeReply);
}
message ChargeRequest { string currency = 1; int64 amount = 2; }
message ChargeReply { string status = 1; }
"""


def test_the_rules_file_reference_loads_as_shown(tmp_path: Path) -> None:
    """The any-service page's rules file (the one ```yaml block) loads against a payments.v1 service
    of the shape it names, and its rules say what the page says: no test read it."""
    from callstate.rules import parse_rules
    from schema import from_protos
    (tmp_path / "payments.proto").write_text(PAYMENTS_PROTO)
    schema = from_protos([tmp_path / "payments.proto"])
    page = (ROOT / "docs" / "any-service.md").read_text()
    [sample] = [body for label, body in fences(page) if label == "yaml"]
    rules = parse_rules(sample, schema, source="rules.yaml")
    assert rules.count == 2
    request = schema.method("payments.v1.Payments/Charge").request(currency="EUR", amount=5)
    first = rules.first_match("payments.v1.Payments/Charge", {"x-tenant": "acme"}, request)
    assert first is not None and first.label == "declined" and first.script is not None
    assert first.script.abort_code == 4321 and first.reply is not None and first.reply.status == "DECLINED"
    other = schema.method("payments.v1.Payments/Charge").request(currency="USD")
    assert rules.first_match("payments.v1.Payments/Charge", {"x-tenant": "acme"}, other).label == "rules[1]"
    refund = rules.first_match("payments.v1.Payments/Refund", {}, None)   # the wildcard rule: a mix, no script
    assert refund is not None and refund.label == "rules[1]" and refund.mix is not None


def test_the_state_log_sample_is_what_a_server_writes(shared_server: ServerProcess) -> None:
    """docs/wire.md's ```json sample (a held call's non-abortive cancel, aborted 1818) is the
    server's own lines for such a call, field for field but the time and the id: its End had
    lost the `detail` the server writes."""
    import orjson

    from callstate.statelog import from_dict
    from tests.conftest import cli, ended, wait_entries
    [sample] = [body for label, body in fences((ROOT / "docs" / "wire.md").read_text()) if label == "json"]
    shown = [orjson.loads(line) for line in sample.splitlines()]
    for entry in shown:
        from_dict(entry)   # each one a state entry the checker reads
    done = cli("call", "--target", shared_server.target, "--outcome", "hold", "--cancel-after", "0.2", "--non-abortive")
    call_id = done.stdout.splitlines()[0].rsplit(" ", 1)[1]
    written = wait_entries(shared_server.log, call_id, until=ended)[-len(shown):]
    fields = [[(k, v) for k, v in e.items() if k not in ("ts", "call_id")] for e in (*shown, *written)]
    assert fields[:len(shown)] == fields[len(shown):], written   # the same fields, in the same order


def test_the_pytest_ini_sample_names_the_plugins_settings() -> None:
    """The any-service page's pytest.ini block sets settings the plugin declares (`addini`)."""
    plugin = (ROOT / "integrations" / "pytest_plugin" / "__init__.py").read_text()
    declared = set(re.findall(r'"(callstate_\w+)": "', plugin.split("_STANDIN_INI = {", 1)[1].split("}", 1)[0]))
    [sample] = [body for page in pages() for label, body in fences(_text(page)) if label == "ini"]
    keys = [line.split("=", 1)[0].strip() for line in sample.splitlines() if "=" in line]
    assert keys and set(keys) <= declared, (keys, declared)


def test_the_readmes_documentation_table_names_every_page() -> None:
    """A newcomer looks for a page in the README's table: it left out "Operating it" and
    "Client design", which only prose elsewhere linked to."""
    from tests.documentation import DOCS
    table = section("Documentation").strip().split("\n\n", 1)[0]
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", table))
    assert linked == {page.name for page in DOCS.glob("*.md")}, sorted({p.name for p in DOCS.glob("*.md")} - linked)
