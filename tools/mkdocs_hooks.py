"""mkdocs hook: the README is the site's home page, so the front door is written once.

Its links into docs/ become the site's own; links to source files become plain code spans
(the site holds only the documentation).
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent


def readme_as_home() -> str:
    text = (ROOT / "README.md").read_text()
    text = text.replace("](docs/", "](")
    return re.sub(r"\[([^\]]+)\]\((?!https?:|#)([^)]+\.(?:py|sh|toml|yml|proto))\)", r"\1 (`\2`)", text)


def on_files(files: Files, config) -> Files:   # noqa: ANN001 - mkdocs' hook signature
    files.append(File.generated(config, "index.md", content=readme_as_home()))
    return files
