"""A failed RPC that a proxy answered, not a callstate server: what it answered, in words.

A proxy (nginx's grpc_pass, say) whose upstream is down or failing answers the call itself:
with an HTTP status and an HTML page (grpc says "Received http2 header with status: 502", or,
as the page's DATA frame races the headers, "Stream removed (Data frame with END_STREAM flag
received)", which names nothing), or with a gRPC status of its own (an error_page that sets
grpc-status 14). A callstate server never answers with an HTTP error status, nor with
UNAVAILABLE on its Journal.
"""

from __future__ import annotations

import http
import re
from typing import Any, Awaitable, Callable

import grpc

_HTTP_STATUS = re.compile(r"Received http2 header with status: (\d{3})")

# What each HTTP status of a proxy most likely means for the callstate server behind it.
_MEANING = {
    502: "a proxy there could not reach the callstate server behind it (is it running, at the address the proxy "
         "forwards to?)",
    503: "a proxy there has no callstate server to forward to (none running, or every one marked down)",
    504: "a proxy there gave up waiting for the callstate server behind it",
}
_NO_STATUS = "an answer with no gRPC status, not a callstate server's: a proxy there, or another HTTP server"
_OTHER = "something other than a callstate server answers there (a proxy, or another HTTP server)"


def http_status(details: str | None) -> int | None:
    """The HTTP status grpc found in place of a gRPC response, if that is what it says."""
    found = _HTTP_STATUS.search(details or "")
    return int(found.group(1)) if found else None


def stream_removed(err: grpc.aio.AioRpcError) -> bool:
    """The stream ended with no gRPC status: an HTTP answer whose status grpc did not keep
    (UNKNOWN), or a stream reset (RST_STREAM), as a proxy does when its upstream goes away."""
    return (err.details() or "").startswith("Stream removed")


def proxy_answer(err: grpc.aio.AioRpcError, http_code: int | None = None) -> str | None:
    """What answered instead of a callstate server ("HTTP 502 Bad Gateway, not gRPC: ..."), or
    None when nothing says a proxy did. `http_code`: the HTTP status a probe found, for an error
    that names none (`stream_removed`)."""
    code = http_code or http_status(err.details())
    if code is not None:
        try:
            phrase = f" {http.HTTPStatus(code).phrase}"
        except ValueError:
            phrase = ""
        return f"HTTP {code}{phrase}, not gRPC: {_MEANING.get(code, _OTHER)}"
    if err.code() == grpc.StatusCode.UNAVAILABLE and err.trailing_metadata():
        # a status that came with a response (grpc's own UNAVAILABLE, for a connection that failed,
        # has no trailers), and the Journal never answers it: the proxy's
        message = " ".join((err.details() or "").split())
        return (f"gRPC UNAVAILABLE{f' ({message!r})' if message else ''} from a proxy, not from a callstate "
                "server: the proxy could not reach the server behind it")
    return None


async def diagnose(err: grpc.aio.AioRpcError, probe: Callable[[], Awaitable[Any]]) -> str | None:
    """`proxy_answer`; for an error that names no status (`stream_removed`), what the target
    answers one `probe` RPC now (a unary call, whose error grpc reports with the HTTP status)."""
    if not stream_removed(err):
        return proxy_answer(err)
    try:
        await probe()
    except grpc.aio.AioRpcError as again:
        answer = proxy_answer(err, http_status(again.details())) or proxy_answer(again)
        return answer or (_NO_STATUS if err.code() == grpc.StatusCode.UNKNOWN else None)
    return None   # a callstate server answers there after all: the failure was something else
