"""The walk of one unary call through the client, as a reader follows it: which files, in which
order, and how often the walk comes back to a file (docs/client-design.md).

    python tools/call_walk.py --target 127.0.0.1:50051            # callstate call --outcome abort
    python tools/call_walk.py --target 127.0.0.1:50051 --json      # the walk as JSON
    python tools/call_walk.py --target 127.0.0.1:50051 -- --outcome hold --cancel-after 0.2 --non-abortive
    python tools/call_walk.py --target 127.0.0.1:50051 --fold client/aio.py,client/client_base.py
                                                                   # as if those two were one module

It runs `callstate call --target T --outcome abort` in this process under a profiler and keeps
every function of the product (callstate/, client/, cli/, ...) in the order the call first
reaches it, from the first function the event loop runs (the command's call coroutine) to the
last return from client/: making the client, start, the reply, complete, each state-log line,
close. A function reached again is not read again. The server's side of the call runs in its own
process and is not walked here.

Two counts:

* returns: calls that land in a file the walk is already inside of, further up the calls that
  led there (a module calling back into one that called it), and a base class's method calling
  a method of its subclass on the same object (a template method's hook, up in the
  subclass's file): the bounces a reader pays for.
* revisits: consecutive functions of one file are one stop, and a stop in a file already read
  at all counts; this counts every time a caller consults a module it used before, too (a
  surface asking its core again at each move).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("callstate", "client", "cli", "server", "observe", "integrations", "schema")
SKIPPED = ("callstate/v1/",)   # generated protobuf code: nobody reads it to follow a call

_FILES: dict[str, str | None] = {}


def product_file(filename: str) -> str | None:
    """`filename` relative to the repository when it is product code, else None."""
    if filename not in _FILES:
        try:
            rel: str | None = Path(filename).resolve().relative_to(ROOT).as_posix()
        except ValueError:
            rel = None
        if rel is not None and (rel.split("/", 1)[0] not in PRODUCT or rel.startswith(SKIPPED)):
            rel = None
        _FILES[filename] = rel
    return _FILES[filename]


def _stack(frame: Any) -> list[str]:
    """The files the calls that led to `frame` passed through, outermost first, consecutive repeats as one."""
    out: list[str] = []
    while frame is not None:
        rel = product_file(frame.f_code.co_filename)
        if rel is not None and (not out or out[-1] != rel):
            out.append(rel)
        frame = frame.f_back
    return out[::-1]


def _defining_class(frame: Any) -> type | None:
    """The class whose method the frame runs (None: not a method)."""
    code = frame.f_code
    if not code.co_argcount or code.co_varnames[0] != "self" or "self" not in frame.f_locals:
        return None
    owner = code.co_qualname.rpartition(".")[0]
    return next((cls for cls in type(frame.f_locals["self"]).__mro__ if cls.__qualname__ == owner), None)


def _hook(frame: Any) -> bool:
    """Whether a base class's method called a method its subclass defines, on the same object
    (a template method calling up into the subclass's file)."""
    caller = frame.f_back
    if caller is None or "self" not in caller.f_locals or caller.f_locals["self"] is not frame.f_locals.get("self"):
        return False
    base, sub = _defining_class(caller), _defining_class(frame)
    return base is not None and sub is not None and sub is not base and issubclass(sub, base)


def _on_the_loop(frame: Any) -> bool:
    """Whether the event loop runs this frame (the walk starts with the first such product function)."""
    while frame is not None:
        if frame.f_code.co_name == "_run" and frame.f_code.co_filename.endswith("asyncio/events.py"):
            return True
        frame = frame.f_back
    return False


def _lands(above: list[str], rel: str) -> bool:
    """Whether a call into `rel` from the files `above` (outermost first) comes back into a file
    those calls are already inside of."""
    return bool(above) and above[-1] != rel and rel in above


class Reach(NamedTuple):
    """A function the walk reaches for the first time."""
    file: str
    name: str
    back: bool                # a return: it lands in a file further up (`_lands`), or is a hook (`_hook`)
    above: tuple[str, ...]    # the files of the calls that led to it, outermost first: `folded` recounts `back`
    hook: bool


def record(argv: list[str]) -> tuple[int, list[Reach]]:
    """Run the CLI with `argv`: (exit status, the functions of the walk in first-reach order)."""
    from callstate.cli import main

    seen: set[Any] = set()
    events: list[tuple[str, Reach]] = []   # (event, what it reached), product code only

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event not in ("call", "return"):
            return
        code = frame.f_code
        rel = product_file(code.co_filename)
        if rel is None or code.co_name == "<module>" or not (events or _on_the_loop(frame)):
            return
        if event == "return":
            events.append((event, Reach(rel, code.co_qualname, False, (), False)))
        elif code not in seen:
            seen.add(code)
            above, hook = _stack(frame.f_back), _hook(frame)
            events.append((event, Reach(rel, code.co_qualname, _lands(above, rel) or hook, tuple(above), hook)))

    sys.setprofile(profile)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            status = main(argv)
    finally:
        sys.setprofile(None)
    in_client = [i for i, (_, reach) in enumerate(events) if reach.file.startswith("client/")]
    window = events[:in_client[-1] + 1] if in_client else []
    return status, [reach for event, reach in window if event == "call"]


def stops(walk: list[Reach]) -> list[tuple[str, list[str]]]:
    """Consecutive functions of one file as one stop: (file, its functions; a return marked '<-')."""
    out: list[tuple[str, list[str]]] = []
    for rel, name, back, _, _ in walk:
        name = f"<- {name}" if back else name
        if out and out[-1][0] == rel:
            out[-1][1].append(name)
        else:
            out.append((rel, [name]))
    return out


def counts(walk: list[Reach]) -> dict[str, int]:
    path = stops(walk)
    files = len({rel for rel, _ in path})
    return {"stops": len(path), "files": files, "returns": sum(reach.back for reach in walk),
            "revisits": len(path) - files}


def folded(walk: list[Reach], files: set[str]) -> list[Reach]:
    """The walk as if `files` were one module (named by the first of them the walk reaches): what
    merging them would do to the counts, the calls and their order unchanged. A return is
    recounted: a call between two of the files merged no longer lands back in another file, and
    one from outside into the merged module may now land back in it."""
    into = next((reach.file for reach in walk if reach.file in files), "")

    def one(rel: str) -> str:
        return into if rel in files else rel
    out = []
    for reach in walk:
        mapped = [one(rel) for rel in reach.above]
        above = [rel for i, rel in enumerate(mapped) if not i or mapped[i - 1] != rel]   # repeats as one, as _stack
        rel = one(reach.file)
        out.append(reach._replace(file=rel, above=tuple(above), back=_lands(above, rel) or reach.hook))
    return out


def _fold_groups(parser: argparse.ArgumentParser, given: list[str]) -> list[set[str]]:
    """--fold's files, each group a set; a name that is no file of the repository is refused (a
    misspelt one would fold nothing, and the counts printed would look like a merge's)."""
    groups = [{f.strip() for f in group.split(",") if f.strip()} for group in given]
    unknown = sorted(f for group in groups for f in group if not (ROOT / f).is_file())
    if unknown:
        parser.error(f"--fold: no such file in the repository: {', '.join(unknown)}")
    return groups


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--target", required=True, help="a running callstate serve, HOST:PORT")
    parser.add_argument("--json", action="store_true", help="print the walk as JSON")
    parser.add_argument("--fold", action="append", default=[], metavar="FILE,FILE,...",
                        help="count the walk as if these files (as the walk names them) were one module; "
                             "repeat for several merges")
    parser.add_argument("call_args", nargs="*", metavar="-- CALL ARGS",
                        help="what `callstate call` is given besides --target (default: --outcome abort)")
    opts = parser.parse_args(args)
    groups = _fold_groups(parser, opts.fold)
    status, walk = record(["call", "--target", opts.target, *(opts.call_args or ["--outcome", "abort"])])
    for group in groups:
        walk = folded(walk, group)
    path, total = stops(walk), counts(walk)
    if opts.json:
        print(json.dumps({"exit": status, "walk": [{"file": f, "functions": fs} for f, fs in path], **total}))
    else:
        for i, (rel, names) in enumerate(path, 1):
            print(f"{i:3d}. {rel}: {', '.join(names)}")
        print(f"{total['stops']} stops over {total['files']} files: {total['returns']} returns, "
              f"{total['revisits']} revisits (callstate call exited {status})")
    return 0 if walk else 1


if __name__ == "__main__":
    sys.exit(main())
