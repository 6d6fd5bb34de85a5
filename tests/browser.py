"""Render a local HTML file in a real headless Chromium: screenshot, console messages, and the
network requests the page made (from Chromium's own net log).

Console messages come from `--enable-logging=stderr` (every console message and uncaught
error is logged as an INFO:CONSOLE line). Network requests come from `--log-net-log`: the
page's own requests are the URL requests whose network isolation key is the file:// page
(Chromium's background traffic has another key). `--host-resolver-rules` resolves every
host to nothing, so no request can leave the machine whatever the page asks for.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MISSING = "chromium is not installed (bash tools/system-deps.sh installs it)"
CONSOLE = re.compile(r":CONSOLE[^\]]*\] \"(?P<message>.*)\", source: (?P<source>.*)$")
RENDER_TIMEOUT_S = 90


@dataclass
class Rendered:
    screenshot: Path
    console: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    stderr: str = ""


def render(page: Path, tmp: Path, width: int = 1280, height: int = 2000) -> Rendered:
    """Load `page` once in headless Chromium and return what it showed, logged and fetched."""
    assert CHROMIUM, MISSING
    shot, netlog, profile = tmp / f"{page.stem}.png", tmp / f"{page.stem}.netlog.json", tmp / f"{page.stem}-profile"
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}", f"--log-net-log={netlog}",
            "--enable-logging=stderr", "--v=0", "--hide-scrollbars", f"--window-size={width},{height}",
            f"--screenshot={shot}", page.resolve().as_uri()]
    # its own process group: a hung renderer is killed with everything Chromium started
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _out, err = proc.communicate(timeout=RENDER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"chromium did not finish rendering {page} within {RENDER_TIMEOUT_S} s") from None
    assert proc.returncode == 0 and shot.exists(), f"chromium failed ({proc.returncode}): {err[-2000:]}"
    console = [m.group("message") for m in map(CONSOLE.search, err.splitlines()) if m]
    return Rendered(shot, console, page_requests(netlog), err)


def page_requests(netlog: Path) -> list[str]:
    """URLs the page itself requested (not file:), from a Chromium net log."""
    log = json.loads(netlog.read_text()) if netlog.exists() and netlog.stat().st_size else {"events": []}
    start_job = log.get("constants", {}).get("logEventTypes", {}).get("URL_REQUEST_START_JOB")
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event.get("type") == start_job and str(params.get("network_isolation_key", "")).startswith("file://"):
            if not str(params.get("url", "")).startswith("file:"):
                urls.append(params["url"])
    return urls


def ink(png: Path) -> tuple[float, int]:
    """(share of pixels that are not the page background, number of distinct colours)."""
    from PIL import Image, ImageChops

    with Image.open(png) as img:
        rgb = img.convert("RGB")
        background = Image.new("RGB", rgb.size, rgb.getpixel((0, 0)))
        distance = ImageChops.difference(rgb, background).convert("L").histogram()
        drawn = sum(distance[16:])   # clearly different from the background, not antialiasing noise
        return drawn / (rgb.width * rgb.height), len(rgb.getcolors(maxcolors=1 << 20) or [])
