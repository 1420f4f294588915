"""``graphthrift bench cache``: precision, recall and speed of the semantic cache.

Method (every figure on held-out data):

- banking77: the cache holds answered questions from the train file (one entry each);
  queries are the test file's questions. A hit is right when the served entry has the
  query's intent. Thresholds are calibrated on the train file alone (half as entries, half
  as queries).
- stsb (score >= 4 same, <= 2 different) and any ``--pairs`` file (text_a, text_b, label):
  calibrated on a train split of pairs; on the test split the cache holds every text_a and
  each text_b is a query, right only when it hits its own partner of a label-1 pair.
- Policies side by side: ``static_0.92`` (the common default), ``tuned`` (lowest threshold
  whose train precision meets ``--target-precision`` at 95 % confidence) and ``adaptive``
  (``AdaptivePolicy(max_error=1-target)``, pooled prior from the train split, then learning
  online from the verdict on each miss it explores).
- Speed: the test entries plus filler up to ``--entries`` rows of other tenants (real train
  embeddings plus Gaussian noise, re-normalised: synthetic, stated in the JSON) in one
  HNSW-indexed table. ``lookup_ms`` is the database search of ``SemanticCache.lookup``;
  ``embed_ms`` the MiniLM embedding of one query; ``total_ms`` their sum per query.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from graphthrift._cache_keys import CacheQuery, CacheScope, key_hash
from graphthrift._cache_policy import AdaptivePolicy, precision_recall_curve, tune_threshold
from graphthrift._schema_cache import ENTRIES_TABLE
from graphthrift.bench._common import data_dir, machine, percentiles, scratch_store, write_json
from graphthrift.embed import as_embedder, default_embedder
from graphthrift.store import Store

TARGETS = {"tuned_precision": 0.97, "lookup_total_p95_ms": 10.0, "exact_p95_ms": 1.0}
STATIC_DEFAULT = 0.92
SAMPLE = [  # a tiny built-in sample for when ../shared/data is missing
    ("How do I reset my password?", "How can I change my password?", 1),
    ("When will my card arrive?", "My new card has not arrived yet", 1),
    ("How do I close my account?", "I want to delete my account", 1),
    ("What is the exchange rate?", "How do I reset my password?", 0),
    ("Can I get a refund?", "Where is my card?", 0),
    ("Why was I charged a fee?", "Is there a fee for transfers?", 0),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", help="a pairs file (CSV/JSONL: text_a, text_b, label)")
    parser.add_argument("--threshold", type=float, help="report this threshold as 'tuned'")
    parser.add_argument("--target-precision", type=float, default=0.97)
    parser.add_argument("--entries", type=int, default=100_000, help="rows for the speed test")
    parser.add_argument("--datasets", default="banking77,stsb", help="comma-separated")


def load_pairs(path: str | Path) -> list[tuple[str, str, int]]:
    """A pairs file: CSV or JSONL (optionally gzipped) with text_a, text_b, label."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        if ".jsonl" in path.name or ".json" in path.name:
            rows = [json.loads(line) for line in fh if line.strip()]
        else:
            rows = list(csv.DictReader(fh))
    pairs = []
    for i, row in enumerate(rows):
        try:
            pairs.append((str(row["text_a"]), str(row["text_b"]), int(float(row["label"]))))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path} row {i}: needs text_a, text_b, label (0/1): {exc}") from exc
    return pairs


def _stsb(folder: Path, split: str) -> list[tuple[str, str, int]]:
    pairs = []
    with (folder / f"sts-{split}.csv").open(encoding="utf-8") as fh:
        for line in fh:
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 7:
                continue
            score = float(cols[4])
            if score >= 4 or score <= 2:
                pairs.append((cols[5], cols[6], int(score >= 4)))
    return pairs


def _banking(folder: Path, split: str) -> tuple[list[str], list[str]]:
    with (folder / f"{split}.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], [r["category"] for r in rows]


@dataclass
class Task:
    """Entries the cache holds and queries against them, with group ids for correctness."""

    name: str
    entries: list[str]
    entry_groups: list[str]
    queries: list[str]
    query_groups: list[str]


def _pair_task(name: str, pairs: Sequence[tuple[str, str, int]]) -> Task:
    entries: dict[str, str] = {}
    for a, _, _ in pairs:
        entries.setdefault(a, f"e{len(entries)}")
    queries, groups = [], []
    for i, (a, b, label) in enumerate(pairs):
        queries.append(b)
        groups.append(entries[a] if label else f"neg{i}")
    return Task(name, list(entries), list(entries.values()), queries, groups)


def _nearest(entries: np.ndarray[Any, Any], queries: np.ndarray[Any, Any]) -> tuple[Any, Any]:
    sims = queries @ entries.T
    best = sims.argmax(axis=1)
    return best, sims[np.arange(len(queries)), best]


def _evaluate(
    sims: np.ndarray[Any, Any], correct: np.ndarray[Any, Any], served: np.ndarray[Any, Any]
) -> dict[str, Any]:
    n = len(sims)
    hits = int(served.sum())
    good = int((served & correct).sum())
    answerable = int(correct.sum())
    return {
        "hit_rate": round(hits / n, 4) if n else 0.0,
        "precision": round(good / hits, 4) if hits else None,
        "recall": round(good / answerable, 4) if answerable else None,
        "false_hit_rate": round((hits - good) / n, 4) if n else 0.0,
        "hits": hits,
    }


def _copy_entries(
    store: Store,
    rows: list[tuple[str, str, str, np.ndarray[Any, Any]]],
    model_id: str,
    layer: str = "semantic",
) -> None:
    """COPY (tenant, namespace, text, vector) rows into the cache table."""
    cols = (
        "layer, tenant_id, namespace, embedding_model, key_hash, query, normalized_query,"
        " answer, dim, embedding"
    )
    with store.raw_connection() as conn:
        with conn.cursor() as cur, cur.copy(f"COPY {ENTRIES_TABLE} ({cols}) FROM STDIN") as copy:
            for i, (tenant, namespace, text, vector) in enumerate(rows):
                scope = CacheScope(tenant_id=tenant, namespace=namespace)
                query = CacheQuery(text)
                kh = key_hash(layer, scope, model_id if layer == "semantic" else "", query)
                if layer == "semantic":
                    kh = f"{kh}-{i}"  # duplicate texts stay separate entries
                literal = "[" + ",".join(f"{x:.6g}" for x in vector) + "]" if len(vector) else None
                copy.write_row(
                    (layer, tenant, namespace, model_id if layer == "semantic" else "", kh,
                     text, query.normalized, f"answer:{i}", len(vector) or None, literal)
                )  # fmt: skip
        conn.commit()


def _tasks(args: argparse.Namespace, console: Console) -> list[tuple[Task, Task, bool]]:
    """(calibration task, test task, is_pairs) per dataset."""
    rng = random.Random(7)
    quick = bool(getattr(args, "quick", False))
    root = data_dir()
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    out = []
    if root is not None and "banking77" in names and (root / "banking77").is_dir():
        texts, intents = _banking(root / "banking77", "train")
        test_texts, test_intents = _banking(root / "banking77", "test")
        if quick:
            idx = rng.sample(range(len(texts)), 2000)
            texts, intents = [texts[i] for i in idx], [intents[i] for i in idx]
            tidx = rng.sample(range(len(test_texts)), 400)
            test_texts, test_intents = (
                [test_texts[i] for i in tidx],
                [test_intents[i] for i in tidx],
            )
        order = list(range(len(texts)))
        rng.shuffle(order)
        half = len(order) // 2
        a, b = order[:half], order[half:]
        calib = Task(
            "banking77",
            [texts[i] for i in a],
            [intents[i] for i in a],
            [texts[i] for i in b],
            [intents[i] for i in b],
        )
        out.append((calib, Task("banking77", texts, intents, test_texts, test_intents), False))
    if root is not None and "stsb" in names and (root / "stsb").is_dir() and not quick:
        train, test = _stsb(root / "stsb", "train"), _stsb(root / "stsb", "test")
        out.append((_pair_task("stsb", train), _pair_task("stsb", test), True))
    if args.pairs or not out:
        pairs = load_pairs(args.pairs) if args.pairs else list(SAMPLE)
        if not args.pairs:
            console.print("[yellow]shared data not found: using the tiny built-in sample[/]")
        rng.shuffle(pairs)
        cut = max(1, len(pairs) // 2)
        name = Path(args.pairs).stem if args.pairs else "sample"
        out.append((_pair_task(name, pairs[:cut]), _pair_task(name, pairs[cut:]), True))
    return out


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    from graphthrift.cache import ExactCache, SemanticCache

    quick = bool(getattr(args, "quick", False))
    entries_target = min(args.entries, 5_000) if quick else args.entries
    embedder = default_embedder()
    tasks = _tasks(args, console)
    results: dict[str, Any] = {}
    base = Store(args.url)
    try:
        with scratch_store(base) as store:
            for calib, test, _ in tasks:
                console.print(f"[bold]{test.name}[/]: calibrating on {len(calib.queries)} queries")
                ce, cq = embedder.embed(calib.entries), embedder.embed(calib.queries)
                best, sims = _nearest(ce, cq)
                ok = np.array(
                    [
                        calib.entry_groups[j] == g
                        for j, g in zip(best, calib.query_groups, strict=True)
                    ]
                )
                answerable = sum(1 for g in calib.query_groups if g in set(calib.entry_groups))
                curve = precision_recall_curve(sims, ok, answerable=answerable)
                if args.threshold is not None:
                    tuned = args.threshold
                else:
                    try:
                        tuned = tune_threshold(
                            curve, args.target_precision, confidence=0.95
                        ).threshold
                    except ValueError:
                        tuned = 1.0
                adaptive = AdaptivePolicy(max_error=1 - args.target_precision)
                adaptive.observe_many(sims.tolist(), ok.tolist())

                # the test cache: real entries of tenant "bench" + filler of other tenants
                t0 = time.perf_counter()
                te = embedder.embed(test.entries)
                vectors = {}
                embed_ms = []
                for q in test.queries:
                    s = time.perf_counter()
                    vectors[q] = embedder.embed([q])[0]
                    embed_ms.append((time.perf_counter() - s) * 1000)
                namespace = test.name
                rows = [("bench", namespace, t, v) for t, v in zip(test.entries, te, strict=True)]
                rng = np.random.default_rng(11)
                filler = max(0, entries_target - len(rows))
                for i in range(filler):
                    v = te[i % len(te)] + rng.normal(
                        0, 0.35 / np.sqrt(te.shape[1]) * 3, te.shape[1]
                    )
                    v = v / np.linalg.norm(v)
                    rows.append((f"other-{i % 50}", namespace, f"filler {i}", v.astype(np.float32)))
                _copy_entries(store, rows, embedder.model_id)
                load_s = time.perf_counter() - t0
                with store.connect() as conn:
                    from sqlalchemy import text

                    conn.execute(text(f"ANALYZE {ENTRIES_TABLE}"))

                lookup_table = dict(vectors)
                fixed = as_embedder(
                    lambda texts, table=lookup_table: [table[t] for t in texts],
                    model_id=embedder.model_id,
                )
                cache = SemanticCache(
                    store,
                    fixed,
                    tenant_id="bench",
                    namespace=namespace,
                    threshold=-1.0,
                    timeout=2.0,
                )
                index = {t: i for i, t in enumerate(test.entries)}
                cand, cand_sim, lookup_ms = [], [], []
                for q in test.queries:
                    s = time.perf_counter()
                    hit = cache.lookup(q)
                    lookup_ms.append((time.perf_counter() - s) * 1000)
                    cand.append(index.get(hit.query, -1) if hit else -1)
                    cand_sim.append(hit.similarity if hit else -1.0)
                qs = np.array(cand_sim)
                correct = np.array(
                    [
                        c >= 0 and test.entry_groups[c] == g
                        for c, g in zip(cand, test.query_groups, strict=True)
                    ]
                )
                policies = {
                    f"static_{STATIC_DEFAULT}": _evaluate(qs, correct, qs >= STATIC_DEFAULT),
                    "tuned": _evaluate(qs, correct, qs >= tuned),
                }
                observations: dict[int, tuple[list[float], list[bool]]] = {}
                served = []
                for c, s, ok_ in zip(cand, qs.tolist(), correct.tolist(), strict=True):
                    obs = observations.setdefault(c, ([], []))
                    serve = adaptive.serve(s, obs[0], obs[1])
                    served.append(serve)
                    if not serve and s >= adaptive.min_similarity:  # explored: verdict learned
                        obs[0].append(s)
                        obs[1].append(bool(ok_))
                        adaptive.observe(s, bool(ok_))
                policies["adaptive"] = _evaluate(qs, correct, np.array(served))
                policies["tuned"]["threshold"] = round(tuned, 4)
                total = [a + b for a, b in zip(embed_ms, lookup_ms, strict=True)]
                test_curve = precision_recall_curve(
                    qs,
                    correct,
                    answerable=sum(1 for g in test.query_groups if g in set(test.entry_groups)),
                )
                results[test.name] = {
                    "n_queries": len(test.queries),
                    "entries": len(rows),
                    "real_entries": len(test.entries),
                    "filler_entries": filler,
                    "filler": "real train embeddings + Gaussian noise, other tenants (synthetic)",
                    "threshold": round(tuned, 4),
                    **{k: v for k, v in policies["tuned"].items() if k != "threshold"},
                    "policies": policies,
                    "lookup_ms": percentiles(lookup_ms, 50, 95),
                    "embed_ms": percentiles(embed_ms, 50, 95),
                    "total_ms": percentiles(total, 50, 95),
                    "load_s": round(load_s, 2),
                    "curve": [
                        p.as_dict() for p in test_curve if round(p.threshold, 2) == p.threshold
                    ],
                    "calibration_curve": [
                        p.as_dict() for p in curve if round(p.threshold, 2) == p.threshold
                    ],
                }
                console.print(_table(test.name, policies))

            # exact layer speed: entries of the first task, looked up by their own text
            first = tasks[0][1]
            exact_rows = [("bench", "exact", t, np.empty(0)) for t in dict.fromkeys(first.entries)]
            _copy_entries(store, exact_rows, "", layer="exact")
            exact = ExactCache(store, tenant_id="bench", namespace="exact", timeout=2.0)
            exact_ms = []
            for t in first.entries[: 2000 if not quick else 300]:
                s = time.perf_counter()
                exact.lookup(t)
                exact_ms.append((time.perf_counter() - s) * 1000)
    finally:
        base.close()
    primary = results[tasks[0][1].name]
    figures: dict[str, Any] = {
        **{k: v for k, v in primary.items()},
        "dataset": tasks[0][1].name,
        "datasets": results,
        "exact_lookup_ms": percentiles(exact_ms, 50, 95),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "targets": TARGETS,
        "target_precision": args.target_precision,
        "quick": quick,
        "machine": machine(),
    }
    console.print(
        f"lookup p95 {primary['lookup_ms']['p95']} ms, embed p95 {primary['embed_ms']['p95']} ms,"
        f" exact p95 {figures['exact_lookup_ms']['p95']} ms at {primary['entries']:,} entries"
    )
    write_json(figures, getattr(args, "json", None))
    return figures


def _table(name: str, policies: dict[str, dict[str, Any]]) -> Table:
    table = Table(title=f"semantic cache on {name} (held-out test split)")
    for col in ("policy", "hit_rate", "precision", "recall", "false_hit_rate"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for policy, row in policies.items():
        table.add_row(
            policy, *(str(row[k]) for k in ("hit_rate", "precision", "recall", "false_hit_rate"))
        )
    return table
