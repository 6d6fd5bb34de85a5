"""The user's files: those the core reads, TLS material (PEM, given as a path or as the bytes
themselves) and stand-in rules files (`callstate.rules` compiles their text; this module opens
them); and how a file callstate writes for a reader (a report, the server's port file) is
written whole."""

from __future__ import annotations

import os
import ssl
import stat
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Union

from callstate.script import Limits

if TYPE_CHECKING:   # a client reading its PEM files need not load the rules compiler
    from callstate.rules import RuleSet
    from callstate.schema.model import Schema

PemSource = Union[str, Path, bytes, None]   # a path to a PEM file, or the PEM bytes themselves
MAX_PEM_BYTES = 1024 * 1024   # a certificate chain or CA bundle is far smaller


def error_text(exc: BaseException) -> str:
    """What a reading failed on, for one line: `path: No such file or directory` for an OSError
    that names its file (Python's own text is `[Errno 2] No such file or directory: 'path'`)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


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
    try:   # without a password callback OpenSSL would prompt on the terminal for an encrypted key
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(str(cert), str(key), password=_no_passphrase)
    except _Encrypted:
        raise OSError(f"the key {str(key)!r} is encrypted (passphrase-protected): gRPC cannot use it; give the "
                      f"key unencrypted (openssl pkey -in KEY -out PLAIN)") from None
    except (ssl.SSLError, ValueError) as exc:
        raise OSError(f"the {what} {str(cert)!r} and key {str(key)!r} do not make a pair: "
                      f"{getattr(exc, 'reason', None) or _pem_lacks(cert, key) or exc}") from None


def check_validity(cert: PemSource, what: str, now: float | None = None) -> None:
    """OSError naming `what` when the certificate (given as a path) has expired or is not valid
    yet: every TLS client would refuse it, one handshake at a time, and the server would run on."""
    if not isinstance(cert, (str, Path)):
        return
    try:   # the standard library's own decoder (used by its test suite); absent: no check
        decoded = ssl._ssl._test_decode_cert(str(cert))   # type: ignore[attr-defined]
    except (AttributeError, ssl.SSLError, OSError, ValueError):
        return   # unreadable or not a certificate: check_key_pair and read_pem say so
    now = time.time() if now is None else now
    if now >= ssl.cert_time_to_seconds(decoded["notAfter"]):
        raise OSError(f"the {what} {str(cert)!r} expired on {decoded['notAfter']}: renew it")
    if now < ssl.cert_time_to_seconds(decoded["notBefore"]):
        raise OSError(f"the {what} {str(cert)!r} is not valid before {decoded['notBefore']} "
                      f"(is this host's clock right?)")


class _Encrypted(Exception):
    """The key asked for a passphrase."""


def _no_passphrase() -> bytes:
    raise _Encrypted()


def _pem_lacks(cert: str | Path, key: str | Path) -> str | None:
    """What OpenSSL's bare "PEM lib" means here: a file without the block it should hold."""
    for path, block in ((key, b"PRIVATE KEY-----"), (cert, b"CERTIFICATE-----")):
        if block not in Path(path).read_bytes()[:MAX_PEM_BYTES]:
            return f"{str(path)!r} holds no {block[:-5].decode()}"
    return None


def load_rules(path: str | Path, schema: Schema, limits: Limits = Limits()) -> RuleSet:
    """Read and compile a rules file; RulesError names the file, the line and the field."""
    from callstate.rules import RulesError, parse_rules
    try:
        if not_a_file(path):   # read at start and at each change: /dev/zero would fill the memory, a FIFO wait
            raise RulesError(f"{path}: {NOT_A_FILE}")
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    return parse_rules(text, schema, limits, source=str(path))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


NEW_FILE_MODE = 0o666 & ~_umask()   # what open() would give it: mkstemp's files are private (0600)


def is_stream(path: str | Path) -> bool:
    """`path` is there and is no regular file: /dev/stdout, /dev/null, a FIFO. It is written into
    as it is; renaming a file over it would replace the device itself."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


NOT_A_FILE = "not a regular file (a FIFO or a device is refused)"   # why a file option refuses one


def not_a_file(path: str | Path) -> bool:
    """`path` is there and is neither a regular file nor a folder (a FIFO, a device, a socket): a
    file option that reads it refuses it (a FIFO may never end, /dev/zero never does)."""
    return is_stream(path) and not os.path.isdir(path)


GZIPPED_LOG = ("is gzip'd (a rotated log?): lines appended to it would make it unreadable to `callstate check`; "
               "give a new file")   # why a state log is not appended to such a file


def is_gzipped(path: str | Path) -> bool:
    """`path` is a regular file that starts as gzip does: a state log appended to it (plain lines
    after its gzip stream) could no longer be read whole."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\x1f\x8b"
    except OSError:   # unreadable: said when it is opened
        return False


def write_atomically(path: str | Path, data: bytes) -> None:
    """Write `path` whole or not at all: a temporary file beside it, then renamed over it, so a
    reader (a CI publishing a report, a harness waiting for the port file) never sees it empty,
    half written, or left from a previous run. It keeps the mode of the file it replaces, or
    gets a new file's; a symbolic link stays one."""
    if is_stream(path):
        with open(path, "wb") as out:
            out.write(data)
        return
    target = Path(os.path.realpath(path))
    try:
        mode = target.stat().st_mode & 0o7777
    except OSError:
        mode = NEW_FILE_MODE
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
