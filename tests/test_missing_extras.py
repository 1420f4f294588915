"""Missing extras raise ``graphthrift.MissingExtra`` naming a real extra (issue 11.10).

The packages are not uninstalled: each check runs in a fresh interpreter whose import
system refuses them, as it would on a machine without them.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED or name.startswith(tuple(b + "." for b in BLOCKED)):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

BLOCKED = {blocked!r}
for loaded in [m for m in sys.modules if m in BLOCKED or m.startswith(tuple(b + "." for b in BLOCKED))]:
    del sys.modules[loaded]
sys.meta_path.insert(0, Block())

import json
from graphthrift.errors import MissingExtra
try:
    {statement}
except MissingExtra as exc:
    print(json.dumps({{"extra": exc.extra, "package": exc.package, "message": str(exc)}}))
except BaseException as exc:
    print(json.dumps({{"other": type(exc).__name__, "message": str(exc)}}))
else:
    print(json.dumps({{"imported": True}}))
"""


def run_blocked(blocked: set[str], statement: str) -> dict[str, str]:
    code = BLOCKER.format(blocked=sorted(blocked), statement=statement)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def extras() -> set[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(meta["project"]["optional-dependencies"])


@pytest.mark.parametrize(
    "statement",
    [
        "import graphthrift.middleware",
        "from graphthrift.middleware import HistoryPruningMiddleware",
        "import graphthrift.middleware.cache",
    ],
)
def test_middleware_without_langchain_names_the_agents_extra(statement: str) -> None:
    result = run_blocked({"langchain"}, statement)
    assert result.get("extra") == "agents", result
    assert result["package"] == "langchain"
    assert "pip install 'graphthrift[agents]'" in result["message"]


@pytest.mark.parametrize(
    "statement",
    [
        "import graphthrift.llamaindex",
        "from graphthrift.llamaindex import PrunedChatMemory",
        "import graphthrift.llamaindex.cache",
    ],
)
def test_llamaindex_without_llama_index_names_the_llamaindex_extra(statement: str) -> None:
    result = run_blocked({"llama_index"}, statement)
    assert result.get("extra") == "llamaindex", result
    assert result["package"] == "llama-index-core"
    assert "pip install 'graphthrift[llamaindex]'" in result["message"]


def test_the_core_and_langgraph_import_without_the_extras() -> None:
    result = run_blocked(
        {"langchain", "llama_index"},
        "import graphthrift, graphthrift.history.pruner, graphthrift.langgraph.history",
    )
    assert result == {"imported": True}


def test_every_missing_extra_in_src_names_an_extra_of_pyproject() -> None:
    known = extras()
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    core = " ".join(meta["project"]["dependencies"])
    calls = []
    for path in (ROOT / "src").rglob("*.py"):
        if path.name == "errors.py":
            continue  # where MissingExtra and require_extra are defined
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id == "MissingExtra":
                    calls.append((path.name, node.args[0], node.args[1]))
                elif node.func.id == "require_extra":
                    calls.append((path.name, node.args[1], node.args[2]))
    assert len(calls) >= 8
    for name, extra, package in calls:
        assert isinstance(extra, ast.Constant), f"{name}: the extra must be a literal"
        if extra.value is None:  # a core dependency: its package must be one
            assert isinstance(package, ast.Constant) and package.value in core, name
        else:
            assert extra.value in known, f"{name}: extra {extra.value!r} is not in pyproject"


def test_missing_extra_for_a_core_dependency_says_so() -> None:
    from graphthrift.errors import MissingExtra

    err = MissingExtra(None, "prometheus-client")
    assert err.extra is None and "graphthrift[" not in str(err)
    assert "prometheus-client" in str(err) and "pip install" in str(err)
