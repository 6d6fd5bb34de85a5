"""TLS and the bearer token of a CallstateUser's channels, as `callstate load`'s --tls-ca,
--tls-cert, --tls-key and --token (or CALLSTATE_TOKEN) give them: the user's calls, the
journal follower and its barrier call all ride them."""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from callstate.client.channel import ChannelSettings
from callstate.wire import TOKEN_ENV

# the user attributes, as `callstate load`'s options name them
SETTINGS = ("tls_ca", "tls_cert", "tls_key", "token")


def channel_settings(settings: Mapping[str, Any], name: Callable[[str], str] = str) -> ChannelSettings:
    """The channels' settings from the user's (`token` empty: CALLSTATE_TOKEN, if set); ValueError
    naming what is wrong, by `name` (an attribute's option, when they were typed): a certificate
    without its key, a file that cannot be read, a token that cannot travel in a header."""
    if bool(settings["tls_cert"]) != bool(settings["tls_key"]):
        raise ValueError(f"{name('tls_cert')} and {name('tls_key')} go together (a client certificate and its key)")
    token = settings["token"] or os.environ.get(TOKEN_ENV) or None
    try:
        channel = ChannelSettings(tls_ca=settings["tls_ca"] or None, tls_cert=settings["tls_cert"] or None,
                                  tls_key=settings["tls_key"] or None, token=token)
    except ValueError as exc:   # the token
        raise ValueError(f"{name('token') if settings['token'] else TOKEN_ENV}: {exc}") from None
    try:
        channel.credentials()   # reads the PEM files now: a missing one fails before the run
    except OSError as exc:
        raise ValueError(str(exc)) from None
    return channel
