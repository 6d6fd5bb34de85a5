"""Smaller functions: radon's cyclomatic grade of every function of the product is C or better
(at most 20 paths); a function that grows past it fails here, naming itself."""

from __future__ import annotations

from pathlib import Path

import pytest

radon = pytest.importorskip("radon.complexity", reason="radon (dev extra) is not installed")

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ["callstate", "client", "server", "cli", "observe", "schema", "integrations"]
WORST = "C"


def _files() -> list[Path]:
    out: list[Path] = []
    for name in CHECKED:
        path = ROOT / name
        out.extend(p for p in sorted(path.rglob("*.py")) if "v1" not in p.relative_to(ROOT).parts)
    return out


@pytest.mark.unit
@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_function_is_graded_worse_than_c(path: Path) -> None:
    blocks = radon.cc_visit(path.read_text(encoding="utf-8"))
    too_complex = [f"{b.fullname} {radon.cc_rank(b.complexity)}({b.complexity}) at line {b.lineno}"
                   for b in blocks if radon.cc_rank(b.complexity) > WORST]
    assert not too_complex, f"{path.relative_to(ROOT)}: {', '.join(too_complex)}"
