"""The repository's tools as CI runs them: tools/system-deps.sh with a fake apt-get on PATH."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import ROOT

LOCKED = """#!/bin/bash
echo "apt-get $*" >> "$(dirname "$0")/calls"
case "$*" in *install*)
  echo "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (apt-get)" >&2; exit 100;;
esac
exit 0
"""


def fake_bin(tmp: Path, apt_get: str, uid: str = "0") -> Path:
    """A PATH with only a fake `apt-get` and `id` (none of the packages' binaries is on it)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name, text in (("apt-get", apt_get), ("id", f"#!/bin/bash\necho {uid}\n"),
                       ("grep", '#!/bin/bash\nexec /bin/grep "$@"\n'), ("tail", '#!/bin/bash\nexec /usr/bin/tail "$@"\n'),
                       ("dirname", '#!/bin/bash\nexec /usr/bin/dirname "$@"\n')):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def run_deps(bin_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/bash", str(ROOT / "tools" / "system-deps.sh")], capture_output=True, text=True,
                          timeout=60, env={"PATH": str(bin_dir), "APT_LOCK_WAIT": "0"})


def test_system_deps_fails_when_the_apt_lock_stops_every_install(tmp_path: Path) -> None:
    """It exited 0 having installed nothing, so CI went on and skipped the gateway tests."""
    done = run_deps(fake_bin(tmp_path, LOCKED))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Could not get lock /var/lib/dpkg/lock-frontend" in done.stdout
    assert "FAILED to install: chromium nginx haproxy stress-ng" in done.stderr
    assert "DPkg::Lock::Timeout=0" in (tmp_path / "bin" / "calls").read_text()   # it waits for the lock first


def test_system_deps_without_root_installs_nothing_and_says_why(tmp_path: Path) -> None:
    done = run_deps(fake_bin(tmp_path, LOCKED, uid="1000"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("needs root and apt-get") == 5 and not (tmp_path / "bin" / "calls").exists()


def test_system_deps_succeeds_when_apt_does(tmp_path: Path) -> None:
    done = run_deps(fake_bin(tmp_path, "#!/bin/bash\nexit 0\n"))
    assert done.returncode == 0 and done.stderr == "", done.stdout + done.stderr
