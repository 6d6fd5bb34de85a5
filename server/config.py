"""The emulator's configuration: the default mix, its bounds, and how its handlers wait."""

from __future__ import annotations

from dataclasses import dataclass, field

from callstate.script import DEFAULT_ABORT_CODE, Limits, Mix, check_abort_code
from callstate.server.ended_ids import DEFAULT_MAX_ENDED_IDS


@dataclass
class EmulatorConfig:
    mix: Mix = field(default_factory=lambda: Mix.parse("complete=85,abort=10,fatal=5"))
    abort_code: int = DEFAULT_ABORT_CODE
    max_hold: float = 30.0
    max_in_flight: int = 100_000
    limits: Limits = field(default_factory=Limits)
    seed: int | None = None
    log_messages: bool = False   # pipes: one state-log line per message (self-loops), not only counts
    # replies handed to gRPC and not yet taken by their callers: past this, completes get 1723
    # (a caller that never reads would otherwise pin every reply it asked for)
    max_reply_backlog_bytes: int = 16 * 1024 * 1024
    # and per connection (None: no bound of its own). Off by default: a proxy carries many
    # callers on one connection, and conformance through one must not be refused for it
    max_reply_backlog_per_connection: int | None = None
    early_notice_ttl: float = 10.0          # a notice that overtook its call waits this long for it
    max_early_notices: int = 10_000
    max_early_notice_bytes: int = 4 * 1024 * 1024   # their call ids, in bytes
    # an id that ended stays reserved this long (while the journal holds it): a replay of it would
    # put entries after End into its owner's history and logs
    id_retention: float = 60.0
    # ...whether or not the journal still holds its call: this many ended ids are remembered at most
    # (their hashes, about 130 bytes each; server/ended_ids.py), and at least the journal's calls
    max_retained_ids: int = DEFAULT_MAX_ENDED_IDS
    cancel_poll_ms: int = 0   # handlers test for cancels every N ms (0: see them at once); a script may say otherwise

    def __post_init__(self) -> None:
        try:
            check_abort_code(self.abort_code)
        except ValueError as exc:
            raise ValueError(f"abort code {exc}") from None
