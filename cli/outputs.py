"""The files a command writes (reports, JUnit), checked before it runs (`callstate.files` writes
them whole); and the rule for all it writes (the port file and state logs too): none may be the
same file as another it writes or a log it reads, since writing it would replace what was
recorded there."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from callstate.files import is_stream


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
    of the `inputs` it reads (`clash`). Checked before anything is created or emptied."""
    return next((why for why in map(writable, filter(None, reports)) if why), "") or clash(outputs, inputs)
