"""The user's files the core reads: TLS material (PEM, given as a path or as the bytes themselves)
and stand-in rules files (`callstate.rules` compiles their text; this module opens them)."""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Union

from callstate.script import Limits

if TYPE_CHECKING:   # a client reading its PEM files need not load the rules compiler
    from callstate.rules import RuleSet
    from callstate.schema.model import Schema

PemSource = Union[str, Path, bytes, None]   # a path to a PEM file, or the PEM bytes themselves
MAX_PEM_BYTES = 1024 * 1024   # a certificate chain or CA bundle is far smaller


def read_pem(source: PemSource, what: str) -> bytes | None:
    """The PEM bytes of `source`; OSError naming `what` when the file cannot be read."""
    if source is None or isinstance(source, bytes):
        return source
    check_regular_file(source, what)
    try:
        with open(source, "rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise OSError(f"cannot read the {what} {str(source)!r}: {exc.strerror or exc}") from None
    if len(data) > MAX_PEM_BYTES:
        raise OSError(f"the {what} {str(source)!r} is larger than a PEM bundle ({MAX_PEM_BYTES} bytes)")
    if b"-----BEGIN " not in data:
        raise OSError(f"the {what} {str(source)!r} is not a PEM file")
    return data


def check_regular_file(path: str | Path, what: str) -> None:
    """OSError naming `what` unless `path` is a regular file: reading a FIFO waits for a writer
    that may never come, and a device (/dev/zero) never ends."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise OSError(f"cannot read the {what} {str(path)!r}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise OSError(f"the {what} {str(path)!r} is not a regular file (a FIFO or a device is refused)")


def check_key_pair(cert: PemSource, key: PemSource, what: str) -> None:
    """OSError naming `what` when the certificate and key (given as paths) do not load as a pair
    (grpc would only say it cannot bind, or fail the handshake later)."""
    if not isinstance(cert, (str, Path)) or not isinstance(key, (str, Path)):
        return
    check_regular_file(cert, what)
    check_regular_file(key, "key")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, ValueError) as exc:
        raise OSError(f"the {what} {str(cert)!r} and key {str(key)!r} do not make a pair: "
                      f"{getattr(exc, 'reason', None) or exc}") from None


def load_rules(path: str | Path, schema: Schema, limits: Limits = Limits()) -> RuleSet:
    """Read and compile a rules file; RulesError names the file, the line and the field."""
    from callstate.rules import RulesError, parse_rules
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    return parse_rules(text, schema, limits, source=str(path))
