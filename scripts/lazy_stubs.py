"""Rewrite the ``if TYPE_CHECKING:`` imports of every lazy package ``__init__`` from its table.

    python scripts/lazy_stubs.py            # rewrite the blocks that differ
    python scripts/lazy_stubs.py --check    # exit 1 when a block differs from its table

A lazy ``__init__`` resolves names through ``_EXPORTS`` at run time; a type checker reads
the TYPE_CHECKING imports instead. After adding a name to a table, run this (then
``ruff format``) so the two agree; tests/test_public_surface.py checks that they do.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "graphthrift"
MARK = "\nif TYPE_CHECKING:"


def table_of(source: str) -> dict[str, str]:
    """The ``_EXPORTS`` table of a module's source ({} when it has none)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets
        ):
            table: dict[str, str] = ast.literal_eval(node.value)
            return table
    return {}


def stubs_of(source: str) -> dict[str, str]:
    """The names the TYPE_CHECKING block imports, each with its module."""
    found: dict[str, str] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name):
            if node.test.id != "TYPE_CHECKING":
                continue
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom):
                    module = "." * stmt.level + (stmt.module or "")
                    found.update({alias.name: module for alias in stmt.names})
    return found


def with_stubs(source: str, table: dict[str, str]) -> str:
    """``source`` with its TYPE_CHECKING block (the module's last block) made from ``table``."""
    imports = sorted(table.items(), key=lambda item: (item[1], item[0]))
    block = MARK + "  # pragma: no cover\n"
    block += "".join(f"    from {module} import {name} as {name}\n" for name, module in imports)
    head = source[: source.index(MARK)] if MARK in source else source
    text = head.rstrip("\n") + "\n" + block
    if "from typing import TYPE_CHECKING" not in text:
        future = "from __future__ import annotations\n"
        text = text.replace(future, future + "\nfrom typing import TYPE_CHECKING\n", 1)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report the blocks that differ")
    args = parser.parse_args(argv)
    stale = []
    for init in sorted(PACKAGE.rglob("__init__.py")):
        source = init.read_text(encoding="utf-8")
        table = table_of(source)
        if not table:
            continue
        if stubs_of(source) == table:
            continue  # the same imports, perhaps ordered otherwise
        stale.append(init.relative_to(ROOT))
        if not args.check:
            init.write_text(with_stubs(source, table), encoding="utf-8")
    for path in stale:
        print(f"{'stale' if args.check else 'rewrote'}: {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
