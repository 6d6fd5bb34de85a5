"""The compose files as written (no engine needed): what each profile needs to run as its
documented command runs it. tests/container runs them for real where an engine is at hand."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from callstate.cli.conformance.calls import BatteryConfig
from tests.conftest import ROOT
from tests.documentation import pages as documentation_pages

COMPOSE = ROOT / "docker-compose.yml"
DOCS = ROOT / "docs" / "containers.md"


def services(path: str = "docker-compose.yml") -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / path).read_text())["services"]


def default(value: str) -> str:
    """`${VAR:-default}` -> default."""
    found = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return found.group(1) if found else value


def test_every_service_that_writes_reports_mounts_them() -> None:
    """The locust workers write their client logs under /reports but had no volume there
    (FileNotFoundError, 0 requests, exit 0)."""
    for name, svc in services().items():
        command = " ".join(map(str, svc.get("command", [])))
        writes = "/reports" in command or name == "worker"   # the master tells workers where: /reports
        mounts = any(str(v).endswith(":/reports") for v in svc.get("volumes", []))
        assert mounts or not writes, f"service {name} writes /reports without mounting it"


def test_the_emulators_max_hold_outlasts_the_conformance_held_row() -> None:
    """The gateway profile's conformance failed `held` every time: the row completes calls
    after --hold-seconds (10 s), and an emulator max hold of 10 s ended them first."""
    for path in ("docker-compose.yml", "docker-compose.secure.yml"):
        command = [str(c) for c in services(path)["emulator"]["command"]]
        max_hold = float(default(command[command.index("--max-hold") + 1]))
        assert max_hold > BatteryConfig().hold_seconds + 5, (path, max_hold)


def test_documented_profile_commands_name_the_services_they_wait_for() -> None:
    """`up --exit-code-from X` with no service named starts the default `load` too, and its
    exit stops the stack (locust-master 137). Every such command names its services."""
    # every page and the compose file's comments; a command continued over lines (`\` at the end,
    # and the next line's `#` in the compose file) is one command
    text = "\n".join(p.read_text() for p in (COMPOSE, *documentation_pages()))
    text = re.sub(r"\\\n\s*#?", " ", text)
    commands = [" ".join(c.split()) for c in re.findall(r"docker[ -]compose [^\n]*", text)
                + re.findall(r"`(docker[ -]compose [^`]*)`", text)]   # inline code wraps with the prose
    profiled = [c for c in commands if "--profile" in c and "--exit-code-from" in c]
    for profile in ("locust", "gateway", "scale"):   # each profile's documented command is among them
        assert any(f"--profile {profile} " in c for c in profiled), (profile, profiled)
    assert len(profiled) >= 5, profiled   # locust and gateway, compose v1 and v2; scale
    for c in profiled:
        target = re.search(r"--exit-code-from (\S+)", c).group(1)  # type: ignore[union-attr]
        assert re.search(rf"--exit-code-from {re.escape(target)}\b.*\s{re.escape(target)}\b", c), c
    assert any(c.startswith("docker-compose ") for c in profiled) and any(c.startswith("docker compose ") for c in profiled)


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (v1) is not installed")
@pytest.mark.parametrize("profile", ["", "locust", "gateway", "scale", "secure"])
def test_compose_v1_accepts_every_profile(profile: str) -> None:
    files = ["-f", str(COMPOSE)] + (["-f", str(ROOT / "docker-compose.secure.yml")] if profile == "secure" else [])
    args = ["docker-compose", *files] + (["--profile", profile] if profile not in ("", "secure") else []) + ["config", "-q"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CALLSTATE_TOKEN": "t0ken"})   # the secure overlay requires one
    assert done.returncode == 0, done.stderr
