"""Regenerate docs/report.png: a real `callstate serve` + `callstate load --html` run, rendered by
headless Chromium and reduced to a 256-colour PNG (Pillow, from the dev extra).

    .venv/bin/python tools/report_screenshot.py [--calls N] [--out docs/report.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--out", default=str(ROOT / "docs" / "report.png"))
    ap.add_argument("--height", type=int, default=2150, help="the screenshot's height in pixels")
    opts = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("report_screenshot: chromium is not installed (bash tools/system-deps.sh)", file=sys.stderr)
        return 2
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        port_file, html, png = Path(tmp, "port"), Path(tmp, "report.html"), Path(tmp, "shot.png")
        server = subprocess.Popen([sys.executable, "-m", "callstate", "serve", "--port", "0", "--port-file",
                                   str(port_file), "--log-file", os.devnull], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while not (port_file.exists() and port_file.read_text().strip()) and time.monotonic() < deadline:
                time.sleep(0.05)
            target = f"127.0.0.1:{port_file.read_text().strip()}"
            subprocess.run([sys.executable, "-m", "callstate", "load", "--target", target, "--calls", str(opts.calls),
                            "--concurrency", "32", "--seed", "12", "--cancel-at", "after-start,random:0.02,held:0.02",
                            "--html", str(html)], check=True, timeout=600)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp}/profile", "--hide-scrollbars",
                        f"--window-size=1200,{opts.height}", f"--screenshot={png}", html.as_uri()],
                       check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with Image.open(png) as img:
            img.convert("RGB").quantize(256).save(opts.out, optimize=True)
    print(f"{opts.out}: {Path(opts.out).stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
