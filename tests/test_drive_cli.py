"""`callstate call --method` and `callstate load --method`: any service from the command line,
against a plain grpc.aio server that is not callstate (one-sided) and callstate's own
`Emulator/Call` by name (both sides), and `check --allow-one-side`."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from callstate.lifecycle import CANCEL_ESCALATED
from tests.conftest import ServerProcess, cli, final, read_entries, states
from tests.test_drive import CHARGE, PROTOS, SHOP, TRACK, ShopServer, shop  # noqa: F401  (the fixture)

TIMEOUT = 120   # a bound for each command on a busy machine, never a measure


def test_call_a_unary_method_by_reflection_prints_its_reply(shop: ShopServer) -> None:  # noqa: F811
    result = cli("call", "--target", shop.target, "--method", CHARGE, "--json",
                 "--data", '{"order_id": "c-1", "amount": {"currency": "EUR", "units": 5}}', timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert '"charge_id":"ch-c-1"' in result.stderr and "final: 0 RPC_S_OK: reply" in result.stderr
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [e["state"] for e in lines] == ["C", "WComp", "Comp", "End"]
    assert lines[0]["call_id"] in shop.seen   # the id went out as callstate-call-id


def test_call_cancels_a_held_unary_call_and_the_real_server_sees_it(shop: ShopServer, tmp_path: Path) -> None:  # noqa: F811
    log = tmp_path / "client.jsonl"
    result = cli("call", "--target", shop.target, "--method", CHARGE, "--proto", str(SHOP), "--proto-path",
                 str(PROTOS), "--data", '{"order_id": "hold"}', "--outcome", "hold", "--cancel-after", "0.5",
                 "--log-file", str(log), timeout=TIMEOUT)
    assert result.returncode == 1 and "1818 RPC_S_CALL_CANCELLED" in result.stderr
    entries = read_entries(log)
    assert states(entries) == ["C", "WComp", "Can", "WComp", "Comp", "End"]
    # a cancel that beats the dispatch on a busy machine never starts the handler; one that
    # follows it must be seen (the library tests wait for the dispatch before cancelling)
    assert shop.wait_seen(entries[0]["call_id"], "cancelled") in (["dispatch", "cancelled"], [])


def test_call_non_abortive_on_a_server_that_is_not_callstate_escalates(shop: ShopServer, tmp_path: Path) -> None:  # noqa: F811
    log = tmp_path / "client.jsonl"
    result = cli("call", "--target", shop.target, "--method", CHARGE, "--data", '{"order_id": "hold"}',
                 "--cancel-after", "0.2", "--non-abortive", "--log-file", str(log), timeout=TIMEOUT)
    assert result.returncode == 1 and "1818" in result.stderr
    assert "cancel_escalated" in result.stdout and "not callstate" in result.stdout
    assert any(e["event"] == CANCEL_ESCALATED for e in read_entries(log))


def test_call_a_server_stream_is_an_out_pipe_cancelled_after_three_messages(shop: ShopServer,  # noqa: F811
                                                                            tmp_path: Path) -> None:
    log = tmp_path / "client.jsonl"
    result = cli("call", "--target", shop.target, "--method", TRACK, "--data", '{"order_id": "forever"}',
                 "--cancel-at", "after-received:3", "--log-file", str(log), timeout=TIMEOUT)
    assert result.returncode == 1 and "pulled 3" in result.stderr
    # each message the server streamed is shown as it came, in its proto JSON form
    assert re.findall(r"^pulled (\d): (.*)$", result.stderr, re.M)[:3] == [
        ("1", '{"where":"hop 1"}'), ("2", '{"where":"hop 2"}'), ("3", '{"where":"hop 3"}')]
    entries = read_entries(log)
    assert states(entries) == ["C", "Pull", "Can", "WComp", "Comp", "End"] and final(entries)["code"] == 1818
    assert shop.wait_seen(entries[0]["call_id"], "cancelled")[-1] == "cancelled"


@pytest.mark.parametrize("args, message", [
    (["--method", "shop.v1.Shop/Refund"], "unknown method 'shop.v1.Shop/Refund'; the schema has: shop.v1.Shop/Charge"),
    (["--method", CHARGE, "--data", '{"order": 1}'], '--data: shop.v1.ChargeRequest: Message type "shop.v1.ChargeRequest" '
                                                    'has no field named "order"'),
    (["--method", CHARGE, "--data", "{not json"], "--data: shop.v1.ChargeRequest:"),
    (["--method", CHARGE, "--data-file", "{tmp}/none.jsonl"], "--data-file {tmp}/none.jsonl: cannot read it"),
    (["--method", CHARGE, "--data-file", "{tmp}/bad.jsonl"], "{tmp}/bad.jsonl:3: shop.v1.ChargeRequest:"),
    (["--method", CHARGE, "--data-file", "{tmp}/empty.jsonl"], "holds no request"),
    (["--method", CHARGE, "--descriptor-set", "{tmp}/none.pb"], "{tmp}/none.pb: no such descriptor-set file"),
    (["--method", CHARGE, "--proto", "{tmp}/none.proto"], "{tmp}/none.proto: no such .proto file"),
    (["--method", CHARGE, "--target", "{refused}"], "reflection from {refused}: UNAVAILABLE"),   # refused_target
    (["--data", "{}"], "--data needs --method"),
    (["--method", TRACK, "--pipe", "in"], "--pipe in: shop.v1.Shop/Track is server-streaming"),
])
@pytest.mark.parametrize("command", ["call", "load"])
def test_bad_input_is_one_line_and_exit_2(shop: ShopServer, tmp_path: Path, command: str, args: list[str],  # noqa: F811
                                          message: str, refused_target: str) -> None:
    if command == "load" and "--pipe" in args:
        args = [a if a != "--pipe" else "--pipes" for a in args]
        args[-1], message = "in=10", "--pipes: the calls on shop.v1.Shop/Track are server-streaming"
    (tmp_path / "bad.jsonl").write_text('{"order_id": "a"}\n\n{"amount": {"units": "many"}}\n')
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    args = [a.replace("{tmp}", str(tmp_path)).replace("{refused}", refused_target) for a in args]
    message = message.replace("{refused}", refused_target)
    log = tmp_path / "client.jsonl"
    result = cli(command, "--target", shop.target, *args, "--log-file", str(log), timeout=TIMEOUT)
    err = result.stderr.strip()
    assert result.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert message.replace("{tmp}", str(tmp_path)) in err
    assert read_entries(log) == []   # nothing was started


# -- load against a server that is not callstate: one-sided --------------------------------------------
def test_load_with_cancels_against_a_real_server_checks_the_client_side_and_says_the_server_is_unknown(
        shop: ShopServer, tmp_path: Path) -> None:  # noqa: F811
    log, report_file, data = tmp_path / "client.jsonl", tmp_path / "report.json", tmp_path / "orders.jsonl"
    html = tmp_path / "report.html"
    data.write_text('{"order_id": "a"}\n{"order_id": "b"}\n{"order_id": "c"}\n')
    before = len(shop.orders)
    result = cli("load", "--target", shop.target, "--method", CHARGE, "--data-file", str(data), "--calls", "300",
                 "--cancel", "abortive=30,non-abortive=20", "--log-file", str(log), "--report", str(report_file),
                 "--html", str(html), "--seed", "7", timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "check: OK on the client side only" in out and "the server side is unknown" in out
    assert "cancel propagation: not measurable" in out
    report = orjson.loads(report_file.read_bytes())
    assert report["check"]["one_sided"] == "client" and report["check"]["calls"] == 300
    assert "not a callstate server" in report["server"]["unknown"] and report["config"]["method"] == CHARGE
    assert report["cancel_propagation_ms"]["not_measurable"]
    assert report["paths"]["cancel-non-abortive"] > 0 and report["by_code"]["1818"] > 0
    assert set(shop.orders[before:]) == {"a", "b", "c"}
    # the HTML report says it too (it said "No cancel reached a call the server had already dispatched")
    page = " ".join(re.sub(r"<[^>]+>", " ", html.read_text()).split())
    assert "Not measurable: only the client side is logged, the server side is unknown" in page
    assert "the server side is unknown, and the two sides were not compared" in page
    assert "No cancel reached" not in page
    # the log alone is one side: check says so, and judges it with --allow-one-side
    checked = cli("check", str(log), timeout=TIMEOUT)
    assert checked.returncode == 1 and "--allow-one-side" in checked.stderr
    assert "only client entries, the server side is unknown" in checked.stdout
    allowed = cli("check", "--allow-one-side", str(log), timeout=TIMEOUT)
    assert allowed.returncode == 0 and "OK: every invariant holds on the client side" in allowed.stdout
    assert "cancel propagation: not measurable" in allowed.stdout


def test_load_sends_the_data_files_requests_in_turn(shop: ShopServer, tmp_path: Path) -> None:  # noqa: F811
    data = tmp_path / "orders.jsonl"
    # ids of its own: a call the test before cancelled may still reach the shared shop late
    data.write_text('{"order_id": "t1"}\n{"order_id": "t2"}\n\n{"order_id": "t3"}\n')
    before = len(shop.orders)
    result = cli("load", "--target", shop.target, "--method", CHARGE, "--data-file", str(data), "--calls", "7",
                 "--concurrency", "1", "--cancel", "none", "--mix", "complete=100", timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [o for o in shop.orders[before:] if o.startswith("t")] == ["t1", "t2", "t3", "t1", "t2", "t3", "t1"]


def test_one_sided_check_still_finds_a_violation(tmp_path: Path) -> None:
    log = tmp_path / "client.jsonl"
    entry = {"ts": "2026-12-04T10:00:00.000001Z", "side": "client", "call_id": "x", "state": "C", "prev": None,
             "event": "enter", "move": "call"}
    log.write_bytes(orjson.dumps(entry) + b"\n")   # never reaches End
    result = cli("check", "--allow-one-side", str(log), timeout=TIMEOUT)
    assert result.returncode == 1 and "not_ended" in result.stdout


@pytest.mark.parametrize("method", [TRACK, "shop.v1.Shop/Upload", "shop.v1.Shop/Chat"])
def test_load_on_streaming_methods_makes_pipes_of_their_shape(shop: ShopServer, tmp_path: Path,  # noqa: F811
                                                               method: str) -> None:
    report_file = tmp_path / "report.json"
    result = cli("load", "--target", shop.target, "--method", method, "--data", "{}", "--calls", "120",
                 "--cancel", "abortive=40,non-abortive=20", "--report", str(report_file), "--seed", "3",
                 "--html", str(tmp_path / "run.html"), timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    report = orjson.loads(report_file.read_bytes())
    kind = {TRACK: "out", "shop.v1.Shop/Upload": "in", "shop.v1.Shop/Chat": "both"}[method]
    assert report["paths"][f"pipe-{kind}"] == 120 and report["check"]["one_sided"] == "client"
    assert "server_side</th><td class=\"mono\">unknown: " in (tmp_path / "run.html").read_text()


# -- callstate's own proto by name: both sides log, check judges both --------------------------------
def test_load_on_emulator_call_by_name_checks_both_sides(shared_server: ServerProcess, tmp_path: Path) -> None:
    log, report_file = tmp_path / "client.jsonl", tmp_path / "report.json"
    result = cli("load", "--target", shared_server.target, "--method", "callstate.v1.Emulator/Call", "--data", "{}",
                 "--calls", "200", "--cancel", "abortive=30,non-abortive=20", "--log-file", str(log),
                 "--report", str(report_file), timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    report = orjson.loads(report_file.read_bytes())
    assert "one_sided" not in report["check"] and report["server"]["dispatched"] > 0
    assert "every invariant holds on both sides" in result.stdout
    checked = cli("check", str(log), str(shared_server.log), timeout=TIMEOUT)
    assert checked.returncode == 0, checked.stdout
    assert "one-sided" not in checked.stdout


def test_call_emulator_call_by_name_with_the_script_in_its_message(shared_server: ServerProcess,
                                                                  tmp_path: Path) -> None:
    log = tmp_path / "client.jsonl"
    result = cli("call", "--target", shared_server.target, "--method", "callstate.v1.Emulator.Call", "--no-script",
                 "--data", '{"script": {"outcome": "OUTCOME_ABORT", "abort_code": 4321}}', "--log-file", str(log),
                 timeout=TIMEOUT)
    assert result.returncode == 1 and "final: 4321" in result.stderr
    call_id = read_entries(log)[0]["call_id"]
    assert final(shared_server.wait_entries(call_id))["code"] == 4321
    assert cli("check", str(log), str(shared_server.log), timeout=TIMEOUT).returncode == 0


@pytest.mark.parametrize("method", [CHARGE, TRACK])
def test_load_no_script_sends_no_script_header_and_the_server_decides(shop: ShopServer, tmp_path: Path,  # noqa: F811
                                                                       method: str) -> None:
    """`load --method --no-script`, as `call --no-script`: no callstate-script header on any call
    (unary or pipe), so a stand-in's rules (here: the shop's own code) decide the outcome."""
    from callstate.script_header import SCRIPT_HEADER

    for no_script in (True, False):   # without it, the same run sends its script on every call
        log, report_file = tmp_path / f"client-{no_script}.jsonl", tmp_path / f"report-{no_script}.json"
        result = cli("load", "--target", shop.target, "--method", method, "--data", '{"order_id": "ns"}',
                     "--calls", "12", "--cancel", "abortive=25", "--log-file", str(log), "--report", str(report_file),
                     *(["--no-script"] if no_script else []), timeout=TIMEOUT)
        assert result.returncode == 0, result.stdout + result.stderr
        ids = {e["call_id"] for e in read_entries(log)}
        reached = [shop.headers[i] for i in ids if i in shop.headers]   # a cancel before start sends nothing
        assert reached and all((SCRIPT_HEADER in h) is not no_script for h in reached), (no_script, reached[0])
        paths = orjson.loads(report_file.read_bytes())["paths"]
        assert (paths.get("no-script") == 12) is no_script, paths


@pytest.mark.parametrize("args, line", [
    (["load", "--no-script"], "callstate load: --no-script needs --method"),
    (["call", "--no-script"], "callstate call: --no-script needs --method"),
    (["load", "--method", CHARGE, "--no-script", "--mix", "hold=100", "--abort-code", "7"],
     "callstate load: error: --mix and --abort-code: with --no-script no script is sent, the server decides each "
     "call's outcome (see callstate load --help)")])
def test_no_script_without_a_method_or_with_script_options_is_a_usage_error(args: list[str], line: str,
                                                                           refused_target: str) -> None:
    result = cli(*args, "--target", refused_target, timeout=TIMEOUT)
    assert result.returncode == 2 and result.stderr.strip() == line, result.stderr
