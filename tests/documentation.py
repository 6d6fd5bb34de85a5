"""The project's documentation as the tests read it: the README (the front door) and the
pages under docs/. Examples are run or checked as written wherever a page shows them, so a
section can move between pages without its test losing it."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def pages() -> list[Path]:
    """README.md, then every docs page in name order."""
    return [README, *sorted(DOCS.rglob("*.md"))]


@cache
def _text(path: Path) -> str:
    return path.read_text()


def documentation() -> str:
    """Every page's text, one after another."""
    return "\n".join(_text(p) for p in pages())


_HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$", re.M)


def section(heading: str) -> str:
    """The text under `heading` (any level) up to the next heading of its level or above: on the
    one docs page that holds it, else in the README (whose overview repeats some page titles)."""
    found = _sections(heading, pages()[1:]) or _sections(heading, [README])
    assert len(found) == 1, f"heading {heading!r} is on {len(found)} documentation pages, not one"
    return found[0]


def _sections(heading: str, paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        text = _text(path)
        outside = _outside_code(text)
        for m in _HEADING.finditer(text):
            if m.group(2) == heading and outside(m.start()):
                level = len(m.group(1))
                end = len(text)
                for n in _HEADING.finditer(text, m.end()):
                    if len(n.group(1)) <= level and outside(n.start()):
                        end = n.start()
                        break
                found.append(text[m.end():end])
    return found


def blocks(text: str, lang: str = "") -> list[str]:
    """The fenced code blocks of `text` in language `lang` ("" for unlabelled ones). Fences pair in
    order, so a labelled block's closing fence is never taken for an unlabelled block's opening."""
    return [m.group(2) for m in re.finditer(r"^```([\w+-]*)\n(.*?)^```", text, re.S | re.M) if m.group(1) == lang]


def _outside_code(text: str):
    fences = [m.start() for m in re.finditer(r"^```", text, re.M)]
    spans = list(zip(fences[::2], fences[1::2]))
    return lambda pos: not any(a <= pos < b for a, b in spans)
