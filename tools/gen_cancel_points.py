"""Rewrite the cancel-point tables in docs/load.md from callstate/cancel_points.py
(tests/test_docs.py fails while they differ). Usage: python tools/gen_cancel_points.py [--check]"""

from __future__ import annotations

import sys
from pathlib import Path

from callstate.cancel_points import END_MARK, PIPE, UNARY, PointTable

PAGE = Path(__file__).resolve().parent.parent / "docs" / "load.md"


def _render(text: str, table: PointTable) -> str:
    start = text.index(table.begin())
    end = text.index(END_MARK, start) + len(END_MARK)
    return text[:start] + table.markdown() + text[end:]


def rendered(text: str) -> str:
    for table in (UNARY, PIPE):
        text = _render(text, table)
    return text


def main(argv: list[str]) -> int:
    text = PAGE.read_text()
    new = rendered(text)
    if "--check" in argv:
        if new != text:
            print("docs/load.md: a cancel-point table is stale; run python tools/gen_cancel_points.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
