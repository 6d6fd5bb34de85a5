"""The files a command writes (reports, JUnit), checked before it runs (`callstate.files` writes
them whole); and the rule for all it writes (the port file and state logs too): none may be the
same file as another it writes or a log it reads, since writing it would replace what was
recorded there."""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import orjson

from callstate.files import GZIPPED_LOG, is_gzipped, is_stream
from callstate.statelog import REQUIRED_KEYS

_GZIP_MAGIC, _BOM = b"\x1f\x8b", b"\xef\xbb\xbf"
_FIRST_LINE = 1 << 16   # enough for any state entry; a longer first line is no state log


def writable(path: str) -> str:
    """"" when `path` can be written atomically (its folder takes a new file), or written into
    (/dev/stdout), else why not."""
    if path == "-":   # a file named "-" is never what was meant
        return "-: give a file name ('-' is not standard output here; /dev/stdout is)"
    target = Path(path)
    if target.is_dir():
        return f"{path}: is a directory"
    if is_stream(path):
        return "" if os.access(path, os.W_OK) else f"{path}: Permission denied"
    try:
        fd, tmp = tempfile.mkstemp(dir=Path(os.path.realpath(path)).parent, prefix=f".{target.name}.",
                                   suffix=".tmp")
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    os.close(fd)
    os.unlink(tmp)
    return ""


def holds_state_log(path: str | Path) -> bool:
    """True when `path` is a regular file whose first line is a state entry (a state log, gzip'd or not):
    a report written there would replace every call it recorded."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == _GZIP_MAGIC
            f.seek(0)
            first = (gzip.GzipFile(fileobj=f) if gzipped else f).readline(_FIRST_LINE)
        entry = orjson.loads(first.removeprefix(_BOM))
    except (OSError, EOFError, zlib.error, orjson.JSONDecodeError):   # unreadable: said when it is written
        return False
    return isinstance(entry, dict) and all(key in entry for key in REQUIRED_KEYS)


def gzipped_log(flag: str, path: str | Path | None) -> str:
    """Why a state log cannot be appended to `path` ("" when it can): a gzip'd file there (a rotated
    log given as --log-file) would end in plain lines no reader takes, `check` refusing all of it."""
    return f"{flag} {path} {GZIPPED_LOG}" if path and is_gzipped(path) else ""


def _same(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:   # one of them does not exist yet: the same path is the same file
        return os.path.realpath(a) == os.path.realpath(b)


def clash(outputs: Iterable[tuple[str, str | Path | None]], inputs: Iterable[tuple[str, str | Path]] = ()) -> str:
    """"" when every output (a (flag, path) pair; None or "-" for none) is a file of its own,
    else why not: it is another output, or one of `inputs` (logs the command reads)."""
    seen = list(inputs)
    for flag, path in outputs:
        if path is None or str(path) == "-" or is_stream(path):   # /dev/null twice loses nothing
            continue
        for other, other_path in seen:
            if _same(path, other_path):
                return f"{flag} {path} is the same file as {other} {other_path}: writing one would replace the other"
        seen.append((flag, path))
    return ""


def output_problem(reports: Iterable[str | None], outputs: Iterable[tuple[str, str | Path | None]],
                   inputs: Iterable[tuple[str, str | Path]] = ()) -> str:
    """Why a command cannot start ("" when it can): one of its `reports` (written whole once it
    has run; None for none) cannot be written, or one of its `outputs` is another output or one
    of the `inputs` it reads (`clash`), or a report would be written over a state log (a log's name
    typed for the report's). Checked before anything is created or emptied."""
    reports = [path for path in reports if path]
    return (next((why for why in map(writable, reports) if why), "") or clash(outputs, inputs)
            or next((f"{flag} {path} holds a state log (its first line is a state entry): the report would replace "
                     "every call it recorded; give the report a file of its own"
                     for flag, path in outputs if path in reports and holds_state_log(path)), ""))
