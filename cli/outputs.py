"""The files a command writes (reports, JUnit), checked before it runs and written whole; and
the rule for all it writes (the port file and state logs too): none may be the same file as
another it writes or a log it reads, since writing it would replace what was recorded there."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


NEW_FILE_MODE = 0o666 & ~_umask()   # what open() would give it: mkstemp's files are private (0600)


def _stream(path: str | Path) -> bool:
    """`path` is there and is no regular file: /dev/stdout, /dev/null, a FIFO. It is written into
    as it is; renaming a file over it would replace the device itself."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def write_atomically(path: str | Path, data: bytes) -> None:
    """Write `path` whole or not at all: a temporary file beside it, then renamed over it, so a
    reader (a CI publishing it) never sees it empty, half written, or left from a previous run.
    It keeps the mode of the file it replaces, or gets a new file's; a symbolic link stays one."""
    if _stream(path):
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


def writable(path: str) -> str:
    """"" when `path` can be written atomically (its folder takes a new file), or written into
    (/dev/stdout), else why not."""
    target = Path(path)
    if target.is_dir():
        return f"{path}: is a directory"
    if _stream(path):
        return "" if os.access(path, os.W_OK) else f"{path}: Permission denied"
    try:
        fd, tmp = tempfile.mkstemp(dir=Path(os.path.realpath(path)).parent, prefix=f".{target.name}.",
                                   suffix=".tmp")
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    os.close(fd)
    os.unlink(tmp)
    return ""


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
        if path is None or str(path) == "-" or _stream(path):   # /dev/null twice loses nothing
            continue
        for other, other_path in seen:
            if _same(path, other_path):
                return f"{flag} {path} is the same file as {other} {other_path}: writing one would replace the other"
        seen.append((flag, path))
    return ""
