"""The walk of one unary call through the client, as a reader follows it: which files, in which
order, and how often the reader must go back to a file already read (docs/client-design.md).

    python tools/call_walk.py --target 127.0.0.1:50051            # callstate call --outcome abort
    python tools/call_walk.py --target 127.0.0.1:50051 --json      # the walk as JSON

It runs `callstate call --target T --outcome abort` in this process under a profiler and keeps
every function of the product (callstate/, client/, cli/, ...) in the order the call first
reaches it, from the first function the event loop runs (the command's call coroutine) to the
last return from client/: making the client, start, the reply, complete, each state-log line,
close. A function reached again is not read again. Consecutive functions of one file are one stop; a stop in a file already read is a
return. The server's side of the call runs in its own process and is not walked here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("callstate", "client", "cli", "server", "observe", "integrations", "schema")
SKIPPED = ("callstate/v1/",)   # generated protobuf code: nobody reads it to follow a call


def _product_file(filename: str) -> str | None:
    try:
        rel = Path(filename).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return None
    if rel.split("/", 1)[0] not in PRODUCT or rel.startswith(SKIPPED):
        return None
    return rel


def _on_the_loop(frame: Any) -> bool:
    """Whether the event loop runs this frame (the walk starts with the first such product function)."""
    while frame is not None:
        if frame.f_code.co_name == "_run" and frame.f_code.co_filename.endswith(("asyncio/events.py",)):
            return True
        frame = frame.f_back
    return False


def record(argv: list[str]) -> tuple[int, list[tuple[str, str]]]:
    """Run the CLI with `argv`; (exit status, the functions the client's window reaches first, in order)."""
    from callstate.cli import main

    files: dict[str, str | None] = {}
    seen: set[Any] = set()
    events: list[tuple[str, str, str]] = []   # (event, file, function), product code only

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event not in ("call", "return"):
            return
        code = frame.f_code
        rel = files.get(code.co_filename, "")
        if rel == "":
            rel = files[code.co_filename] = _product_file(code.co_filename)
        if rel is None or code.co_name == "<module>" or not (events or _on_the_loop(frame)):
            return
        if event == "return":
            events.append((event, rel, code.co_qualname))
        elif code not in seen:
            seen.add(code)
            events.append((event, rel, code.co_qualname))

    sys.setprofile(profile)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            status = main(argv)
    finally:
        sys.setprofile(None)
    in_client = [i for i, (_, rel, _) in enumerate(events) if rel.startswith("client/")]
    if not in_client:
        return status, []
    window = events[:in_client[-1] + 1]
    return status, [(rel, name) for event, rel, name in window if event == "call"]


def stops(walk: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Consecutive functions of one file as one stop: (file, its functions)."""
    out: list[tuple[str, list[str]]] = []
    for rel, name in walk:
        if out and out[-1][0] == rel:
            out[-1][1].append(name)
        else:
            out.append((rel, [name]))
    return out


def returns(path: list[tuple[str, list[str]]]) -> int:
    """Stops in a file already read."""
    return len(path) - len({rel for rel, _ in path})


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="a running callstate serve, HOST:PORT")
    parser.add_argument("--json", action="store_true", help="print the walk as JSON")
    opts = parser.parse_args(args)
    status, walk = record(["call", "--target", opts.target, "--outcome", "abort"])
    path = stops(walk)
    if opts.json:
        print(json.dumps({"exit": status, "stops": [{"file": f, "functions": fs} for f, fs in path],
                          "files": len({f for f, _ in path}), "returns": returns(path)}))
    else:
        for i, (rel, names) in enumerate(path, 1):
            print(f"{i:3d}. {rel}: {', '.join(names)}")
        print(f"{len(path)} stops over {len({f for f, _ in path})} files, {returns(path)} returns "
              f"(callstate call exited {status})")
    return 0 if walk else 1


if __name__ == "__main__":
    sys.exit(main())
