"""A newcomer's first day (audit 29): the README and the pages it links to, followed in order in a
fresh folder, and the client library used the way a harness author first uses it. Each test
here is something that misled or stuck that newcomer: a snippet whose output differed from what
prints, a `callstate call` line whose comment named no code (or the wrong one), a Python
argument taken the wrong way, a call id nowhere to be seen."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shlex
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from callstate import codes
from callstate.client import AsyncClient, CallError, Client, PipeScript, Script
from callstate.lifecycle import START_FAILED, WCOMP
from callstate.logfile import StateLog, check_files
from tests.conftest import (EVIDENCE_WAIT, ROOT, ServerProcess, cli, final, read_entries, start_server, states,
                            wait_for_text)
from tests.documentation import DOCS, _text, blocks, pages, section

pytestmark = pytest.mark.timeout(180)

BOUND = 10.0   # a wait that must not be needed: it only bounds a defect


# -- the library, misused as a harness first misuses it --------------------------------------------
def test_prepare_and_pipe_after_close_end_at_once_so_the_harness_log_checks(shared_server: ServerProcess,
                                                                            tmp_path: Path) -> None:
    """`prepare()` (or `pipe()`) on a closed client gave a call in C that nothing would ever end:
    with the harness's own log (a StateLog it shares, as the pytest plugin does) `callstate check`
    then failed with `not_ended: client stopped in C`. Now each is refused as `start()` is, 1915
    "the client is closed", and the call ends C -> End in the log."""
    path = tmp_path / "client.jsonl"
    log = StateLog(path)
    client = Client(shared_server.target, log=log)
    client.start(Script("complete")).result(BOUND)
    client.close()
    refused = []
    for make in (lambda: client.prepare(Script("complete")), lambda: client.pipe("out", PipeScript())):
        with pytest.raises(CallError) as err:
            make()
        refused.append(err.value)

    async def aio() -> None:
        aclient = AsyncClient(shared_server.target, log=log)
        await aclient.close()
        for make in (lambda: aclient.prepare(Script("complete")), lambda: aclient.pipe("both", PipeScript())):
            with pytest.raises(CallError) as err:
                make()
            refused.append(err.value)

    asyncio.run(aio())
    log.close()
    assert [(e.code, e.details) for e in refused] == [(codes.RPC_S_INVALID_ASYNC_CALL, "the client is closed")] * 4
    by_id: dict[str, list[dict[str, Any]]] = {}
    for e in read_entries(path):
        by_id.setdefault(e["call_id"], []).append(e)
    for err in refused:
        mine = by_id[err.call_id]
        assert states(mine) == ["C", "End"] and final(mine)["move"] == START_FAILED, mine
    assert check_files([path]).ok


def test_a_cancel_whose_abortive_is_not_a_bool_is_refused_naming_it(shared_server: ServerProcess) -> None:
    """`call.cancel("non-abortive")` (the CLI's word) made an abortive cancel: any non-empty text
    is true. It is a TypeError naming `abortive` now, and the call is left as it was."""
    with Client(shared_server.target) as client:
        call = client.start(Script("hold", on_cancel="complete"))
        for wrong in ("non-abortive", "no", 0, None):
            with pytest.raises(TypeError, match=r"^abortive must be True or False, not .*cancel\(abortive=False\)"):
                call.cancel(wrong)   # type: ignore[arg-type]
        assert call.state == WCOMP and call.history == ["C", "WComp"]
        call.cancel(abortive=False)   # the notice: the script completes the call on it
        assert call.result(BOUND) is not None and call.code == codes.RPC_S_OK


def test_a_wait_timeout_that_is_not_a_number_is_one_error_naming_it(shared_server: ServerProcess) -> None:
    """`result(timeout="1")` failed deep inside with `'>' not supported between instances of 'str'
    and 'int'` (sync) or `'<='` (asyncio): one TypeError naming `timeout` now, on every surface."""
    want = r"^timeout must be a number of seconds or None, not str '1'$"
    with Client(shared_server.target) as client:
        call = client.start(Script("complete"))
        pipe = client.pipe("out", PipeScript()).start()
        for wait in (call.result, call.wait, pipe.result, pipe.wait):
            with pytest.raises(TypeError, match=want):
                wait(timeout="1")   # type: ignore[arg-type]
        call.result(BOUND)
        pipe.result(BOUND)

    async def aio() -> None:
        async with AsyncClient(shared_server.target) as aclient:
            acall = aclient.start(Script("complete"))
            apipe = aclient.pipe("out", PipeScript()).start()
            for wait in (acall.result, acall.wait, apipe.result, apipe.wait):
                with pytest.raises(TypeError, match=want):
                    await wait(timeout="1")   # type: ignore[arg-type]
            await acall
            await apipe

    asyncio.run(aio())


def test_a_scripts_fields_past_its_outcome_are_given_by_name() -> None:
    """`Script("abort", 5001)`, read as "abort with 5001", was a 5001 s dispatch delay (refused by
    the server's limit, 87), and `Script("abort", 5)` a call that waited 5 s and then aborted with
    4242: no error at all. Past the outcome every field is keyword-only."""
    with pytest.raises(TypeError, match=r"positional argument"):
        Script("abort", 5)   # type: ignore[misc]
    assert Script("abort", abort_code=5).abort_code == 5 and Script("hold").outcome == "hold"


def test_completing_a_call_never_started_says_so_on_both_surfaces(shared_server: ServerProcess, tmp_path: Path) -> None:
    """`complete()` on a prepared call its harness forgot to start answered 997 "the call has not
    completed yet", which a harness polls for ever (no notification can come); `wait()` already said
    1915 "wait() before start()". complete() says "complete() before start()" now, logs nothing,
    and the call can still be started."""
    log = tmp_path / "client.jsonl"
    with Client(shared_server.target, log=log) as client:
        forgot = [client.prepare(Script("complete")), client.pipe("in", PipeScript())]
        for call in forgot:
            with pytest.raises(CallError) as err:
                call.complete()
            assert (err.value.code, err.value.details) == (codes.RPC_S_INVALID_ASYNC_CALL, "complete() before start()")
        assert forgot[0].start().result(BOUND) is not None

    async def aio() -> CallError:
        async with AsyncClient(shared_server.target, log=log) as aclient:
            with pytest.raises(CallError) as err:
                aclient.prepare(Script("complete")).complete()
            return err.value

    assert asyncio.run(aio()).details == "complete() before start()"
    assert "complete_pending" not in [e["event"] for e in read_entries(log)]
    assert check_files([log]).ok


# -- the command line: where is my call? -------------------------------------------------------------
def test_call_names_its_call_id_and_the_server_logged_it_under_that_id(shared_server: ServerProcess) -> None:
    """`callstate call` printed no call id anywhere (only --json and --log-file had it): a newcomer
    could not find the call in the server's log or `watch --call-id` it. Its first line names it."""
    done = cli("call", "--target", shared_server.target, "--outcome", "abort", "--code", "5001")
    first = done.stdout.splitlines()[0]
    m = re.search(r"--call-->  call ([0-9a-f]{32})$", first)
    assert m, done.stdout
    server = shared_server.wait_entries(m.group(1))
    assert final(server)["code"] == 5001


def test_watch_says_a_twelve_character_prefix_is_not_the_whole_id(shared_server: ServerProcess) -> None:
    """`watch` lines start with the first 12 characters of each id; `watch --call-id` with those
    waited for a call of that exact id for ever, saying only 'no call ... yet'."""
    done = cli("call", "--target", shared_server.target)
    call_id = re.search(r"call ([0-9a-f]{32})$", done.stdout.splitlines()[0]).group(1)   # type: ignore[union-attr]
    # it waits for a call of that id: read its stderr until the waiting line, then stop it (by its pid)
    watch = subprocess.Popen([sys.executable, "-m", "callstate", "watch", "--target", shared_server.target,
                              "--call-id", call_id[:12], "--timeout", "60"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert watch.stderr is not None
        waiting = watch.stderr.readline()   # its first line; --timeout bounds it
    finally:
        watch.terminate()
        watch.wait(BOUND)
    assert "waiting for it" in waiting and "the whole id is needed" in waiting and "--json" in waiting, waiting
    whole = cli("watch", "--target", shared_server.target, "--call-id", call_id, "--timeout", "20")
    assert whole.returncode == 0 and "whole id" not in whole.stderr and "End" in whole.stdout, whole.stderr


def test_a_cancel_after_that_came_too_late_says_nothing_was_cancelled(shared_server: ServerProcess) -> None:
    """docs/drive.md showed `call ... --cancel-after 0.2 --non-abortive` on a call the server
    completed at once: it printed `final: 0 RPC_S_OK` as if the cancel had been answered by a reply."""
    # 30 s, not 5: the abort comes back at once, and the timer only costs time if it fires (a
    # starved first call on a fresh channel may take seconds; 5 s was the whole margin)
    late = cli("call", "--target", shared_server.target, "--outcome", "abort", "--code", "77", "--cancel-after", "30")
    assert late.returncode == 1
    assert late.stderr.splitlines()[-1].endswith("(it ended before --cancel-after 30: nothing was cancelled)"), late.stderr
    held = cli("call", "--target", shared_server.target, "--outcome", "hold", "--cancel-after", "0.1")
    assert held.stderr.splitlines()[-1] == "final: 1818 RPC_S_CALL_CANCELLED: cancelled by the caller", held.stderr


def test_check_of_a_running_servers_log_says_a_call_in_flight_looks_not_ended(tmp_path: Path) -> None:
    """The usage page's calls, then its `check`: the `--on-cancel ignore` call is still held by
    the server (until --max-hold), and check said `not_ended ... server stopped in D` as if the
    server had lost it, with nothing on what to do. The kind's meaning says it now."""
    srv = start_server(tmp_path, "--max-hold", "60")
    try:
        call = subprocess.Popen([sys.executable, "-m", "callstate", "call", "--target", srv.target, "--outcome", "hold",
                                 "--on-cancel", "ignore"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # cancelled (abortively, as --cancel-after does) once the server holds it: a cancel on a timer
        # (--cancel-after 0.1) can beat a loaded machine's dispatch, and the server then has no call
        call_id = orjson.loads(wait_for_text(srv.log, '"state":"D"', call).splitlines()[0])["call_id"]
        call.send_signal(signal.SIGTERM)
        assert call.wait(EVIDENCE_WAIT) == 1
        srv.wait_entries(call_id, until=lambda es: "cancel_seen" in [e["event"] for e in es])   # held on, in D
        checked = cli("check", "--allow-one-side", str(srv.log))
    finally:
        srv.stop()
    assert checked.returncode == 1 and "server stopped in D" in checked.stdout, checked.stdout
    assert "a call in flight looks so: check again once it has ended" in checked.stdout, checked.stdout
    assert "closed its client (close() ends every call it logged)" in checked.stdout   # the client side's cause


# -- the documentation's snippets, as a newcomer runs them -------------------------------------------
def _masked(text: str) -> list[str]:
    text = re.sub(r"^\d\d:\d\d:\d\d\.\d{6}Z", "HH:MM:SS.ffffffZ", text, flags=re.M)
    return re.sub(r"\b[0-9a-f]{32}\b", "CALL_ID", text).splitlines()


def test_the_usage_pages_sample_output_is_what_call_prints(shared_server: ServerProcess) -> None:
    """docs/usage.md's "A call looks like this" had `[non-abortive]` on cancel_issued and
    `[delivered]` where `call` prints `[delivered in D]`: no test ran the command it came from.
    The page names that command now, and this runs it."""
    page = (DOCS / "usage.md").read_text()
    command = re.search(r"^`(callstate call [^`]+)` looks\nlike this", page, re.M)
    assert command, "the sample output names the command it comes from"
    sample = blocks(page.split(command.group(0), 1)[1])[0]   # the block right below that sentence
    assert "client  C " in sample, sample
    done = cli(*shlex.split(command.group(1))[1:], "--target", shared_server.target)
    printed, documented = _masked(done.stdout + done.stderr), _masked(sample)
    # The notice's answer and the call's outcome race (the server completes the call as it answers
    # the notice): when the outcome comes first the call ends, and nothing follows End, so the
    # page says the cancel_sent line may be missing; everything else is as shown.
    notice = [line for line in documented if ". cancel_sent" in line]
    assert len(notice) == 1 and "the `cancel_sent` line is missing" in page
    assert printed in (documented, [line for line in documented if line not in notice]), printed


def _documented_calls() -> list[tuple[str, str, int | None]]:
    """(page, the line's arguments, the final code its comment names) for every `callstate call`
    example line of every page; a synopsis (`[--token ...]`) is no example."""
    out = []
    for page in pages():
        for block in blocks(_text(page), "sh"):
            for line in re.sub(r"\\\n\s*", "", block).splitlines():
                line = line.strip()
                if not line.startswith("callstate call ") or "[" in line:
                    continue
                args, _, comment = line.partition(" #")
                numbers = re.findall(r"(?<![\w.:-])\d+\b", comment)
                out.append((str(page.relative_to(ROOT)), args.strip(), int(numbers[-1]) if numbers else None))
    return out


# Lines whose files a newcomer makes first (not the repository's own), and lines that let the
# server decide (the stand-in's rules or mix): the comment cannot name a code for those.
_NEEDS_FILES = ("--proto ", "--descriptor-set", "--data-file", "--tls-")


def test_every_call_line_in_the_docs_names_its_final_code_and_ends_with_it(tmp_path: Path) -> None:
    """Only usage.md's CLI block and the pipes page ran their `callstate call` lines: the README's
    quick start and own-proto lines, any-service.md's and drive.md's were parsed, never run, and
    drive.md's named no code (one "cancelled" a call that had completed at once). Every line now
    names its code, and each that needs no file of the reader's own runs against one stand-in of
    the repository's shop proto (which serves callstate's own Emulator too) and ends with it."""
    documented = _documented_calls()
    unnamed = [(page, args) for page, args, code in documented if code is None and "--no-script" not in args]
    assert not unnamed, f"`callstate call` lines whose comment names no final code: {unnamed}"
    runnable = sorted({(args, code) for _, args, code in documented
                       if code is not None and not any(f in args + " " for f in _NEEDS_FILES)})
    assert len(runnable) >= 25 and any("--method" in a for a, _ in runnable), runnable
    srv = start_server(tmp_path, "--proto", str(ROOT / "tests/protos/shop/v1/shop.proto"),
                       "--proto-path", str(ROOT / "tests/protos"), "--max-hold", "60")

    def run(args: str) -> Any:
        argv = [a.replace("127.0.0.1:50051", srv.target) for a in shlex.split(args)[2:]]
        if "--target" not in argv:
            argv += ["--target", srv.target]
        return cli("call", *argv, cwd=tmp_path, timeout=60)

    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(run, [args for args, _ in runnable]))
    finally:
        srv.stop()
    wrong = []
    for (args, code), done in zip(runnable, results):
        last = (done.stderr.strip().splitlines() or [""])[-1]
        if not last.startswith(f"final: {codes.describe(code)}") or done.returncode != (0 if code == 0 else 1):
            wrong.append(f"{args}  # {code}\n    -> exit {done.returncode}: {last}")
    assert not wrong, "documented calls that end otherwise:\n" + "\n".join(wrong)


def test_the_library_page_lists_every_script_field_with_its_call_option() -> None:
    """A harness author writes `Script(...)` from the CLI's options, and they differ (`--delay` is
    `outcome_delay`, `--code` is `abort_code`, `--cancel-poll-ms` is `cancel_poll` in seconds):
    no page listed the fields. Every field is in library.md's table, with a real `call` option."""
    from callstate.cli import build_parser

    table = section("Scripts in Python")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| [^|]+ \| `(--[\w-]+)`", table, re.M)}
    fields = [f.name for f in dataclasses.fields(Script)]
    assert sorted(rows) == sorted(fields), (sorted(rows), fields)
    call = build_parser()._subparsers._group_actions[0].choices["call"]   # type: ignore[union-attr]
    options = {o for action in call._actions for o in action.option_strings}
    assert set(rows.values()) <= options, set(rows.values()) - options


def test_unlabelled_blocks_are_read_as_the_page_shows_them() -> None:
    """`blocks(text, "")` took a labelled block's closing fence for an unlabelled block's opening:
    the README, with no unlabelled block, gave ten, each the prose between two blocks. A sample
    output right after a shell block (usage.md's) was never what a test read."""
    text = "prose\n```sh\ncallstate call\n```\nbetween\n```\noutput\n```\n```python\nx = 1\n```\n"
    assert blocks(text) == ["output\n"]
    assert blocks(text, "sh") == ["callstate call\n"] and blocks(text, "python") == ["x = 1\n"]
    assert blocks((ROOT / "README.md").read_text()) == []
