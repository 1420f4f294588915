"""The import graph of ``src/graphthrift`` keeps its shape (issue 15, acceptance).

Every module's AST is walked, imports at module level and inside functions alike:

(a) the core (every module outside the adapters, the CLI and the bench) imports no adapter
    and, at module level, no agent framework; a framework import inside a function is
    allowed only where ``FUNCTION_LEVEL_FRAMEWORK`` says why;
(b) no module imports another package's private name: neither a module ``graphthrift.x._y``
    from outside ``graphthrift.x`` nor ``_name`` from a module of another package;
(c) nothing in src imports the deprecated flat shims (``graphthrift.prices``, ...).

Imports under ``if TYPE_CHECKING:`` are not run, so rule (a) does not apply to them (rules
b and c do). ``KNOWN_VIOLATIONS`` lists what the tree breaks today; the test fails on any
new violation and on a listed one that is gone, so the list only shrinks.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "graphthrift"
ADAPTERS = ("langgraph", "middleware", "langchain", "llamaindex")
NOT_CORE = (*ADAPTERS, "cli", "bench")
FRAMEWORKS = ("langchain", "langchain_core", "langgraph", "llama_index")

# Core modules that import a framework inside a function, and why that is sound.
FUNCTION_LEVEL_FRAMEWORK: dict[tuple[str, str], str] = {
    ("graphthrift.kernel", "langgraph.config"): (
        "run_config reads the running graph's config only when called inside a graph"
    ),
    ("graphthrift.kernel", "langgraph.types"): (
        "ask_human raises LangGraph's interrupt only when a node asks for a human"
    ),
}

# What the tree is allowed to break, one entry per (rule, importing module, imported name),
# with the file and why. Empty: a new entry needs a reason a reviewer accepts.
KNOWN_VIOLATIONS: set[tuple[str, str, str]] = set()


@dataclass(frozen=True, slots=True)
class Import:
    """One imported module (``name``) or name of a module (``module:name``)."""

    importer: str  # the importing module
    target: str  # the module imported, or the module the name comes from
    name: str | None  # the name imported from ``target`` (None: the module itself)
    function_level: bool  # inside a function or method
    type_only: bool  # under ``if TYPE_CHECKING:``
    line: int


def module_of(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def resolve(importer: str, package: bool, level: int, module: str | None) -> str:
    """The absolute module of a (possibly relative) ``from`` import."""
    if level == 0:
        return module or ""
    base = importer.split(".") if package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path) -> list[Import]:
    importer = module_of(path)
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(
                        Import(importer, alias.name, None, in_function, type_only, child.lineno)
                    )
            elif isinstance(child, ast.ImportFrom):
                target = resolve(importer, is_package(path), child.level, child.module)
                for alias in child.names:
                    found.append(
                        Import(importer, target, alias.name, in_function, type_only, child.lineno)
                    )
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, True, type_only)
            elif isinstance(child, ast.If) and is_type_checking(child):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), in_function, True)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), in_function, type_only)
            else:
                visit(child, in_function, type_only)

    visit(ast.parse(path.read_text(encoding="utf-8")), False, False)
    return found


def all_imports() -> list[Import]:
    return [i for path in sorted(PACKAGE.rglob("*.py")) for i in imports_of(path)]


def files() -> dict[str, str]:
    return {module_of(p): str(p.relative_to(SRC.parent)) for p in PACKAGE.rglob("*.py")}


def package_of(module: str) -> str:
    """The capability package a module belongs to: ``graphthrift.x`` (or the module itself)."""
    return ".".join(module.split(".")[:2])


def is_core(module: str) -> bool:
    parts = module.split(".")
    return len(parts) < 2 or parts[1] not in NOT_CORE


def is_adapter(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "graphthrift" and len(parts) >= 2 and parts[1] in ADAPTERS


def framework_of(module: str) -> str | None:
    top = module.split(".")[0]
    return top if top in FRAMEWORKS else None


def shims() -> set[str]:
    """The deprecated flat modules: top-level modules whose docstring says they moved."""
    out = set()
    for path in PACKAGE.glob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if doc.startswith("Moved to"):
            out.add(module_of(path))
    return out


def private_owner(module: str) -> str | None:
    """For ``graphthrift.x._y(.z)``, ``graphthrift.x``: the only package that may import it."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def within(module: str, owner: str) -> bool:
    return module == owner or module.startswith(owner + ".")


def violations() -> set[tuple[str, str, str]]:
    """Every (rule, importer, imported) that breaks rules a, b or c."""
    flat = shims()
    modules = set(files())
    out: set[tuple[str, str, str]] = set()
    for imp in all_imports():
        if not imp.target.startswith("graphthrift") and framework_of(imp.target) is None:
            continue
        imported = imp.target if imp.name is None else f"{imp.target}:{imp.name}"
        as_module = f"{imp.target}.{imp.name}" if imp.name else imp.target
        names_module = imp.name is not None and as_module in modules
        # (a) the core imports no adapter, and no framework outside the allowlist
        if is_core(imp.importer) and not imp.type_only:
            if is_adapter(imp.target) or (names_module and is_adapter(as_module)):
                out.add(("core-imports-adapter", imp.importer, imported))
            if framework_of(imp.target):
                allowed = (imp.importer, imp.target) in FUNCTION_LEVEL_FRAMEWORK
                if not imp.function_level:
                    out.add(("core-imports-framework", imp.importer, imported))
                elif not allowed:
                    out.add(("core-imports-framework-in-function", imp.importer, imported))
        if not imp.target.startswith("graphthrift"):
            continue
        # (b) no other package's private module or name
        for candidate in {imp.target, as_module} if names_module else {imp.target}:
            owner = private_owner(candidate)
            if owner is not None and not within(imp.importer, owner):
                out.add(("private-module", imp.importer, candidate))
        if (
            imp.name is not None
            and not names_module
            and imp.name.startswith("_")
            and not imp.name.startswith("__")
            and package_of(imp.target) != package_of(imp.importer)
        ):
            out.add(("private-name", imp.importer, imported))
        # (c) no deprecated flat shim
        for candidate in (imp.target, as_module):
            if candidate in flat and imp.importer not in flat:
                out.add(("deprecated-shim", imp.importer, candidate))
    return out


def describe(found: set[tuple[str, str, str]]) -> str:
    where = files()
    return "\n".join(
        f"  ({rule!r}, {importer!r}, {target!r}),  # {where.get(importer, '?')}"
        for rule, importer, target in sorted(found)
    )


def test_no_new_import_violations() -> None:
    new = violations() - KNOWN_VIOLATIONS
    assert not new, "new import-graph violations:\n" + describe(new)


def test_known_violations_still_exist() -> None:
    """A fixed violation leaves the list, so it cannot come back unnoticed."""
    fixed = KNOWN_VIOLATIONS - violations()
    assert not fixed, "fixed, remove from KNOWN_VIOLATIONS:\n" + describe(fixed)


# --- the walker itself --------------------------------------------------------------------


def test_the_walker_sees_module_function_and_type_checking_imports(tmp_path: Path) -> None:
    sample = tmp_path / "src" / "graphthrift" / "cache" / "sample.py"
    sample.parent.mkdir(parents=True)
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "import langgraph.graph\n"
        "from ..resilience._flight import Codec\n"
        "from . import keys\n"
        "if TYPE_CHECKING:\n"
        "    from langchain_core.messages import AIMessage\n"
        "def f():\n"
        "    from graphthrift.prices import PriceBook\n"
    )
    global SRC
    saved = SRC
    SRC = tmp_path / "src"
    try:
        found = {(i.target, i.name, i.function_level, i.type_only) for i in imports_of(sample)}
    finally:
        SRC = saved
    assert ("langgraph.graph", None, False, False) in found
    assert ("graphthrift.resilience._flight", "Codec", False, False) in found
    assert ("graphthrift.cache", "keys", False, False) in found
    assert ("langchain_core.messages", "AIMessage", False, True) in found
    assert ("graphthrift.prices", "PriceBook", True, False) in found


def test_the_rules_classify_modules() -> None:
    assert is_core("graphthrift.cache.keys") and is_core("graphthrift.kernel")
    assert not is_core("graphthrift.langgraph.cache") and not is_core("graphthrift.bench.stack")
    assert private_owner("graphthrift.resilience._flight") == "graphthrift.resilience"
    assert private_owner("graphthrift.cache.keys") is None
    assert {"graphthrift.prices", "graphthrift.records"} <= shims()
    assert "graphthrift.kernel" not in shims()
