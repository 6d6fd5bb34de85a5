"""What keeps a Locust process's gevent hub serving its greenlets on a busy machine.

grpc under gevent waits for each channel's completion queue on a thread of the hub's pool,
one thread held per channel with calls in flight, and every CallstateUser has its own channel.
The pool's 10 threads served 17 channels in turns: the journal follower's next message waited
for a thread as long as the users' calls did (it fell 1.2 s behind at 16 users, 4.6 s at 48,
on a machine loaded 20 times over its 2 cores). `grow_pool` gives each channel its thread.

A Locust worker told to spawn users compares every option the master sent with Locust's own
defaults, building Locust's whole argument parser once per option (`default_args_dict`): about
30 ms each on that machine, 3.5 s for the 120 options with callstate's, all that time on the
hub without a switch: the worker's heartbeat stopped and the master marked it missing. The
defaults are Locust's own arguments, the same each time: `install` reads them once.
"""

from __future__ import annotations

import functools
from typing import Any

import gevent
from locust import argument_parser

# beside the users' channels: the journal follower's, the end-of-run barrier's, the resolver's
# look-ups, a spare
POOL_SPARE = 4


def grow_pool(channels: int) -> None:
    """The hub's pool holds a thread for each of `channels` and the spares."""
    pool = gevent.get_hub().threadpool
    if pool.maxsize < channels + POOL_SPARE:
        pool.maxsize = channels + POOL_SPARE


@functools.lru_cache(maxsize=1)
def _locust_defaults() -> tuple[tuple[str, Any], ...]:
    return tuple(_parse_defaults().items())


_parse_defaults = argument_parser.default_args_dict


def default_args_dict() -> dict[str, Any]:
    """Locust's `argument_parser.default_args_dict`, parsed once per process (a new dict each call)."""
    return dict(_locust_defaults())


def install() -> None:
    if argument_parser.default_args_dict is not default_args_dict:
        argument_parser.default_args_dict = default_args_dict   # type: ignore[assignment]
