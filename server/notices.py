"""Cancel notices that overtook their call: kept for its dispatch, under its id and cancel key.

The notice (`Emulator.Cancel`) and its call travel as separate RPCs, so a notice may arrive
first. It is kept a while for the call's dispatch, in bounded memory, and applies only to a
call made with the same cancel key.
"""

from __future__ import annotations

import asyncio
import time


class EarlyNotices:
    """Cancel notices for calls not dispatched yet: kept `ttl` seconds, bounded in count and
    in bytes (of their call ids), new ones refused when full. A timer expires them even when no
    new notice arrives, so a burst of notices does not stay pinned."""

    def __init__(self, ttl: float = 10.0, limit: int = 10_000, max_bytes: int = 4 * 1024 * 1024) -> None:
        self.ttl, self.limit, self.max_bytes = ttl, limit, max_bytes
        self._seen: dict[str, float] = {}
        self.pending = self._seen   # read only: the notices kept, by key (empty: none to look up)
        self.bytes = 0
        self.dropped = 0          # notices forgotten early because a bound was hit
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._seen)

    def remember(self, call_id: str) -> bool:
        """Keep a notice; False when the bounds are reached. A notice kept is never displaced by
        later ones (anyone's: a stranger's flood cannot evict the owner's); it only expires."""
        now = time.monotonic()
        seen = self._seen
        if call_id in seen:
            self._forget(call_id)
        size = len(call_id)
        self._expire(now)
        if len(seen) >= self.limit or self.bytes + size > self.max_bytes:
            self.dropped += 1
            return False
        seen[call_id] = now
        self.bytes += size
        self._arm()
        return True

    def take(self, call_id: str) -> bool:
        t = self._seen.get(call_id)
        if t is None:
            return False
        self._forget(call_id)
        return time.monotonic() - t < self.ttl

    def clear(self) -> None:
        self._seen.clear()
        self.bytes = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _forget(self, call_id: str) -> None:
        del self._seen[call_id]
        self.bytes -= len(call_id)

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            oldest, t = next(iter(seen.items()))
            if now - t < self.ttl:
                break
            self._forget(oldest)

    def _arm(self) -> None:
        """One timer at a time, due when the oldest notice expires."""
        if self._timer is not None or not self._seen:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:   # used outside a loop (unit tests): expiry on the next remember()
            return
        oldest = next(iter(self._seen.values()))
        self._timer = loop.call_later(max(0.0, oldest + self.ttl - time.monotonic()) + 0.001, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._expire(time.monotonic())
        self._arm()


def notice_key(call_id: str, cancel_key: str) -> str:
    """An early notice is kept under its call id and cancel key together: a stranger's notice
    (another key) neither applies to the call nor displaces its owner's notice."""
    return f"{call_id}\n{cancel_key}" if cancel_key else call_id
