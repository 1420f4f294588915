"""Composed scenarios (issue 11): realistic agents with the whole graphthrift stack.

Every test here is marked ``scenario`` (``pytest -m scenario`` runs only these). The
scenario runs are module-scoped fixtures: one run per module, checked by one test per
invariant family, so a known failure (``xfail``) hides no other invariant.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# ``fakes`` lives in tests/, ``scenario_kit`` here; both import as top-level modules.
for folder in (Path(__file__).parent, Path(__file__).parents[1]):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scenario: a composed whole-stack scenario (issue 11)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.scenario)
