"""Session 35's own fixes (the coordinator's): the Locust options taken from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)
LOCUST = [sys.executable, "-m", "locust"]
LOCUSTFILE = "import callstate.locust\n\n\nclass Plain(callstate.locust.CallstateUser):\n    pass\n"


def test_locust_options_come_from_the_environment_and_the_command_line_wins(tmp_path: Path,
                                                                             refused_target: str) -> None:
    """A container or CI job sets a run with LOCUST_CALLSTATE_* as it does Locust's own options
    (they were not read at all: the run went on with the class's defaults)."""
    (tmp_path / "locustfile.py").write_text(LOCUSTFILE)
    env = {**os.environ, "LOCUST_CALLSTATE_LOG_FILE": "from-env-{pid}.jsonl", "LOCUST_CALLSTATE_MIX": "sometimes=1"}
    run = subprocess.run([*LOCUST, "-f", "locustfile.py", "--headless", "-u", "1", "-r", "1", "-t", "1s",
                          "--host", refused_target, "--callstate-mix", "complete=100"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr   # every call 1722 (nobody listens): not a usage error
    assert list(tmp_path.glob("from-env-*.jsonl")), run.stderr      # the environment's log file
    assert not list(tmp_path.glob("callstate-client-*.jsonl"))      # not the default one

    bad = subprocess.run([*LOCUST, "-f", "locustfile.py", "--headless", "-t", "1s", "--host", refused_target],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip().splitlines()[-1].endswith(
        "error: argument --callstate-mix: mix entry 'sometimes=1': unknown name 'sometimes'; "
        "expected one of complete, abort, fatal, hold"), bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_load_run_writes_to_the_stderr_of_its_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """`callstate load` run in process (a harness, a test with capsys) writes its progress and
    notices to the stderr in place when it runs, not to the one of its module's import."""
    import io

    from callstate.cli.load.run import LoadConfig, LoadRun

    here = io.StringIO()
    monkeypatch.setattr(sys, "stderr", here)
    assert LoadRun(LoadConfig(verify=False)).out is here
