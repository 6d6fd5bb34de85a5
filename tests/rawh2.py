"""A deliberately bad HTTP/2 gRPC client on a raw socket: it sends calls and never reads.

grpc's own clients always read what they are sent, so the never-reading caller of the
fault suite is written by hand: the connection preface, SETTINGS, and per call one
HEADERS frame (HPACK literals, no Huffman) and one DATA frame holding the gRPC message.
"""

from __future__ import annotations

import socket
import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS = 0x0, 0x1, 0x3, 0x4
CANCEL = 0x8   # RST_STREAM error code
END_STREAM, END_HEADERS = 0x1, 0x4


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def _literal(name: str, value: str) -> bytes:
    """Literal header field without indexing, new name, no Huffman coding."""
    n, v = name.encode(), value.encode()
    return b"\x00" + _hpack_int(len(n), 7) + n + _hpack_int(len(v), 7) + v


def headers_block(path: str, authority: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    fields = ((":method", "POST"), (":scheme", "http"), (":path", path), (":authority", authority),
              ("content-type", "application/grpc"), ("te", "trailers"), *extra)
    return b"".join(_literal(k, v) for k, v in fields)


def grpc_message(body: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(body)) + body


class NeverReader:
    """One connection that starts `calls` and never reads a byte of the answers."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # keep the kernel's share small too
        self.authority = f"{host}:{port}"
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0, b""))
        self.next_stream = 1

    def call(self, path: str, body: bytes) -> int:
        stream = self.next_stream
        self.next_stream += 2
        self.sock.sendall(frame(HEADERS, END_HEADERS, stream, headers_block(path, self.authority))
                          + frame(DATA, END_STREAM, stream, grpc_message(body)))
        return stream

    def call_and_reset(self, path: str, body: bytes) -> int:
        """A call reset as soon as it is sent (HEADERS, DATA, RST_STREAM CANCEL): a rapid reset."""
        stream = self.next_stream
        self.next_stream += 2
        self.sock.sendall(frame(HEADERS, END_HEADERS, stream, headers_block(path, self.authority))
                          + frame(DATA, END_STREAM, stream, grpc_message(body))
                          + frame(RST_STREAM, 0, stream, struct.pack(">I", CANCEL)))
        return stream

    def close(self) -> None:
        self.sock.close()
