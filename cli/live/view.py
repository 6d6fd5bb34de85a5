"""The live terminal view of `callstate load` and `callstate watch`, drawn with rich's Live
display on a terminal, or plain lines (one per interval) for logs and pipes.

`--progress` (load) and `--dashboard` (watch) take auto|always|never: auto draws the live view
only on a terminal; always also prints plain lines when not on one; never shows neither.
Without rich installed (`pip install 'callstate[live]'`) a terminal gets the plain lines.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, TextIO

from callstate import codes
from callstate.cli.live.stats import RATE_WINDOW_S, LiveStats
from callstate.lifecycle import CAN, CANCEL_SEEN, CLIENT, END

LIVE, LINES = "live", "lines"
MODES = ("auto", "always", "never")
LIVE_INTERVAL_S, LINES_INTERVAL_S = 0.5, 1.0


def rich_available() -> bool:
    try:
        import rich.live  # noqa: F401
    except ImportError:
        return False
    return True


def choose(mode: str, out: TextIO) -> str:
    """LIVE, LINES or '' (no view) for a --progress/--dashboard value and the output stream."""
    tty = out.isatty()
    if mode == "never" or (mode == "auto" and not tty):
        return ""
    return LIVE if tty and rich_available() else LINES


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(stats: LiveStats, title: str) -> Any:
    """The dashboard as a rich renderable: totals, calls/s per final code, recent cancels."""
    from rich import box
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    rates = stats.rates()
    head = Text()
    head.append(f"{stats.elapsed:.1f} s", style="bold")
    done = f"{stats.finished}" + (f" / {stats.total}" if stats.total else "")
    head.append(f"   calls ended {done}   ")
    head.append(f"{stats.rate_text(sum(rates.values()))} calls/s", style="bold cyan")
    head.append("   in flight ")
    head.append(str(stats.in_flight), style="bold yellow")
    if stats.skipped:
        head.append(f"   skipped {stats.skipped}", style="red")
    if stats.cancels:
        head.append("   cancels " + ", ".join(f"{k} {n}" for k, n in sorted(stats.cancels.items())))

    by_code = Table(title=f"final codes ({stats.side} side)", title_justify="left", box=box.SIMPLE_HEAD,
                    padding=(0, 1), pad_edge=False)
    by_code.add_column("final code", no_wrap=True, overflow="ellipsis")
    by_code.add_column("calls", justify="right")
    by_code.add_column("calls/s, whole run" if stats.frozen else f"calls/s, last {RATE_WINDOW_S:g} s", justify="right")
    for code, n in sorted(stats.by_code.items()):
        by_code.add_row(codes.describe(code) if code >= 0 else "(no code)", str(n), stats.rate_text(rates.get(code, 0)),
                        style="green" if code == codes.RPC_S_OK else None)

    # every column shows at 80 columns (a wider header had squeezed →End out of sight there)
    recent = Table(title="recent cancels (ms)", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1),
                   pad_edge=False)
    recent.add_column("call id", no_wrap=True, min_width=12)
    recent.add_column("kind", no_wrap=True, min_width=12)
    if stats.side == CLIENT:
        recent.add_column(f"{CAN}→{CANCEL_SEEN}", justify="right", no_wrap=True, min_width=15)
    recent.add_column(f"→{END}", justify="right", no_wrap=True, min_width=6)
    recent.add_column("final code", no_wrap=True, overflow="ellipsis")   # the one column that gives way
    for rc in stats.recent_cancels():
        row = [rc.call_id[:12], rc.kind]
        if stats.side == CLIENT:
            row.append(_ms(rc.propagation_ms))
        row += [_ms(rc.to_end_ms), codes.describe(rc.code) if isinstance(rc.code, int) else "…"]
        recent.add_row(*row)
    return Panel(Group(head, by_code, recent), title=title, title_align="left")


class LiveView:
    """Shows `stats` every interval until `stop()`: rich's Live on a terminal, else plain lines."""

    def __init__(self, stats: LiveStats, out: TextIO, mode: str, title: str,
                 before_refresh: Callable[[], None] | None = None) -> None:
        self.stats, self.out, self.mode, self.title = stats, out, mode, title
        self.before_refresh = before_refresh   # lets the owner copy counters it keeps itself
        self._live: Any = None
        self._task: asyncio.Task[None] | None = None
        self._last_line = ""   # plain lines: once the run is over (frozen), only a changed one is printed

    def start(self) -> None:
        if self.mode == LIVE:
            from rich.console import Console
            from rich.live import Live

            # refreshed by our own task (auto_refresh off): no extra thread competing for the GIL
            console = Console(file=self.out, force_terminal=True)
            self._live = Live(render(self.stats, self.title), console=console, auto_refresh=False, transient=False,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        self._task = asyncio.ensure_future(self._run())

    def refresh(self) -> None:
        if self.before_refresh is not None:
            self.before_refresh()
        if self._live is not None:
            self._live.update(render(self.stats, self.title), refresh=True)
        elif (line := self.stats.plain_line()) != self._last_line or not self.stats.frozen:
            self._last_line = line   # a line a second while the run goes; after it, what changes
            print(line, file=self.out, flush=True)

    async def _run(self) -> None:
        interval = LIVE_INTERVAL_S if self.mode == LIVE else LINES_INTERVAL_S
        while True:
            await asyncio.sleep(interval)
            self.refresh()

    def say(self, line: str) -> None:
        """One line of news above the live frame (or between the plain lines)."""
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.out, flush=True)

    def stop(self) -> None:
        """Stop refreshing and leave the last frame (or line) on screen."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.refresh()   # the final counts stay on screen (or end the lines)
        if self._live is not None:
            self._live.stop()
            self._live = None
