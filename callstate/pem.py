"""Reading TLS material (PEM) given as a path or as the bytes themselves."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Union

PemSource = Union[str, Path, bytes, None]   # a path to a PEM file, or the PEM bytes themselves


def read_pem(source: PemSource, what: str) -> bytes | None:
    """The PEM bytes of `source`; OSError naming `what` when the file cannot be read."""
    if source is None or isinstance(source, bytes):
        return source
    try:
        data = Path(source).read_bytes()
    except OSError as exc:
        raise OSError(f"cannot read the {what} {str(source)!r}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise OSError(f"the {what} {str(source)!r} is not a PEM file")
    return data


def check_key_pair(cert: PemSource, key: PemSource, what: str) -> None:
    """OSError naming `what` when the certificate and key (given as paths) do not load as a pair
    (grpc would only say it cannot bind, or fail the handshake later)."""
    if not isinstance(cert, (str, Path)) or not isinstance(key, (str, Path)):
        return
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, ValueError) as exc:
        raise OSError(f"the {what} {str(cert)!r} and key {str(key)!r} do not make a pair: "
                      f"{getattr(exc, 'reason', None) or exc}") from None
