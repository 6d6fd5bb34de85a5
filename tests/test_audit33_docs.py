"""Session 33's newcomer audit of the README and docs: the product fixes it needed, each with the
test that fails without it. (The documentation's own checks are in tests/test_docs.py.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(60)
# what system-deps.sh looks for besides ensurepip, all "already there" (module level: a test's own
# source naming the compose binary would put it in the containers tier)
PRESENT = ("chromium", "nginx", "haproxy", "stress-ng", "npm", "docker-compose")


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.mark.parametrize("uid", ["0", "1000"])
def test_the_set_up_installs_or_names_python3_venv_when_python_has_no_ensurepip(tmp_path: Path, uid: str) -> None:
    """The README's set-up is `bash tools/system-deps.sh && python3 -m venv .venv && ...`, "on a
    machine with Python 3.11+ and nothing else installed": Debian's and Ubuntu's python3 lack
    ensurepip until python3-venv is installed, so the venv step failed on such a machine. As root
    the script now installs python3-venv; otherwise it says what to install."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    apt_log = tmp_path / "apt.log"
    _stub(stubs, "python3", "exit 1")                                # a python3 without ensurepip
    _stub(stubs, "apt-get", f'echo "$@" >> {apt_log}')               # records what would be installed
    _stub(stubs, "id", f"echo {uid}")
    for binary in PRESENT:
        _stub(stubs, binary, "exit 0")
    done = subprocess.run(["bash", str(ROOT / "tools" / "system-deps.sh")], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PATH": f"{stubs}:/usr/bin:/bin"})
    installed = apt_log.read_text() if apt_log.exists() else ""
    if uid == "0":
        assert done.returncode == 0, done.stdout + done.stderr
        assert "install -y -qq --no-install-recommends python3-venv" in installed, installed
    else:
        assert installed == "" and "install python3-venv" in done.stdout, done.stdout + done.stderr


def test_the_set_up_leaves_a_python_with_ensurepip_alone(tmp_path: Path) -> None:
    stubs = tmp_path / "bin"
    stubs.mkdir()
    apt_log = tmp_path / "apt.log"
    _stub(stubs, "python3", "exit 0")
    _stub(stubs, "apt-get", f'echo "$@" >> {apt_log}')
    _stub(stubs, "id", "echo 0")
    for binary in PRESENT:
        _stub(stubs, binary, "exit 0")
    done = subprocess.run(["bash", str(ROOT / "tools" / "system-deps.sh")], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PATH": f"{stubs}:/usr/bin:/bin"})
    assert done.returncode == 0 and not apt_log.exists() and "python3-venv" not in done.stdout, done.stdout
