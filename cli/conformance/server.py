"""A `callstate serve` process that `callstate conformance --serve-port` runs for the proxy to reach.

A separate process, so the battery's client and the server do not share an event loop (or
a GIL) and the figures are those of a real deployment; and stopping it with SIGTERM is the
graceful stop the graceful-stop row measures. It never outlives the command: it is killed when
the command is interrupted, and (through util-linux `setpriv --pdeathsig`, where there is one) the
kernel kills it when the command dies without a chance to clean up (SIGKILL, a crash).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from callstate.wire import TOKEN_ENV


class ServerProcess:
    def __init__(self, bind: str, port: int, max_hold: float) -> None:
        self.bind, self.port, self.max_hold = bind, port, max_hold
        self._dir = tempfile.TemporaryDirectory(prefix="callstate-conformance-")
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def target(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.bind, self.bind)
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"   # an IPv6 address in brackets

    async def start(self, timeout: float = 20.0) -> None:
        """Start serving on the port (the same one again after a stop); ConnectionError when it cannot."""
        port_file, err = Path(self._dir.name, "port"), Path(self._dir.name, "stderr")
        port_file.unlink(missing_ok=True)
        setpriv = shutil.which("setpriv")
        with open(err, "wb") as err_out:
            self._proc = await asyncio.create_subprocess_exec(
                *([setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []),
                sys.executable, "-m", "callstate", "serve", "--bind", self.bind, "--port", str(self.port),
                "--port-file", str(port_file), "--no-state-log", "--max-hold", f"{self.max_hold:g}",
                stdout=asyncio.subprocess.DEVNULL, stderr=err_out,
                env={k: v for k, v in os.environ.items() if k != TOKEN_ENV})   # no token: the proxy's, if any
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self._proc.returncode is not None or time.monotonic() > deadline:
                await self.stop()
                lines = err.read_text(errors="replace").strip().splitlines() or ["no message"]
                raise ConnectionError(f"the server for --serve-port {self.port} did not start: {lines[-1]}")
            await asyncio.sleep(0.05)
        self.port = int(port_file.read_text())

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM: the server ends its calls in flight (1722) and exits; killed if it does not."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()

    def kill_now(self) -> None:
        """SIGKILL, at once and without awaiting: the command is being interrupted."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass

    def cleanup(self) -> None:
        self._dir.cleanup()
