"""The pipe rules, each with its code: the client pipe surfaces refuse what the runtime refuses
(1831 wrong pipe, 1916 closed, 1918 empty, 1917 data after the server's null push), a pipe script
makes the server break a rule on purpose, a raw caller that breaks one is caught by the server,
and `callstate check` holds a 1917 to a logged breach. A real `callstate serve` over loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from callstate import codes
from callstate.grpc_status import grpc_status_for
from callstate.check import check_entries
from callstate.logfile import check_files
from callstate.client import AsyncClient, CallError, Client, PipeScript
from callstate.lifecycle import PIPE_BREACH
from callstate.pipe_script import validate_pipe
from callstate.script import ScriptError
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from callstate.wire import CALL_ID_KEY, CODE_KEY, PIPE_SCRIPT_KEY, new_call_id
from tests.conftest import ServerProcess, cli, final, read_entries, start_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def rules_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("rules"), "--max-hold", "20")
    yield srv
    srv.stop()


def test_the_code_table_has_the_pipe_codes_and_their_grpc_status() -> None:
    assert (codes.RPC_X_WRONG_PIPE_ORDER, codes.RPC_X_PIPE_CLOSED, codes.RPC_X_PIPE_DISCIPLINE_ERROR,
            codes.RPC_X_PIPE_EMPTY) == (1831, 1916, 1917, 1918)
    assert codes.describe(1831) == "1831 RPC_X_WRONG_PIPE_ORDER"
    assert codes.describe(1917) == "1917 RPC_X_PIPE_DISCIPLINE_ERROR"
    assert codes.describe(1918) == "1918 RPC_X_PIPE_EMPTY"
    for code in (1831, 1916, 1917):
        assert grpc_status_for(code) == grpc.StatusCode.FAILED_PRECONDITION
    assert grpc_status_for(1918) == grpc.StatusCode.OUT_OF_RANGE
    # only the trailer names a pipe code: a bare FAILED_PRECONDITION from another service is not one
    assert codes.from_grpc(grpc.StatusCode.FAILED_PRECONDITION, ((CODE_KEY, "1917"),)) == 1917
    assert codes.from_grpc(grpc.StatusCode.FAILED_PRECONDITION) == codes.RPC_S_CALL_FAILED


def test_docs_code_table_lists_the_pipe_codes() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "model.md").read_text()
    for code in (1831, 1916, 1917, 1918):
        assert f"| {code} `{codes.name(code)}`" in text


# -- the caller's side: what the surfaces refuse ------------------------------------------------------
async def _aio_refusals(srv: ServerProcess, log: Path, details: dict[str, str]) -> dict[str, int]:
    got: dict[str, int] = {}

    async def expect(name: str, op: Any) -> None:
        try:
            await op
        except CallError as err:
            got[name] = err.code
            details[name] = err.details

    async with AsyncClient(srv.target, log=log) as client:
        out = client.pipe("out", PipeScript(messages=2)).start()
        await expect("push on out", out.push(b"x"))
        assert [await out.pull(), await out.pull()] != [None, None]
        assert await out.pull() is None                  # the null pull: the server's pipe ended
        await expect("pull past the end", out.pull())
        await out.result()
        await expect("pull after completing", out.pull())
        inp = client.pipe("in", PipeScript()).start()
        await expect("pull on in", inp.pull())
        await inp.push(b"a")
        await inp.close_push()
        await expect("push after the null push", inp.push(b"b"))
        assert (await inp.result()).received == 1
    return got


def _sync_refusals(srv: ServerProcess, log: Path, details: dict[str, str]) -> dict[str, int]:
    got: dict[str, int] = {}

    def expect(name: str, op: Any, *args: Any) -> None:
        try:
            op(*args)
        except CallError as err:
            got[name] = err.code
            details[name] = err.details

    with Client(srv.target, log=log) as client:
        out = client.pipe("out", PipeScript(messages=2)).start()
        expect("push on out", out.push, b"x")
        assert out.pull() is not None and out.pull() is not None
        assert out.pull() is None
        expect("pull past the end", out.pull)
        out.result()
        expect("pull after completing", out.pull)
        inp = client.pipe("in", PipeScript()).start()
        expect("pull on in", inp.pull)
        inp.push(b"a")
        inp.close_push()
        expect("push after the null push", inp.push, b"b")
        assert inp.result().received == 1
    return got


EXPECTED = {"push on out": 1831, "pull on in": 1831, "pull past the end": 1918, "pull after completing": 1916,
            "push after the null push": 1916}


@pytest.mark.parametrize("surface", ["asyncio", "sync"])
def test_the_pipe_surfaces_refuse_what_the_runtime_refuses(rules_server: ServerProcess, tmp_path: Path,
                                                           surface: str) -> None:
    log, details = tmp_path / "client.jsonl", dict[str, str]()
    got = (asyncio.run(_aio_refusals(rules_server, log, details)) if surface == "asyncio"
           else _sync_refusals(rules_server, log, details))
    assert got == EXPECTED
    # refused by the library before the wire, saying why (gRPC refusing the write would say the call ended)
    assert "null push" in details["push after the null push"], details
    rules_server.wait_entries(read_entries(log)[-1]["call_id"])
    report = check_files([log, rules_server.log])   # a refused operation leaves the lifecycle untouched
    assert report.ok, report.summary()


# -- the server breaks a rule on purpose ----------------------------------------------------------------
@pytest.mark.parametrize("kind,at", [("in", "after-in"), ("both", "before-first")])
def test_a_server_that_completes_before_draining_ends_1917(rules_server: ServerProcess, tmp_path: Path,
                                                           kind: str, at: str) -> None:
    log = tmp_path / "client.jsonl"

    async def run() -> tuple[int, str]:
        async with AsyncClient(rules_server.target, log=log) as client:
            pipe = client.pipe(kind, PipeScript(at=at, at_count=1 if at == "after-in" else 0,
                                                breach="complete-undrained"))
            pipe.start()
            try:
                await pipe.push(b"1")
            except CallError as err:   # the server may have ended the call first (before-first)
                assert err.code == codes.RPC_X_PIPE_CLOSED
            try:
                await pipe.result(timeout=20)
            except CallError as err:
                return err.code, pipe.call_id
            return 0, pipe.call_id

    code, call_id = asyncio.run(run())
    assert code == codes.RPC_X_PIPE_DISCIPLINE_ERROR
    server = rules_server.wait_entries(call_id)
    assert [e["detail"] for e in server if e["event"] == PIPE_BREACH] == [
        "completed before pulling the caller's pipe to its end"]
    assert final(server)["code"] == 1917 and final(server)["grpc_status"] == "FAILED_PRECONDITION"
    report = check_files([log, rules_server.log])
    assert report.ok, report.summary()
    # the invariant: the same logs without the breach entry are judged wrong
    entries = [e for e in read_entries(log, call_id) + server if e["event"] != PIPE_BREACH]
    report = check_entries(entries)
    assert [v.kind for v in report.violations] == ["pipe_breach_missing", "pipe_breach_missing"], report.summary()
    # the server's log alone (a client under test that writes none): its own 1917 needs its own breach
    assert check_entries(server).ok
    report = check_entries([e for e in server if e["event"] != PIPE_BREACH])
    assert [v.kind for v in report.violations] == ["pipe_breach_missing"], report.summary()


@pytest.mark.parametrize("surface", ["asyncio", "sync"])
def test_data_after_the_servers_null_push_is_a_discipline_error(rules_server: ServerProcess, tmp_path: Path,
                                                                surface: str) -> None:
    log = tmp_path / "client.jsonl"
    script = PipeScript(messages=2, breach="push-after-end")

    async def run_aio() -> tuple[list[Any], int, int, str]:
        async with AsyncClient(rules_server.target, log=log) as client:
            pipe = client.pipe("out", script).start()
            pulled = [await pipe.pull() for _ in range(3)]
            try:
                await pipe.pull()
                pulled_code = 0
            except CallError as err:
                pulled_code = err.code
            try:
                await pipe.result()
                code = 0
            except CallError as err:
                code = err.code
            return pulled, pulled_code, code, pipe.call_id

    def run_sync() -> tuple[list[Any], int, int, str]:
        with Client(rules_server.target, log=log) as client:
            pipe = client.pipe("out", script).start()
            pulled = [pipe.pull() for _ in range(3)]
            try:
                pipe.pull()
                pulled_code = 0
            except CallError as err:
                pulled_code = err.code
            try:
                pipe.result()
                code = 0
            except CallError as err:
                code = err.code
            return pulled, pulled_code, code, pipe.call_id

    pulled, pulled_code, code, call_id = asyncio.run(run_aio()) if surface == "asyncio" else run_sync()
    assert [m is not None for m in pulled] == [True, True, False]   # two messages, then the server's null push
    assert pulled_code == code == codes.RPC_X_PIPE_DISCIPLINE_ERROR
    client = read_entries(log, call_id)
    assert [e["detail"] for e in client if e["event"] == PIPE_BREACH] == ["the server pushed after its null push"]
    server = rules_server.wait_entries(call_id)
    assert [e["detail"] for e in server if e["event"] == PIPE_BREACH] == ["pushed after its null push"]
    report = check_files([log, rules_server.log])
    assert report.ok, report.summary()


def test_a_raw_caller_that_pushes_after_its_null_push_is_caught(rules_server: ServerProcess) -> None:
    """A caller under test that breaks the discipline: the server logs the breach and ends 1917."""
    call_id = new_call_id()
    msgs = [pb.PipeMessage(seq=1), pb.PipeMessage(null_push=True), pb.PipeMessage(seq=2)]
    with grpc.insecure_channel(rules_server.target) as channel:
        stub = pb_grpc.EmulatorStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.PipeIn(iter(msgs), metadata=((CALL_ID_KEY, call_id),), timeout=20)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert dict(info.value.trailing_metadata())[CODE_KEY] == "1917"
    server = rules_server.wait_entries(call_id)
    assert [e["detail"] for e in server if e["event"] == PIPE_BREACH] == ["the caller pushed after its null push"]
    assert final(server)["code"] == 1917


def test_breach_scripts_are_validated_by_kind_and_point(rules_server: ServerProcess) -> None:
    with pytest.raises(ScriptError, match="script.breach: complete-undrained does not apply to an out pipe"):
        validate_pipe(PipeScript(breach="complete-undrained", at="before-first").to_proto(), "out")
    with pytest.raises(ScriptError, match="needs a point before the end"):
        validate_pipe(PipeScript(breach="complete-undrained").to_proto(), "in")
    with pytest.raises(ScriptError, match="push-after-end does not apply to an in pipe"):
        validate_pipe(PipeScript(breach="push-after-end").to_proto(), "in")
    with pytest.raises(ScriptError, match="not with outcome abort"):
        validate_pipe(PipeScript(breach="push-after-end", outcome="abort").to_proto(), "out")
    # the server refuses the same script as sent (87, naming the field)
    bad = pb.PipeScript(breach=pb.PIPE_BREACH_PUSH_AFTER_END)
    with grpc.insecure_channel(rules_server.target) as channel:
        stub = pb_grpc.EmulatorStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.PipeIn(iter([pb.PipeMessage(null_push=True)]),
                        metadata=((PIPE_SCRIPT_KEY, bad.SerializeToString()),), timeout=20)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "script.breach" in info.value.details()


def test_cli_pipe_breach_and_cancel_poll(rules_server: ServerProcess, tmp_path: Path) -> None:
    run = cli("call", "--target", rules_server.target, "--pipe", "out", "--breach", "push-after-end", "--json")
    assert run.returncode == 1 and "1917" in run.stdout, run.stdout + run.stderr
    run = cli("call", "--target", rules_server.target, "--pipe", "out", "--breach", "complete-undrained")
    assert run.returncode in (1, 2) and "complete-undrained does not apply to an out pipe" in run.stdout + run.stderr
    run = cli("call", "--target", rules_server.target, "--outcome", "hold", "--cancel-poll-ms", "200",
              "--cancel-after", "0.05", "--non-abortive", "--json")
    assert run.returncode == 1 and "1818" in run.stdout, run.stdout + run.stderr
    assert cli("call", "--target", rules_server.target, "--cancel-poll-ms", "-3").returncode == 2
    # a breach on a unary call would be dropped and the call complete 0: a usage error instead
    run = cli("call", "--target", rules_server.target, "--breach", "push-after-end")
    assert run.returncode == 2 and "--breach push-after-end" in run.stderr and "--pipe" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and not run.stdout


def test_a_script_header_carries_breach_and_cancel_poll_with_the_cli_names() -> None:
    from callstate.script_header import SCRIPT_HEADER, decode, encode

    script = PipeScript(breach="push-after-end", cancel_poll=0.2).to_proto()
    text = encode(script)
    assert '"breach":"push-after-end"' in text and '"cancel_poll_ms":"200"' in text
    assert decode({SCRIPT_HEADER: text}, "out") == script
    with pytest.raises(ScriptError, match="breach"):
        decode({SCRIPT_HEADER: '{"breach": "sometimes"}'}, "out")


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.test_standin import generated_shop
    yield from generated_shop(tmp_path_factory)


def test_a_stand_in_breaks_the_rules_its_messages_can_carry(tmp_path: Path, shop: Any) -> None:
    """A user's proto: completing undrained is a breach like any other (1917); pushing after the
    null push is refused, since a user's messages cannot carry a null push."""
    from tests.test_standin import standin_args

    (tmp_path / "rules.yaml").write_text("rules: []\n")
    srv = start_server(tmp_path, *standin_args(tmp_path / "rules.yaml"), name="standin")
    try:
        with grpc.insecure_channel(srv.target) as channel:
            stub = shop.grpc.ShopStub(channel)
            with pytest.raises(grpc.RpcError) as undrained:
                stub.Upload(iter([shop.pb.Chunk()] * 3), timeout=20, metadata=(
                    (CALL_ID_KEY, "standin-undrained"),
                    ("callstate-script", '{"breach": "complete-undrained", "at": "after-in", "at_count": 1}')))
            assert undrained.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert dict(undrained.value.trailing_metadata())[CODE_KEY] == "1917"
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.Track(shop.pb.TrackRequest(), timeout=20, metadata=(
                    ("callstate-script", '{"breach": "push-after-end"}'),)))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "push-after-end needs callstate.v1.PipeMessage" in refused.value.details()
        entries = srv.wait_entries("standin-undrained")
        assert [e["event"] for e in entries].count(PIPE_BREACH) == 1 and final(entries)["code"] == 1917
    finally:
        srv.stop()
