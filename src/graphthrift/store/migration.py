"""One schema step. A leaf module, so that every component's schema can import it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: a version number, a name and the SQL it runs."""

    version: int
    name: str
    statements: tuple[str, ...]
