"""Recall micro benchmark: latency of ``FoldedTurnStore.recall`` at 100,000 folded turns.

Fills a scratch database with real SGD utterances as folded turns, spread over many
threads of several tenants, then times recalls of random threads: the whole ``recall``
(query embedding, the filtered hybrid search, packing into the budget), the database part
alone, and the query embedding of each embedder. Each timed query is new to recall; then
it is recalled again (``recall_repeat_ms``), as an agent's tool loop recalls one user
message at each model call, which reuses the query's vector and terms. The same searches
are also run through a filtered HNSW index (pgvector's iterative scan), with how often they
agree with the exact search, to show which plan recall should use. Writes the figures as
JSON.

    python -m graphthrift.bench.recall --json benchmarks/results/recall.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text

from graphthrift.bench._common import machine, percentiles, scratch_store, write_json
from graphthrift.bench._data import read_set_file
from graphthrift.embed.embedders import default_embedder
from graphthrift.embed.static import StaticEmbedder
from graphthrift.history.pruner import DEFAULT_RECALL_K
from graphthrift.history.recall import FoldedTurn, FoldedTurnStore, query_terms
from graphthrift.history.schema import FOLDED_TURNS_TABLE, folded_hnsw_index_sql
from graphthrift.store.postgres import Store

__all__ = ["main", "run_recall_bench"]

_HNSW_SEARCH = (
    "SELECT turn_index FROM {table} WHERE tenant_id = :tenant AND thread_id = :thread"
    " AND embedding_model = :model AND dim = 384"
    " ORDER BY (embedding::vector(384)) <=> CAST(:v AS vector(384)) LIMIT :n"
)
_EXACT_SEARCH = (
    "SELECT turn_index FROM {table} WHERE tenant_id = :tenant AND thread_id = :thread"
    " AND embedding_model = :model ORDER BY embedding <=> CAST(:v AS vector) LIMIT :n"
)


def _utterances(limit: int) -> list[str]:
    """SGD test utterances (the data shipped in the repo), repeated to ``limit``."""
    found: list[str] = []
    for line in read_set_file("sgd_test", "sgd_test_compact.jsonl").splitlines():
        if line.strip():
            found.extend(t["utterance"] for t in json.loads(line)["turns"])
    if not found:
        raise RuntimeError("sgd_test holds no utterances")
    return [found[k % len(found)] for k in range(limit)]


def _distinct_queries(
    rng: random.Random, texts: Sequence[str], threads: int, per_thread: int, count: int
) -> list[tuple[int, str]]:
    """``count`` (thread, query) pairs with distinct query texts, each an utterance of its
    thread."""
    out: list[tuple[int, str]] = []
    seen: set[str] = set()
    for _ in range(count * 50):
        if len(out) == count:
            return out
        t = rng.randrange(threads)
        q = rng.choice(texts[t * per_thread : (t + 1) * per_thread])
        if q not in seen:
            seen.add(q)
            out.append((t, q))
    raise RuntimeError(f"found {len(out)} distinct queries of {count}")


def _timed(values: list[float], start: float) -> None:
    values.append((time.perf_counter() - start) * 1000)


def run_recall_bench(
    store: Store,
    *,
    snippets: int = 100_000,
    per_thread: int = 500,
    tenants: int = 10,
    queries: int = 300,
    k: int = DEFAULT_RECALL_K,
    token_budget: int = 512,
    seed: int = 7,
) -> dict[str, Any]:
    """Recall latency figures (milliseconds) at ``snippets`` folded turns, on a scratch
    database of ``store``'s server."""
    rng = random.Random(seed)
    texts = _utterances(snippets)
    threads = max(1, snippets // per_thread)
    embedder = StaticEmbedder()
    with scratch_store(store) as db:
        turns = FoldedTurnStore(db, embedder=embedder, timeout=60.0)
        start = time.perf_counter()
        for t in range(threads):
            rows = texts[t * per_thread : (t + 1) * per_thread]
            added = turns.add(
                f"tenant-{t % tenants}",
                f"thread-{t}",
                [
                    FoldedTurn(i, "user" if i % 2 == 0 else "assistant", s)
                    for i, s in enumerate(rows)
                ],
            )
            if added != len(rows):
                raise RuntimeError(f"thread {t}: stored {added} of {len(rows)} turns")
        load_s = time.perf_counter() - start
        # distinct queries, the first 20 only to warm the pool, the tokenizer tables and the
        # page cache: a timed query is never one recall has seen (it keeps the last queries'
        # vectors and terms), except in ``recall_repeat_ms``
        asked = _distinct_queries(rng, texts, threads, per_thread, queries + 20)
        for t, q in asked[:20]:
            turns.recall(f"tenant-{t % tenants}", f"thread-{t}", q, k=k, token_budget=token_budget)
        asked = asked[20:]
        whole: list[float] = []
        again: list[float] = []
        for t, q in asked:
            for times in (whole, again):  # then the same message again, as a tool loop asks
                start = time.perf_counter()
                found = turns.recall(
                    f"tenant-{t % tenants}", f"thread-{t}", q, k=k, token_budget=token_budget
                )
                _timed(times, start)
                if not found:
                    raise RuntimeError(f"thread {t}: recall found nothing for {q!r}")
        vectors = embedder.embed([q for _, q in asked])
        exact, hnsw, agree = _compare_plans(db, asked, vectors, tenants, embedder.model_id, k)
        embed_static = _embed_times(embedder, [q for _, q in asked])
        embed_minilm = _embed_times(default_embedder(), [q for _, q in asked])
    return {
        "machine": machine(),
        "snippets": threads * per_thread,
        "threads": threads,
        "turns_per_thread": per_thread,
        "tenants": tenants,
        "queries": queries,
        "k": k,
        "token_budget": token_budget,
        "load_seconds": round(load_s, 2),
        "recall_ms": percentiles(whole, 50, 95, 99),
        "recall_repeat_ms": percentiles(again, 50, 95, 99),
        "exact_search_ms": percentiles(exact, 50, 95, 99),
        "hnsw_search_ms": percentiles(hnsw, 50, 95, 99),
        "hnsw_agrees_with_exact": round(agree, 4),
        "embed_query_ms": {
            embedder.model_id: percentiles(embed_static, 50, 95, 99),
            default_embedder().model_id: percentiles(embed_minilm, 50, 95, 99),
        },
        "query_terms_example": query_terms(asked[0][1]),
    }


def _compare_plans(
    db: Store, asked: Sequence[tuple[int, str]], vectors: Any, tenants: int, model: str, k: int
) -> tuple[list[float], list[float], float]:
    """Vector-only search, exact (the recall plan) vs a filtered HNSW walk."""
    exact_ms: list[float] = []
    hnsw_ms: list[float] = []
    same = 0
    with db.deadline(None), db.connect() as conn:
        conn.execute(text(folded_hnsw_index_sql(384)))
    with db.deadline(None), db.connect() as conn:
        conn.execute(text("ANALYZE " + FOLDED_TURNS_TABLE))
    exact_sql = text(_EXACT_SEARCH.format(table=FOLDED_TURNS_TABLE))
    hnsw_sql = text(_HNSW_SEARCH.format(table=FOLDED_TURNS_TABLE))
    with db.connect() as conn:
        conn.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
        for (t, _), vector in zip(asked, vectors, strict=True):
            params = {
                "tenant": f"tenant-{t % tenants}",
                "thread": f"thread-{t}",
                "model": model,
                "v": "[" + ",".join(f"{float(x):.6g}" for x in vector) + "]",
                "n": k,
            }
            start = time.perf_counter()
            a = [r[0] for r in conn.execute(exact_sql, params)]
            _timed(exact_ms, start)
            start = time.perf_counter()
            b = [r[0] for r in conn.execute(hnsw_sql, params)]
            _timed(hnsw_ms, start)
            same += set(a) == set(b)
    return exact_ms, hnsw_ms, same / max(1, len(asked))


def _embed_times(embedder: Any, queries: Sequence[str]) -> list[float]:
    embedder.embed(list(queries[:5]))  # load the model
    out: list[float] = []
    for q in queries:
        start = time.perf_counter()
        embedder.embed([q])
        _timed(out, start)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m graphthrift.bench.recall [--snippets N] [--json PATH]``."""
    parser = argparse.ArgumentParser(prog="graphthrift.bench.recall", description=__doc__)
    parser.add_argument("--snippets", type=int, default=100_000)
    parser.add_argument("--per-thread", type=int, default=500)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--json", default="benchmarks/results/recall.json")
    args = parser.parse_args(argv)
    store = Store()
    try:
        figures = run_recall_bench(
            store, snippets=args.snippets, per_thread=args.per_thread, queries=args.queries
        )
    finally:
        store.close()
    write_json(figures, args.json)
    print(json.dumps({k: v for k, v in figures.items() if k != "machine"}, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
