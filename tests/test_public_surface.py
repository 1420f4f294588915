"""The typed public surface (issue 15.5): lazy tables, their stubs, the errors and the docs.

Every package ``__init__`` with a lazy table names the same names three times: in
``__all__``, in ``_EXPORTS`` and in the ``if TYPE_CHECKING:`` imports a type checker reads
instead of the lazy ``__getattr__`` (which it would type as ``Any``). A user file that
imports every public name is checked with ``mypy --strict --disallow-any-expr``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import graphthrift
from graphthrift import errors

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "graphthrift"
NOT_LIBRARY = {"cli", "bench"}  # the command line and its benchmarks: no import surface


def module_name(init: Path) -> str:
    return ".".join(init.parent.relative_to(SRC).parts)


def lazy_inits() -> list[Path]:
    """Every package ``__init__`` that holds a lazy ``_EXPORTS`` table."""
    return sorted(p for p in PACKAGE.rglob("__init__.py") if "_EXPORTS" in p.read_text())


def public_packages() -> list[str]:
    """``graphthrift`` and every subpackage with an ``__all__`` (not the CLI or the bench)."""
    subs = sorted(
        p.parent.name
        for p in PACKAGE.glob("*/__init__.py")
        if p.parent.name not in NOT_LIBRARY and "__all__" in p.read_text()
    )
    return ["graphthrift", *(f"graphthrift.{s}" for s in subs)]


def read_table(init: Path) -> tuple[dict[str, str], set[str] | None, dict[str, str]]:
    """(``_EXPORTS``, the literal ``__all__`` or None when it is ``sorted(_EXPORTS)``, stubs).

    The stubs map each name imported under ``if TYPE_CHECKING:`` to its module.
    """
    tree = ast.parse(init.read_text(encoding="utf-8"))
    table: dict[str, str] = {}
    listed: set[str] | None = None
    stubs: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            target = node.targets[0].id
            if target == "_EXPORTS":
                table = ast.literal_eval(node.value)
            elif target == "__all__":
                value = node.value
                is_sorted_table = (
                    isinstance(value, ast.Call)
                    and isinstance(value.func, ast.Name)
                    and value.func.id == "sorted"
                    and isinstance(value.args[0], ast.Name)
                    and value.args[0].id == "_EXPORTS"
                )
                listed = None if is_sorted_table else set(ast.literal_eval(value))
        elif (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING"
        ):
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom), f"{init}: only imports under TYPE_CHECKING"
                module = "." * stmt.level + (stmt.module or "")
                for alias in stmt.names:
                    assert alias.asname == alias.name, (
                        f"{init}: write `import {alias.name} as {alias.name}` so the name is "
                        "re-exported under strict mypy"
                    )
                    stubs[alias.name] = module
    return table, listed, stubs


@pytest.mark.parametrize("init", lazy_inits(), ids=module_name)
def test_all_the_lazy_table_and_the_type_checking_imports_name_the_same(init: Path) -> None:
    table, listed, stubs = read_table(init)
    assert table, f"{init}: empty _EXPORTS"
    if listed is not None:
        assert listed == set(table), f"{init}: __all__ and _EXPORTS differ"
    assert set(stubs) == set(table), (
        f"{init}: TYPE_CHECKING imports differ from _EXPORTS (run scripts/lazy_stubs.py): "
        f"missing {sorted(set(table) - set(stubs))}, extra {sorted(set(stubs) - set(table))}"
    )
    moved = {n: (table[n], stubs[n]) for n in table if table[n] != stubs[n]}
    assert moved == {}, f"{init}: the stub imports a name from another module than the table"


@pytest.mark.parametrize("init", lazy_inits(), ids=module_name)
def test_every_lazy_name_resolves_at_runtime(init: Path) -> None:
    package = importlib.import_module(module_name(init))
    table, _, _ = read_table(init)
    assert sorted(package.__all__) == sorted(table)
    for name in table:
        assert getattr(package, name) is not None, f"{package.__name__}.{name}"
    with pytest.raises(AttributeError, match="no attribute 'not_a_public_name'"):
        package.not_a_public_name  # noqa: B018


def test_the_table_inits_are_found() -> None:
    names = {module_name(p) for p in lazy_inits()}
    expected = {"graphthrift", "graphthrift.langgraph", "graphthrift.middleware"}
    assert expected | {"graphthrift.langchain", "graphthrift.llamaindex"} <= names


# --- a user's mypy ---------------------------------------------------------------------

PROBE = 'print(json.loads("1"))  # the probe: a real Any, which mypy must see'
CONTAINS_ANY = 'Expression type contains "Any"'


def project_mypy_settings() -> str:
    """pyproject's ``[tool.mypy]`` as an ini section (without ``files``), so the package is
    checked as the project checks it and the project's cache serves."""
    meta = __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())
    lines = ["[mypy]"]
    for key, value in meta["tool"]["mypy"].items():
        if key in ("files", "overrides") or isinstance(value, dict):
            continue
        text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def user_file() -> tuple[str, dict[int, str]]:
    """A user module that imports every public name and uses each on its own line."""
    lines = ['"""Every public name of graphthrift, imported as a user does."""', "import json", ""]
    uses: list[tuple[str, str]] = []
    for i, package in enumerate(public_packages()):
        for name in importlib.import_module(package).__all__:
            alias = f"_{i}_{name}"
            lines.append(f"from {package} import {name} as {alias}")
            uses.append((alias, f"{package}.{name}"))
    lines.append("")
    where: dict[int, str] = {}
    for alias, public in uses:
        lines.append(f"print({alias})")  # an argument: mypy lets a bare statement be Any
        where[len(lines)] = public
    lines.append(PROBE)
    where[len(lines)] = "probe"
    return "\n".join(lines) + "\n", where


def test_a_user_file_importing_every_public_name_type_checks_without_any(
    tmp_path: Path,
) -> None:
    """No public name is ``Any`` to a user's ``mypy --strict --disallow-any-expr``.

    Signatures that take free-form JSON (``**tags: Any``, ``Mapping[str, Any]``) *contain*
    Any and are allowed; a name that *is* Any (an unresolved lazy export, a class from a
    package without stubs) fails, and so does any other error. The run shares the project's
    ``.mypy_cache`` (same options for the package), so it takes seconds once ``mypy`` ran.
    """
    text, where = user_file()
    (tmp_path / "surface_user.py").write_text(text)
    (tmp_path / "mypy.ini").write_text(
        project_mypy_settings() + "\n[mypy-surface_user]\ndisallow_any_expr = True\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(tmp_path / "mypy.ini"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "--no-error-summary",
            "--show-error-codes",
            "surface_user.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "MYPYPATH": str(SRC)},
    )
    assert out.stderr.strip() == "", out.stderr
    problems: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        match = re.match(r"surface_user\.py:(\d+): (?:error|note): (.*)", line)
        assert match, f"mypy reported outside the user file: {line}"
        if CONTAINS_ANY in match.group(2):
            continue
        problems.setdefault(where.get(int(match.group(1)), "import"), []).append(match.group(2))
    assert list(problems.pop("probe", [])) == ['Expression has type "Any"  [misc]'], (
        "mypy did not flag the probe: the check is not running with --disallow-any-expr"
    )
    assert problems == {}


# --- errors ------------------------------------------------------------------------------


def public_error_classes() -> dict[str, type[BaseException]]:
    """Every exception class a public package exports, by name."""
    found: dict[str, type[BaseException]] = {}
    for package in public_packages():
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                found[name] = obj
    for name, obj in inspect.getmembers(errors, inspect.isclass):
        if issubclass(obj, BaseException) and obj.__module__ == errors.__name__:
            found[name] = obj
    return found


def test_every_public_error_is_a_graphthrift_error_exported_at_the_top() -> None:
    found = public_error_classes()
    assert len(found) >= 30
    for name, cls in found.items():
        assert issubclass(cls, errors.GraphthriftError), name
        assert name in graphthrift.__all__, f"graphthrift.{name} is not exported"
        assert getattr(graphthrift, name) is cls, name


@pytest.mark.parametrize(
    ("old_module", "name"),
    [
        ("graphthrift.ledger.ledger", "LedgerFlushTimeout"),
        ("graphthrift.ledger", "LedgerFlushTimeout"),
        ("graphthrift.ops.batch", "BatchItemFailed"),
        ("graphthrift.ops.batch", "BatchJobNotFound"),
        ("graphthrift.ops.batch", "BatchJobTimeout"),
        ("graphthrift.ops", "BatchJobTimeout"),
        ("graphthrift.ops.alerts", "AlertConfigError"),
        ("graphthrift.bench._data", "DataFileError"),
        ("graphthrift.bench._data", "DataSetMissing"),
        ("graphthrift.bench._data_history", "ConversationFormatError"),
        ("graphthrift.bench._traffic_read", "TrafficFileError"),
    ],
)
def test_a_moved_error_keeps_its_old_import_path(old_module: str, name: str) -> None:
    assert getattr(importlib.import_module(old_module), name) is getattr(errors, name)


def test_alert_config_error_is_a_config_error_with_its_message() -> None:
    exc = errors.AlertConfigError("k", -1.0, "> 0")
    assert isinstance(exc, errors.ConfigError) and isinstance(exc, ValueError)
    assert (exc.name, exc.value, exc.rule, exc.expected) == ("k", -1.0, "> 0", "> 0")
    assert str(exc) == "alert setting k must be > 0, got -1.0"


def test_file_format_errors_are_config_errors_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "conv.jsonl"
    conv = errors.ConversationFormatError(path, 3, "missing the 'turns' list")
    assert isinstance(conv, errors.ConfigError)
    assert (conv.path, conv.line, conv.problem, conv.value) == (
        path,
        3,
        "missing the 'turns' list",
        path,
    )
    assert str(conv).startswith(f"{path}:3: missing the 'turns' list. Expected one JSON")
    traffic = errors.TrafficFileError(path, "no such file")
    assert isinstance(traffic, errors.ConfigError)
    assert (traffic.name, traffic.rule, str(traffic)) == (
        "--traffic",
        "no such file",
        f"--traffic {path}: no such file",
    )


def test_a_missing_bundled_set_says_how_to_get_it_and_a_users_file_does_not() -> None:
    from graphthrift.bench._data import DATA_ENV, SETS

    bundled = errors.DataSetMissing("stsb", None, "not found (no data folder)")
    assert str(bundled).startswith("data set stsb not found (no data folder): it ships")
    assert DATA_ENV in str(bundled) and SETS["stsb"].source in str(bundled)
    own = errors.DataSetMissing("conversations", Path("/x.jsonl"), "not found (--conversations)")
    assert str(own) == "conversations not found (--conversations) at /x.jsonl"


# --- missing extras ----------------------------------------------------------------------


def run_python(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter on this checkout; its last line, as JSON."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


ABSENT = """
import json, sys
for name in {absent!r}:
    sys.modules[name] = None  # what the import system sees when a package is not installed
from graphthrift.errors import MissingExtra
try:
    import {module}
except MissingExtra as exc:
    print(json.dumps({{"extra": exc.extra, "package": exc.package}}))
except BaseException as exc:
    print(json.dumps({{"other": repr(exc)}}))
else:
    print(json.dumps({{"imported": True}}))
"""


@pytest.mark.parametrize(
    ("module", "absent", "extra"),
    [
        ("graphthrift.middleware", ["langchain"], "agents"),
        ("graphthrift.llamaindex", ["llama_index", "llama_index.core"], "llamaindex"),
    ],
)
def test_an_adapter_without_its_framework_raises_missing_extra(
    module: str, absent: list[str], extra: str
) -> None:
    code = ABSENT.format(absent=absent, module=module)
    result = run_python(code)
    assert result.get("extra") == extra, result
    meta = __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())
    assert extra in meta["project"]["optional-dependencies"]


# --- docs --------------------------------------------------------------------------------


def test_the_api_page_lists_every_public_name_and_is_current() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        api_doc = importlib.import_module("api_doc")
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert page == api_doc.render(), "docs/api.md is stale: run python scripts/api_doc.py"
    for package in public_packages():
        assert f"## `{package}`" in page
        for name in importlib.import_module(package).__all__:
            assert f"- `{name}` (" in page, f"{package}.{name}"


def test_every_pip_install_hint_in_src_names_a_real_extra() -> None:
    """A hand-written ``pip install 'graphthrift[x]'`` must name an extra of pyproject too."""
    meta = __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())
    known = set(meta["project"]["optional-dependencies"])
    named = {
        (path.relative_to(ROOT).as_posix(), extra)
        for path in PACKAGE.rglob("*.py")
        for extra in re.findall(r"graphthrift\[(\w+)\]", path.read_text(encoding="utf-8"))
    }
    assert named, "the scan found no hint at all"
    assert {(path, extra) for path, extra in named if extra not in known | {"extra"}} == set()


def test_a_model_from_env_without_langchain_names_the_agents_extra() -> None:
    code = """
import json, sys
sys.modules["langchain"] = None
from graphthrift.errors import MissingExtra
from graphthrift.langchain.sim import chat_model_from_env
try:
    chat_model_from_env("cheap", environ={"GRAPHTHRIFT_CHEAP_MODEL": "openai:gpt-4o-mini"})
except MissingExtra as exc:
    print(json.dumps({"extra": exc.extra, "package": exc.package}))
except BaseException as exc:
    print(json.dumps({"other": repr(exc)}))
"""
    assert run_python(code) == {
        "extra": "agents",
        "package": "langchain",
    }
