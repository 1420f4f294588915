"""No module grows past about 500 lines without saying why at its top (issue 15)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "graphthrift"
LIMIT = 500


def test_long_modules_say_why() -> None:
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) <= LIMIT:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if "Long because" not in doc:
            unexplained.append(f"{path.relative_to(PACKAGE)} ({len(text.splitlines())} lines)")
    assert not unexplained, "split these or add a 'Long because ...' line: " + ", ".join(
        unexplained
    )
