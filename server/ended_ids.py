"""The ids of ended calls, remembered beyond the journal so that a replayed id is refused.

The journal keeps whole histories of a bounded number of ended calls (--journal-size,
--journal-bytes); an id that outlived its history used to be taken again, and the state log
then held two lifecycles for one id (`callstate check`: "entry after End"). This keeps only
each id's hash and its End time, for --id-retention seconds and at most `limit` ids (about
130 bytes each, whatever the id's length), oldest first out.

Ids are known by Python's hash of the string: 64 bits keyed at random per process (SipHash),
so two ids alike by chance in a server's lifetime are as good as impossible, and a caller
cannot aim for someone else's.
"""

from __future__ import annotations

import collections

# Ids remembered at most by default: a minute (the default --id-retention) at 3,300 calls/s,
# about 25 MB; a faster server remembers each id for less (docs/operations.md).
DEFAULT_MAX_ENDED_IDS = 200_000


class EndedIds:
    __slots__ = ("retention", "limit", "forgotten_early", "_at", "_keys", "_times", "_batch", "_stale")

    def __init__(self, retention: float, limit: int = DEFAULT_MAX_ENDED_IDS) -> None:
        self.retention = retention
        self.limit = limit if retention > 0 else 0
        # Let go of ids in batches, not one per End: past the limit, 1% of it at once; by age, once
        # the oldest is a second past its retention (a lookup judges the age itself, so an id kept
        # a moment longer is still free to take).
        self._batch = max(1, self.limit // 100)
        self._stale = retention + 1.0
        self.forgotten_early = 0   # ids let go before their retention ran out: over `limit`
        self._at: dict[int, float] = {}                   # the id's hash: its End time
        self._keys: collections.deque[int] = collections.deque()     # in End order, with
        self._times: collections.deque[float] = collections.deque()  # their End times

    def add(self, call_id: str, t: float) -> None:
        """The call `call_id` ended at `t` (seconds since the epoch). On the hot path: a dict store
        and two appends (the id's hash is cached in the string, which the server has hashed
        already), and now and then the oldest let go."""
        if not self.limit:
            return
        key = hash(call_id)
        self._at[key] = t
        self._keys.append(key)
        self._times.append(t)
        if len(self._keys) > self.limit or t - self._times[0] >= self._stale:
            self._expire(t)

    def _expire(self, now: float) -> None:
        keys, times, at = self._keys, self._times, self._at
        keep = self.limit - self._batch if len(keys) > self.limit else self.limit
        while keys and (len(keys) > keep or now - times[0] >= self.retention):
            key, t = keys.popleft(), times.popleft()
            if at.get(key) == t:   # else the id ended again since (taken after its retention): that End is kept
                del at[key]
                if now - t < self.retention:
                    self.forgotten_early += 1

    def ended_at(self, call_id: str) -> float | None:
        """When the call `call_id` ended, if it is remembered."""
        return self._at.get(hash(call_id))

    def __len__(self) -> int:
        return len(self._at)
