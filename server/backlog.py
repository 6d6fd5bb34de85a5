"""The reply backlog: bytes of replies and pipe messages handed to gRPC and not yet delivered.

A caller that never reads (or never opens its HTTP/2 window) pins whatever the server wrote
for it until its call is gone. The backlog bounds that, in bytes, for the whole server and
for each connection (gRPC's peer address names one): past either bound a unary complete, or a
pipe about to push, ends with 1723 RPC_S_SERVER_TOO_BUSY instead of writing. A reservation is
released when gRPC reports the call done (delivered, cancelled or timed out).
"""

from __future__ import annotations

import functools
from typing import Any


class ReplyBacklog:
    def __init__(self, total: int, per_connection: int) -> None:
        self.total, self.per_connection = total, per_connection
        self.bytes = 0
        self._by_peer: dict[str, int] = {}

    def reserve(self, context: Any, size: int) -> str | None:
        """Reserve `size` bytes for the call of `context` until gRPC reports it done; or, when a
        bound would be passed, why not (nothing is reserved then)."""
        if self.bytes + size > self.total:
            return (f"replies not yet taken by their callers are over the server's budget "
                    f"({self.total} bytes, --max-reply-backlog)")
        peer = context.peer() or ""
        held = self._by_peer.get(peer, 0)
        if held + size > self.per_connection:
            return (f"replies not yet taken on this connection are over its budget "
                    f"({self.per_connection} bytes, --max-reply-backlog-per-connection)")
        self.bytes += size
        self._by_peer[peer] = held + size
        context.add_done_callback(functools.partial(self._release, peer, size))
        return None

    def _release(self, peer: str, size: int, _context: object = None) -> None:
        self.bytes -= size
        left = self._by_peer[peer] - size
        if left:
            self._by_peer[peer] = left
        else:
            del self._by_peer[peer]
