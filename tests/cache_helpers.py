"""Helpers for the cache tests: a small deterministic embedder and a disposable database."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, make_url, text

from graphthrift.embed import Embedder, as_embedder

_WORD = re.compile(r"[a-z0-9]+")


def bow(texts: list[str], dim: int = 64) -> list[list[float]]:
    """Hashed bag of words: texts sharing words are similar; identical texts score 1."""
    rows = []
    for t in texts:
        row = [0.0] * dim
        for word in _WORD.findall(t.lower()):
            row[int(hashlib.md5(word.encode()).hexdigest(), 16) % dim] += 1.0
        if not any(row):
            row[0] = 1.0
        rows.append(row)
    return rows


def bow_embedder() -> Embedder:
    return as_embedder(bow, model_id="test-bow-64")


@contextmanager
def scratch_database(url: str) -> Iterator[tuple[str, Callable[[bool], None]]]:
    """A database of its own (so locks and outages touch no other test), and a switch
    that takes it away (renamed) and brings it back."""
    name = f"gt_scratch_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def set_down(down: bool) -> None:
        old, new = (name, f"{name}_away") if down else (f"{name}_away", name)
        with admin.connect() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                {"d": old},
            )
            conn.execute(text(f'ALTER DATABASE "{old}" RENAME TO "{new}"'))

    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False), set_down
    finally:
        with admin.connect() as conn:
            for db in (name, f"{name}_away"):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()


def cache_graph(cache: Any, model: Any, calls: list[int], state: Any = None) -> Any:
    """lookup -> (hit: END | miss: model -> store) on ``state`` (default ``CacheState``);
    each model call appends to ``calls``."""
    from langgraph.graph import END, START, StateGraph

    from graphthrift.langgraph import CacheState, cache_answer, lookup_cache, route_on_cache_hit

    def call_model(s: Any) -> dict[str, Any]:
        calls.append(1)
        return {"messages": [model.invoke(s["messages"])]}

    builder = StateGraph(CacheState if state is None else state)
    builder.add_node("lookup_cache", lookup_cache(cache))
    builder.add_node("model", call_model)
    builder.add_node("cache_answer", cache_answer(cache))
    builder.add_edge(START, "lookup_cache")
    builder.add_conditional_edges("lookup_cache", route_on_cache_hit("model"), ["model", END])
    builder.add_edge("model", "cache_answer")
    builder.add_edge("cache_answer", END)
    return builder.compile()
