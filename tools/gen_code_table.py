"""Rewrite the code table in docs/model.md from callstate/code_docs.py (tests/test_docs.py
fails while the two differ). Usage: python tools/gen_code_table.py [--check]"""

from __future__ import annotations

import sys
from pathlib import Path

from callstate.code_docs import BEGIN, END, markdown

MODEL = Path(__file__).resolve().parent.parent / "docs" / "model.md"


def rendered(text: str) -> str:
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + markdown() + text[end:]


def main(argv: list[str]) -> int:
    text = MODEL.read_text()
    new = rendered(text)
    if "--check" in argv:
        if new != text:
            print("docs/model.md: the code table is stale; run python tools/gen_code_table.py", file=sys.stderr)
            return 1
        return 0
    MODEL.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
