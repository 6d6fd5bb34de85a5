"""Session 33 container audit, the parts provable without an engine: the documented commands
that take the server's state log out of a stopped stack, and what lets SIGTERM stop the
server in time. tests/container/run.sh and scale.sh run the same for real."""

from __future__ import annotations

import json
import re

import yaml

from server.app import WATCH_DRAIN, ServerOptions
from tests.conftest import ROOT

DOCS = ROOT / "docs" / "containers.md"
COMPOSE = ROOT / "docker-compose.yml"


def documented_text() -> str:
    """docs/containers.md and the compose file's comments, a command continued over lines
    (`\\` at the end, the next line's `#` in the compose file) joined into one."""
    text = "\n".join(p.read_text() for p in (DOCS, COMPOSE))
    return re.sub(r"\\\n\s*#?", " ", text)


def test_documented_ps_lists_the_stopped_emulators() -> None:
    """`docker logs "$(docker compose ps -q emulator)"` after `up --exit-code-from`: Compose v2's
    `ps` lists only running containers, the emulator is stopped by then, and `docker logs ""`
    fails: the documented way to get the server's state log gave nothing."""
    uses = re.findall(r"docker[ -]compose (?:-f \S+ )*ps ([^)\n;]*emulator)", documented_text())
    assert len(uses) >= 4, uses   # the default stack, locust (v1 and v2), scale
    for flags in uses:
        assert re.search(r"(^|\s)(-a|--all)(\s|$)", flags), f"`ps {flags}` lists only running containers (v2)"


def test_documented_log_folder_is_made_before_it_is_written() -> None:
    """The scale profile's `docker logs "$c" > "logs/$c.jsonl"` into a folder nothing made."""
    text = documented_text()
    writes = [m.start() for m in re.finditer(r'>\s*"?logs/', text)]
    assert writes, "no documented command writes the replicas' logs"
    for at in writes:
        made = text.rfind("mkdir -p logs", 0, at)
        assert made != -1 and text.count("\n", made, at) <= 3, text[max(0, at - 200):at + 40]


def test_sigterm_reaches_the_server_and_it_stops_within_the_grace_period() -> None:
    """`docker stop` / `compose down` SIGTERM PID 1 and SIGKILL it after the grace period:
    PID 1 must be callstate itself (exec-form entrypoint, not a shell that would swallow the
    signal), the stop signal SIGTERM, and the server's own stop (its --grace, then the journal
    watchers' drain) well inside the emulator's stop_grace_period and docker stop's 10 s."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    entry = re.findall(r"^ENTRYPOINT (.*)$", dockerfile, re.M)
    assert len(entry) == 1 and json.loads(entry[-1]) == ["callstate"], entry
    signals = re.findall(r"^STOPSIGNAL (\S+)", dockerfile, re.M)
    assert signals in ([], ["SIGTERM"]), signals
    user = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert user and user[-1] not in ("root", "0", "0:0"), user
    server_stop = ServerOptions().grace + WATCH_DRAIN
    assert server_stop <= 5, server_stop                    # docker stop's default 10 s
    for path in ("docker-compose.yml", "tests/container/compose.scale.yml", "tests/container/compose.host.yml"):
        emulator = yaml.safe_load((ROOT / path).read_text())["services"].get("emulator", {})
        assert "entrypoint" not in emulator and "user" not in emulator, (path, emulator)
    grace = yaml.safe_load(COMPOSE.read_text())["services"]["emulator"]["stop_grace_period"]
    assert int(grace.rstrip("s")) >= 2 * server_stop, grace
