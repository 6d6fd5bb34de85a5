"""mkdocs hook: the README is the site's home page, so the front door is written once.

Its links into docs/ become the site's own; links to source files become plain code spans
(the site holds only the documentation).
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent


# a link to a source file (the pages link to code with relative paths, which a code host follows)
_SOURCE_LINK = re.compile(r"\[([^\]]+)\]\((?!https?:|#)((?:\.\./)*)([^)#]+\.(?:py|sh|toml|yml|yaml|proto|js))\)")


def source_links_as_code(text: str) -> str:
    def code(m: re.Match[str]) -> str:
        label, path = m.group(1), m.group(3)
        return label if label.strip("`") == path else f"{label} (`{path}`)"
    return _SOURCE_LINK.sub(code, text)


def readme_as_home() -> str:
    return source_links_as_code((ROOT / "README.md").read_text().replace("](docs/", "]("))


def on_page_markdown(markdown: str, page, config, files) -> str:   # noqa: ANN001 - mkdocs' hook signature
    return source_links_as_code(markdown)


def on_files(files: Files, config) -> Files:   # noqa: ANN001 - mkdocs' hook signature
    files.append(File.generated(config, "index.md", content=readme_as_home()))
    return files
