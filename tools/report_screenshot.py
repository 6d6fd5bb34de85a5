"""Regenerate the README's screenshots of the HTML report, from a real run:

- docs/report.png: `callstate serve` + `callstate load --html`, the top of the report;
- docs/report-violations.png: `callstate report` over the same run's client log and its server
  log with two calls deliberately broken (one completed call's End given code 5, another's End
  removed), cropped to the violation examples at the end of the page.

Rendered by headless Chromium, reduced to 256-colour PNGs with Pillow (from the dev extra):

    .venv/bin/python tools/report_screenshot.py [--calls N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from callstate import codes
from callstate.lifecycle import COMP, D, END, ENTER

ROOT = Path(__file__).resolve().parent.parent


def shoot(chromium: str, html: Path, png: Path, height: int, profile: Path) -> None:
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}", "--hide-scrollbars",
                    f"--window-size=1280,{height}", f"--screenshot={png}", html.as_uri()],
                   check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def save(png: Path, out: Path, bottom: int | None = None) -> None:
    """Save as a 256-colour PNG; with `bottom`, only the last `bottom` pixels of drawn content."""
    from PIL import Image, ImageChops

    with Image.open(png) as img:
        rgb = img.convert("RGB")
        if bottom:
            box = ImageChops.difference(rgb, Image.new("RGB", rgb.size, rgb.getpixel((0, 0)))).getbbox()
            end = min(rgb.height, (box[3] if box else rgb.height) + 16)
            rgb = rgb.crop((0, max(0, end - bottom), rgb.width, end))
        rgb.quantize(256).save(out, optimize=True)
    print(f"{out}: {out.stat().st_size // 1024} KiB")


def break_two_calls(client_log: Path, server_log: Path, out: Path) -> None:
    """The server's entries of the load's calls, with two calls that completed on both sides broken."""
    client = [json.loads(line) for line in client_log.read_text().splitlines() if line]
    ours = {e["call_id"] for e in client}
    client_ok = {e["call_id"] for e in client if e["state"] == END and e.get("code") == codes.RPC_S_OK}
    entries = [e for e in map(json.loads, filter(None, server_log.read_text().splitlines())) if e["call_id"] in ours]
    by_call: dict[str, list[str]] = {}
    for e in entries:
        if e["event"] == ENTER:
            by_call.setdefault(e["call_id"], []).append(e["state"])
    wrong, unended = [cid for cid, states in by_call.items() if states == [D, COMP, END] and cid in client_ok][:2]
    with open(out, "w") as f:
        for e in entries:
            if e["state"] == END and e["call_id"] == unended:
                continue
            if e["state"] == END and e["call_id"] == wrong:
                e["code"] = codes.ERROR_ACCESS_DENIED
            f.write(json.dumps(e) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--docs", default=str(ROOT / "docs"), help="where to write the PNGs")
    opts = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("report_screenshot: chromium is not installed (bash tools/system-deps.sh)", file=sys.stderr)
        return 2
    docs = Path(opts.docs)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        port_file, server_log, client_log = tmp / "port", tmp / "server.jsonl", tmp / "client.jsonl"
        server = subprocess.Popen([sys.executable, "-m", "callstate", "serve", "--port", "0", "--port-file",
                                   str(port_file), "--log-file", str(server_log)], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while not (port_file.exists() and port_file.read_text().strip()) and time.monotonic() < deadline:
                time.sleep(0.05)
            target = f"127.0.0.1:{port_file.read_text().strip()}"
            subprocess.run([sys.executable, "-m", "callstate", "load", "--target", target, "--calls", str(opts.calls),
                            "--concurrency", "32", "--seed", "12", "--cancel-at", "after-start,random:0.02,held:0.02",
                            "--log-file", str(client_log), "--html", str(tmp / "load.html")], check=True, timeout=600)
        finally:
            server.send_signal(signal.SIGTERM)   # a graceful stop flushes the server's log
            server.wait(30)
        shoot(chromium, tmp / "load.html", tmp / "load.png", 2150, tmp / "profile")
        save(tmp / "load.png", docs / "report.png")
        break_two_calls(client_log, server_log, tmp / "broken-server.jsonl")
        subprocess.run([sys.executable, "-m", "callstate", "report", str(client_log), str(tmp / "broken-server.jsonl"),
                        "--html", str(tmp / "violations.html")], timeout=300)   # exit 1: the violations
        shoot(chromium, tmp / "violations.html", tmp / "violations.png", 4000, tmp / "profile")
        save(tmp / "violations.png", docs / "report-violations.png", bottom=1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
