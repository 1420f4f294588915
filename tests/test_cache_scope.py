"""Scope keywords of the cache: typed (``Unpack[CacheScopeKwargs]``) and checked at run time.

A misspelt scope keyword (``tenant=`` for ``tenant_id=``) must never run the call under the
default tenant: it raises ``UnknownScopeKey`` (a ``ConfigError``, and a ``TypeError`` as it
always was) naming the keyword, on every public method and adapter, before anything else.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from cache_helpers import bow_embedder
from graphthrift.cache import ExactCache, SemanticCache, UnknownScopeKey
from graphthrift.errors import ConfigError
from graphthrift.store import Store


def _ns() -> str:
    return f"scope-{uuid.uuid4().hex[:10]}"


def test_a_misspelt_scope_keyword_raises_a_config_error_naming_it(store: Store) -> None:
    cache = ExactCache(store, namespace=_ns())
    with pytest.raises(ConfigError, match="tenant") as caught:
        cache.lookup("What are your opening hours?", tenant="acme")  # type: ignore[call-arg]
    assert isinstance(caught.value, UnknownScopeKey) and isinstance(caught.value, TypeError)
    assert caught.value.name == "tenant" and caught.value.value == "acme"
    assert caught.value.keys == ["tenant"] and "tenant_id" in caught.value.allowed


async def test_every_public_method_checks_its_scope_keywords(store: Store) -> None:
    cache = SemanticCache(store, bow_embedder(), namespace=_ns())
    bad: dict[str, Any] = {"tennant_id": "acme"}
    calls = [
        lambda: cache.update("q", "a", **bad),
        # skipped answers (tool calls) are skipped only after the keywords are checked
        lambda: cache.update("q", "a", tool_calls=True, **bad),
        lambda: cache.update_many(["q"], ["a"], **bad),
        lambda: cache.clear(**bad),
        lambda: cache.shadow_report(**bad),
    ]
    for call in calls:
        with pytest.raises(UnknownScopeKey, match="tennant_id"):
            call()
    with pytest.raises(UnknownScopeKey, match="tennant_id"):
        await cache.alookup("q", **bad)
    with pytest.raises(UnknownScopeKey, match="tennant_id"):
        await cache.aupdate("q", "a", tool_calls=True, **bad)
    with pytest.raises(UnknownScopeKey, match="tennant_id"):
        await cache.aclear(**bad)
    # the right keywords still work, and nothing was written under the default tenant
    assert cache.update("q", "a", tenant_id="acme") is not None
    assert cache.lookup("q") is None
    assert cache.lookup("q", tenant_id="acme") is not None


def test_adapters_check_their_scope_keywords_when_built(store: Store) -> None:
    from graphthrift.langchain.cache import as_langchain_cache
    from graphthrift.middleware.cache import ExactCacheMiddleware

    cache = ExactCache(store, namespace=_ns())
    bad: dict[str, Any] = {"tenant": "acme"}
    with pytest.raises(UnknownScopeKey, match="tenant"):
        ExactCacheMiddleware(cache, **bad)
    with pytest.raises(UnknownScopeKey, match="tenant"):
        as_langchain_cache(cache, **bad)


def test_mypy_flags_a_misspelt_scope_keyword(tmp_path: Path) -> None:
    snippet = tmp_path / "user_code.py"
    snippet.write_text(
        textwrap.dedent(
            """
            from graphthrift.cache import ExactCache

            def ask(cache: ExactCache) -> None:
                cache.lookup("q", tenant_id="acme", user_id=7)
                cache.lookup("q", tenant="acme")
            """
        )
    )
    src = Path(__file__).resolve().parents[1] / "src"
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent",
         "--config-file=/dev/null", str(snippet)],
        capture_output=True, text=True, env={"MYPYPATH": str(src), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path, timeout=600,
    )  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stdout
    assert ":6:" in lines[0] and '"tenant"' in lines[0], lines[0]
